"""The quick check of a sale never lets through what the full checks refuse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty_engine.domain.errors import DomainError
from loyalty_engine.domain.money import MAX_AMOUNT_MINOR
from loyalty_engine.domain.program import Program
from loyalty_engine.services.imports import ImportRow
from loyalty_engine.services.points import check_purchase, plainly_valid, raise_problems

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
PROGRAM = Program(
    program_id="p", display_name="P", currency_code="EUR", late_purchase_window_days=30
)

texts = st.one_of(
    st.text(max_size=5),
    st.text(min_size=195, max_size=205),
    st.sampled_from(["o-1", "", " ", "a\x00b", "tab\there", "é", "x" * 200, "x" * 201]),
)
rows = st.builds(
    ImportRow,
    row=st.just(1),
    member_external_id=st.just("m"),
    order_id=texts,
    purchase_time=st.integers(-40 * 86400, 600).map(lambda s: NOW + timedelta(seconds=s)),
    total_minor=st.one_of(
        st.integers(-5, 5),
        st.integers(MAX_AMOUNT_MINOR - 2, MAX_AMOUNT_MINOR + 2),
        st.integers(0, MAX_AMOUNT_MINOR),
    ),
    currency_code=st.sampled_from(["EUR", "USD", "eur", "XXX", ""]),
    store_id=texts,
)


@given(rows, st.booleans())
def test_the_quick_check_accepts_only_what_the_full_checks_accept(
    row: ImportRow, historical: bool
) -> None:
    if plainly_valid(row, PROGRAM, NOW, historical=historical):
        raise_problems(row, PROGRAM, NOW, historical=historical)  # must not raise
    else:
        with pytest.raises(DomainError):
            check_purchase(row, PROGRAM, NOW, historical=historical)
