"""Money: the currency table, validation and formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.money import (
    CURRENCY_EXPONENTS,
    MAX_AMOUNT_MINOR,
    format_money,
    validate_currency,
)


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("EUR", 2),
        ("USD", 2),
        ("GBP", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("CLP", 0),
        ("ISK", 0),
        ("XOF", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("TND", 3),
        ("CLF", 4),
        ("UYW", 4),
        ("XCG", 2),
        ("ZWG", 2),
    ],
)
def test_known_exponents(code: str, exponent: int) -> None:
    assert CURRENCY_EXPONENTS[code] == exponent


def test_table_is_well_formed_and_complete_enough() -> None:
    # List one has about 180 codes, a dozen of them unpriced (XAU, XDR, ...); a much shorter
    # table means some went missing.
    assert len(CURRENCY_EXPONENTS) >= 165
    for code, exponent in CURRENCY_EXPONENTS.items():
        assert len(code) == 3 and code.isascii() and code.isalpha() and code.isupper()
        assert exponent in (0, 2, 3, 4)


@pytest.mark.parametrize("code", ["HRK", "XAU", "XXX", "XTS", "XDR"])
def test_withdrawn_and_unpriced_codes_are_not_money(code: str) -> None:
    assert code not in CURRENCY_EXPONENTS


def test_validate_currency_returns_the_code() -> None:
    assert validate_currency("EUR", "purchase.currency_code") == "EUR"


@pytest.mark.parametrize("code", ["", "eur", "Eur", " EUR", "EUR ", "EURO", "EU", "ABC", "12€"])
def test_validate_currency_rejects(code: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_currency(code, "purchase.currency_code")
    assert caught.value.reason == "UNKNOWN_CURRENCY"
    assert caught.value.violations[0].field == "purchase.currency_code"
    assert caught.value.metadata == {"field": "purchase.currency_code"}


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (4000, "EUR", "40.00 EUR"),
        (-150, "USD", "-1.50 USD"),
        (5, "USD", "0.05 USD"),
        (-5, "USD", "-0.05 USD"),
        (0, "EUR", "0.00 EUR"),
        (500, "JPY", "500 JPY"),
        (-500, "JPY", "-500 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (1, "CLF", "0.0001 CLF"),
        (MAX_AMOUNT_MINOR, "EUR", "10000000000.00 EUR"),
    ],
)
def test_format_money(amount: int, currency: str, text: str) -> None:
    assert format_money(amount, currency) == text


def test_format_money_rejects_unknown_currency() -> None:
    with pytest.raises(InvalidArgument):
        format_money(100, "ZZZ")


@given(
    amount=st.integers(min_value=-(10**15), max_value=10**15),
    currency=st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_format_money_round_trips(amount: int, currency: str) -> None:
    number, code = format_money(amount, currency).split(" ")
    assert code == currency
    exponent = CURRENCY_EXPONENTS[currency]
    sign = -1 if number.startswith("-") else 1
    whole, _, fraction = number.lstrip("-").partition(".")
    assert len(fraction) == exponent
    assert sign * int(whole + fraction) == amount
