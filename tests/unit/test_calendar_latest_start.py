"""latest_start: the inverse of add_months that inactivity expiry selects members by."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from loyalty_engine.domain.calendar import add_months, latest_start


def test_month_end_clamping_moves_the_cutoff_later() -> None:
    end = datetime(2027, 2, 28, 12, tzinfo=UTC)
    assert latest_start(end, 6) == datetime(2026, 8, 31, 12, tzinfo=UTC)
    # A shorter month entirely before a later day of end's month.
    assert latest_start(datetime(2026, 3, 30, 8, tzinfo=UTC), 1) == datetime(
        2026, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC
    )
    # Mid-month it is plain subtraction.
    assert latest_start(datetime(2026, 6, 15, 12, tzinfo=UTC), 6) == datetime(
        2025, 12, 15, 12, tzinfo=UTC
    )


@given(
    end=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    months=st.integers(min_value=0, max_value=120),
)
def test_latest_start_is_the_last_instant_whose_deadline_has_passed(
    end: datetime, months: int
) -> None:
    cutoff = latest_start(end, months)
    assert add_months(cutoff, months) <= end
    assert add_months(cutoff + timedelta(microseconds=1), months) > end
