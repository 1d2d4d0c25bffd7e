"""Calendar arithmetic: month steps clamp the day, day steps are exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty_engine.domain.calendar import add_days, add_months, require_aware
from loyalty_engine.domain.errors import InvalidArgument


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (utc(2024, 1, 31), 1, utc(2024, 2, 29)),
        (utc(2023, 1, 31), 1, utc(2023, 2, 28)),
        (utc(2024, 1, 31), 2, utc(2024, 3, 31)),
        (utc(2024, 3, 31), -1, utc(2024, 2, 29)),
        (utc(2024, 3, 15, 10, 30), 12, utc(2025, 3, 15, 10, 30)),
        (utc(2024, 2, 29), 12, utc(2025, 2, 28)),
        (utc(2024, 2, 29), 48, utc(2028, 2, 29)),
        (utc(2024, 11, 30), 3, utc(2025, 2, 28)),
        (utc(2024, 1, 15), -13, utc(2022, 12, 15)),
        (utc(2024, 5, 31), 0, utc(2024, 5, 31)),
        (utc(2024, 12, 1), 1, utc(2025, 1, 1)),
        (utc(2025, 1, 1), -1, utc(2024, 12, 1)),
    ],
)
def test_add_months(start: datetime, months: int, expected: datetime) -> None:
    assert add_months(start, months) == expected


def test_add_months_keeps_time_and_zone() -> None:
    shifted = add_months(utc(2024, 1, 31, 23, 59, 58, 7), 1)
    assert (shifted.hour, shifted.minute, shifted.second, shifted.microsecond) == (23, 59, 58, 7)
    assert shifted.tzinfo is UTC


@given(
    start=st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
    ),
    months=st.integers(min_value=-1200, max_value=1200),
)
def test_add_months_properties(start: datetime, months: int) -> None:
    shifted = add_months(start, months)
    assert (shifted.year * 12 + shifted.month) - (start.year * 12 + start.month) == months
    assert shifted.day <= start.day
    # Clamping only happens at the end of a month.
    if shifted.day < start.day:
        assert (shifted + timedelta(days=1)).day == 1
    assert shifted.time() == start.time()
    if months != 0:
        assert (shifted > start) == (months > 0)


def test_add_days() -> None:
    assert add_days(utc(2024, 2, 28, 12), 1) == utc(2024, 2, 29, 12)
    assert add_days(utc(2024, 3, 1), -1) == utc(2024, 2, 29)
    assert add_days(utc(2024, 3, 1), 0) == utc(2024, 3, 1)


def test_require_aware() -> None:
    moment = utc(2024, 1, 1)
    assert require_aware(moment, "now") is moment
    with pytest.raises(InvalidArgument) as caught:
        require_aware(datetime(2024, 1, 1), "purchase.purchase_time")
    assert caught.value.violations[0].field == "purchase.purchase_time"
