"""Offers and rules, pure: birthdays, windows, templates, codes and the rule-file checks."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from loyalty_engine.domain.offers import (
    Offer,
    OfferKind,
    OfferRefusal,
    Validity,
    check_code,
    days_to_birthday,
    new_offer_code,
    render_message,
    template_fields,
    validity_window,
)
from loyalty_engine.domain.rewards import VOUCHER_ALPHABET
from loyalty_engine.domain.rules import MemberFacts, PastOffers, Trigger, decide
from loyalty_engine.rule_files import RuleBook, RuleSetError, load_rule_set, parse_rule

RULES = Path(__file__).resolve().parents[2] / "rules"
BIRTHDAY = Validity(around_birthday=True, days_before=7, days_after=7)


def at(y: int, m: int, d: int, h: int = 12) -> datetime:
    return datetime(y, m, d, h, tzinfo=UTC)


def test_leap_day_birthday_is_28_february_in_other_years() -> None:
    born = date(2000, 2, 29)
    assert days_to_birthday(born, date(2027, 2, 27)) == 1
    assert days_to_birthday(born, date(2027, 2, 28)) == 0
    assert days_to_birthday(born, date(2028, 2, 28)) == 1  # leap year: the 29th
    start, end, key = validity_window(BIRTHDAY, at(2027, 2, 25), born)  # type: ignore[misc]
    assert key == "birthday-2027-02-28"
    assert start == at(2027, 2, 21, 0) and end == at(2027, 3, 8, 0)
    assert validity_window(BIRTHDAY, at(2028, 3, 6), born)[2] == "birthday-2028-02-29"  # type: ignore[index]


def test_birthday_window_edges_and_no_birth_date() -> None:
    born = date(1990, 6, 20)
    assert validity_window(BIRTHDAY, at(2026, 6, 13), born) is not None
    assert validity_window(BIRTHDAY, at(2026, 6, 12), born) is None
    assert validity_window(BIRTHDAY, at(2026, 6, 27), born) is not None
    assert validity_window(BIRTHDAY, at(2026, 6, 28), born) is None
    assert validity_window(BIRTHDAY, at(2026, 6, 20), None) is None


def test_days_are_utc_days_whatever_the_offset() -> None:
    from datetime import timedelta, timezone

    born = date(1990, 6, 20)
    # 01:00 on the 13th in UTC+3 is still the 12th in UTC: outside the window.
    local = datetime(2026, 6, 13, 1, tzinfo=timezone(timedelta(hours=3)))
    assert validity_window(BIRTHDAY, local, born) is None
    assert validity_window(BIRTHDAY, local + timedelta(hours=3), born) is not None


def test_templates_allow_only_whitelisted_plain_fields() -> None:
    text = "Dear {first_name}, {tenure_years} years. Code {code}."
    assert render_message(text, {"first_name": "Ada", "tenure_years": "4", "code": "X"}) == (
        "Dear Ada, 4 years. Code X."
    )
    for bad in ("{first_name.__class__}", "{first_name[0]}", "{secret}", "{code!r}", "{code:>9}"):
        with pytest.raises(ValueError):
            template_fields(bad)


def test_unique_codes_use_the_unambiguous_alphabet() -> None:
    code = new_offer_code("LOYALTY15-####-####")
    assert code.startswith("LOYALTY15-") and len(code) == 19
    assert all(c in VOUCHER_ALPHABET for c in code[10:].replace("-", ""))
    assert len({new_offer_code("X-########") for _ in range(200)}) == 200


def _offer(**kw: object) -> Offer:
    base: dict[str, object] = dict(
        offer_id="o1", member_id="m", rule_id="r", kind=OfferKind.PERCENT_OFF, code="C",
        message="", start_time=at(2026, 1, 1), end_time=at(2026, 2, 1), period_key="k",
        create_time=at(2026, 1, 1), percent_off=15, currency_code="EUR", min_order_minor=1000,
    )  # fmt: skip
    base.update(kw)
    return Offer(**base)  # type: ignore[arg-type]


def test_check_code_reasons() -> None:
    now = at(2026, 1, 10)
    assert check_code(_offer(), 2000, "EUR", now, None).discount_minor == 300
    assert check_code(None, 2000, "EUR", now, None).refusal is OfferRefusal.NOT_FOUND
    assert check_code(_offer(), 999, "EUR", now, None).refusal is OfferRefusal.BELOW_MINIMUM_ORDER
    assert check_code(_offer(), 2000, "EUR", at(2026, 2, 1), None).refusal is OfferRefusal.EXPIRED
    assert check_code(_offer(uses=1), 2000, "EUR", now, None).refusal is (
        OfferRefusal.USAGE_LIMIT_REACHED
    )
    assert check_code(_offer(), 2000, "EUR", now, 0).refusal is OfferRefusal.USAGE_LIMIT_REACHED


def test_default_rules_load_and_decide() -> None:
    rules = load_rule_set(RULES)
    assert [r.rule_id for r in rules] == ["top-customers", "birthday", "loyalty15", "win-back"]
    now = at(2026, 6, 15)
    top = MemberFacts("a", top_rank=5, top_members=100, flags=set())
    assert [a.label for a in decide(rules, top, now, Trigger.DAILY)] == ["SET_FLAG top_customer"]
    tied_out = MemberFacts("b", top_rank=6, top_members=100, flags={"top_customer"})
    assert [a.label for a in decide(rules, tied_out, now, Trigger.DAILY)] == [
        "CLEAR_FLAG top_customer"
    ]
    # 101 members: the cut is ceil(5.05) = 6, so rank 6 (ties included) is in.
    assert decide(rules, MemberFacts("c", top_rank=6, top_members=101), now, Trigger.DAILY)
    loyal = MemberFacts("d", tenure_years=3, orders_12m=1, birth_date=date(1980, 6, 20))
    labels = [a.label for a in decide(rules, loyal, now, Trigger.PURCHASE)]
    assert labels == ["ISSUE_OFFER birthday", "ISSUE_OFFER loyalty15"]
    done = MemberFacts(
        "d", tenure_years=3, orders_12m=1, birth_date=date(1980, 6, 20),
        past_offers={
            "birthday": PastOffers(at(2026, 6, 14), frozenset({"birthday-2026-06-20"})),
            "loyalty15": PastOffers(at(2025, 9, 1), frozenset()),
        },
    )  # fmt: skip
    assert decide(rules, done, now, Trigger.PURCHASE) == []
    assert decide(rules, MemberFacts("e", tenure_years=2, orders_12m=5), now, Trigger.DAILY) == []
    back = MemberFacts("f", segment="at-risk")
    assert [a.label for a in decide(rules, back, now, Trigger.DAILY)] == ["ISSUE_OFFER win-back"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("id: x\nwhen: true\nactions: [\n", 4, "YAML syntax error"),
        ("id: x\nwhen: 'true'\ncolour: red\nactions:\n  - set_flag: a\n", 3, "unknown field"),
        ("id: x\nwhen: 'tenure_years > \"3\"'\nactions:\n  - set_flag: a\n", 2, "type error"),
        ("id: x\nwhen: 'tenure_years >'\nactions:\n  - set_flag: a\n", 2, "syntax error"),
        ("id: x\nwhen: 'profile.age > 3'\nactions:\n  - set_flag: a\n", 2, "no such field"),
        ("id: x\nwhen: 'tenure_years'\nactions:\n  - set_flag: a\n", 2, "must be a bool"),
        ("id: x\nwhen: 'wealth > 3'\nactions:\n  - set_flag: a\n", 2, "unknown variable"),
        (
            "id: x\nwhen: 'true'\nactions:\n  - issue_offer:\n      kind: percent_off\n"
            "      percent_off: 5\n      code: A1\n      valid_days: 3\n"
            "      message: '{first_name.__class__}'\n",
            9,
            "unknown field",
        ),
    ],
)
def test_bad_rule_files_name_the_file_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(RuleSetError) as caught:
        parse_rule(text, "rules/x.yaml")
    problem = caught.value.problems[0]
    assert (problem.file, problem.line) == ("rules/x.yaml", line), caught.value.message
    assert words in problem.reason
    assert f"rules/x.yaml:{line}:" in caught.value.message


def test_a_bad_set_is_refused_whole_and_the_old_rules_stay(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("id: a\nwhen: 'true'\nactions:\n  - set_flag: a\n")
    book = RuleBook.at_start(tmp_path)
    assert [r.rule_id for r in book.rules] == ["a"]
    (tmp_path / "b.yaml").write_text("id: b\nwhen: 'nope >'\nactions:\n  - set_flag: b\n")
    with pytest.raises(RuleSetError) as caught:
        book.reload()
    assert "b.yaml:2" in caught.value.message
    assert [r.rule_id for r in book.rules] == ["a"]
