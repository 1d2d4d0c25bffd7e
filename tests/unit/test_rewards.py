"""Rewards and redemptions, pure: validation, availability, eligibility, holds, codes, discounts."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty_engine.domain.errors import FailedPrecondition, InvalidArgument
from loyalty_engine.domain.money import MAX_AMOUNT_MINOR
from loyalty_engine.domain.rewards import (
    DEFAULT_HOLD_SECONDS,
    MAX_HOLD_SECONDS,
    MAX_POINTS_COST,
    VOUCHER_ALPHABET,
    Eligibility,
    Ineligibility,
    MemberStanding,
    Redemption,
    RedemptionEvent,
    RedemptionState,
    Reward,
    RewardKind,
    RewardState,
    eligibility,
    hold_duration,
    new_voucher_code,
    points_discount,
)

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)

VOUCHER = Reward(
    reward_id="five-off",
    display_name="5 EUR off",
    points_cost=500,
    kind=RewardKind.FIXED_DISCOUNT,
    discount_minor=500,
    discount_currency="EUR",
)


def reward(**overrides: object) -> Reward:
    return replace(VOUCHER, **overrides)  # type: ignore[arg-type]


def invalid_fields(r: Reward) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        r.validate()
    assert caught.value.reason == "INVALID_FIELD"
    assert caught.value.metadata["field"] == caught.value.violations[0].field
    return [v.field for v in caught.value.violations]


# --- Reward.validate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "valid",
    [
        VOUCHER,
        reward(kind=RewardKind.PERCENT_DISCOUNT, discount_minor=0, discount_percent=100),
        reward(kind=RewardKind.FREE_PRODUCT, discount_minor=0, sku="COFFEE-L"),
        reward(kind=RewardKind.PHYSICAL_PRIZE, discount_minor=0, stock=0),
        reward(kind=RewardKind.EXPERIENCE, discount_minor=0, limit_per_member=1_000_000),
        reward(points_cost=1, display_name="x" * 200, description="d" * 2000),
        reward(points_cost=MAX_POINTS_COST, discount_minor=MAX_AMOUNT_MINOR),
        reward(start_time=NOW, end_time=NOW + timedelta(seconds=1), stock=10**12),
    ],
)
def test_a_valid_reward_passes(valid: Reward) -> None:
    valid.validate()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"display_name": ""}, "reward.display_name"),
        ({"display_name": "   "}, "reward.display_name"),
        ({"display_name": "x" * 201}, "reward.display_name"),
        ({"description": "d" * 2001}, "reward.description"),
        ({"points_cost": 0}, "reward.points_cost"),
        ({"points_cost": -5}, "reward.points_cost"),
        ({"points_cost": MAX_POINTS_COST + 1}, "reward.points_cost"),
        ({"discount_minor": 0}, "reward.discount"),
        ({"discount_minor": -1}, "reward.discount"),
        ({"discount_minor": MAX_AMOUNT_MINOR + 1}, "reward.discount"),
        (
            {"kind": RewardKind.PERCENT_DISCOUNT, "discount_minor": 0, "discount_percent": 0},
            "reward.discount_percent",
        ),
        (
            {"kind": RewardKind.PERCENT_DISCOUNT, "discount_minor": 0, "discount_percent": 101},
            "reward.discount_percent",
        ),
        ({"kind": RewardKind.FREE_PRODUCT, "discount_minor": 0, "sku": ""}, "reward.sku"),
        ({"kind": RewardKind.FREE_PRODUCT, "discount_minor": 0, "sku": "  "}, "reward.sku"),
        ({"sku": "s" * 201}, "reward.sku"),
        ({"start_time": NOW, "end_time": NOW}, "reward.end_time"),
        ({"start_time": NOW, "end_time": NOW - HOUR}, "reward.end_time"),
        ({"limit_per_member": -1}, "reward.limit_per_member"),
        ({"limit_per_member": 1_000_001}, "reward.limit_per_member"),
        ({"stock": -1}, "reward.stock"),
        ({"stock": 10**12 + 1}, "reward.stock"),
    ],
)
def test_each_bad_field_is_named(overrides: dict[str, object], field: str) -> None:
    assert invalid_fields(reward(**overrides)) == [field]


def test_every_bad_field_is_named_at_once_in_order() -> None:
    bad = reward(
        display_name="",
        description="d" * 2001,
        points_cost=0,
        discount_minor=0,
        sku="s" * 201,
        start_time=NOW,
        end_time=NOW - HOUR,
        limit_per_member=-1,
        stock=-1,
    )
    assert invalid_fields(bad) == [
        "reward.display_name",
        "reward.description",
        "reward.points_cost",
        "reward.discount",
        "reward.sku",
        "reward.end_time",
        "reward.limit_per_member",
        "reward.stock",
    ]


@pytest.mark.parametrize(
    "kind", [RewardKind.PHYSICAL_PRIZE, RewardKind.EXPERIENCE, RewardKind.PERCENT_DISCOUNT]
)
def test_only_a_fixed_discount_needs_an_amount(kind: RewardKind) -> None:
    reward(kind=kind, discount_minor=0, discount_percent=10).validate()


def test_only_a_free_product_needs_a_sku() -> None:
    reward(sku="").validate()
    reward(kind=RewardKind.PHYSICAL_PRIZE, discount_minor=0, sku="").validate()


def test_issues_voucher_for_discounts_and_free_products_only() -> None:
    issuing = {k for k in RewardKind if reward(kind=k).issues_voucher}
    assert issuing == {
        RewardKind.FIXED_DISCOUNT,
        RewardKind.PERCENT_DISCOUNT,
        RewardKind.FREE_PRODUCT,
    }


# --- is_available -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "at", "available"),
    [
        (None, None, NOW, True),
        (NOW, None, NOW - timedelta(microseconds=1), False),
        (NOW, None, NOW, True),  # the start is inclusive
        (None, NOW, NOW - timedelta(microseconds=1), True),
        (None, NOW, NOW, False),  # the end is exclusive
        (NOW, NOW + HOUR, NOW + HOUR / 2, True),
        (NOW, NOW + HOUR, NOW + 2 * HOUR, False),
        (NOW, NOW + HOUR, NOW - HOUR, False),
    ],
)
def test_is_available_inside_its_window(
    start: datetime | None, end: datetime | None, at: datetime, available: bool
) -> None:
    assert reward(start_time=start, end_time=end).is_available(at) is available


def test_an_archived_reward_is_never_available() -> None:
    archived = reward(state=RewardState.ARCHIVED, start_time=NOW - HOUR, end_time=NOW + HOUR)
    assert not archived.is_available(NOW)


# --- eligibility ------------------------------------------------------------------------------

ORDER = (
    Ineligibility.NOT_AVAILABLE,
    Ineligibility.TIER_TOO_LOW,
    Ineligibility.OUT_OF_STOCK,
    Ineligibility.LIMIT_REACHED,
    Ineligibility.POINTS_SHORT,
)


def standing(**overrides: object) -> MemberStanding:
    values: dict[str, object] = {
        "spendable_points": 10_000,
        "tier_rank": -1,
        "required_tier_rank": -1,
        "member_redemptions": 0,
        "stock_left": None,
    }
    values.update(overrides)
    return MemberStanding(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=5)))
def test_eligibility_lists_every_reason_in_a_fixed_order(flags: tuple[bool, ...]) -> None:
    unavailable, tier_low, sold_out, at_limit, short = flags
    r = reward(
        points_cost=500,
        limit_per_member=2,
        state=RewardState.ARCHIVED if unavailable else RewardState.ACTIVE,
    )
    s = standing(
        spendable_points=380 if short else 500,
        tier_rank=0,
        required_tier_rank=1 if tier_low else 0,
        member_redemptions=2 if at_limit else 1,
        stock_left=0 if sold_out else 3,
    )

    result = eligibility(r, s, NOW)

    expected = tuple(reason for reason, on in zip(ORDER, flags, strict=True) if on)
    assert result.reasons == expected
    assert result.ok is (not expected)
    assert result.points_short == (120 if short else 0)
    if not expected:
        result.raise_first("five-off")  # nothing to raise
        return
    with pytest.raises(FailedPrecondition) as caught:
        result.raise_first("five-off")
    assert caught.value.reason == expected[0].value
    assert caught.value.metadata["reward"] == "five-off"
    assert ("points_short" in caught.value.metadata) is (expected[0] is Ineligibility.POINTS_SHORT)


def test_eligibility_outside_the_window_is_not_available() -> None:
    later = reward(start_time=NOW + HOUR)
    assert eligibility(later, standing(), NOW).reasons == (Ineligibility.NOT_AVAILABLE,)
    assert eligibility(later, standing(), NOW + HOUR).ok


@pytest.mark.parametrize(
    ("tier_rank", "required", "too_low"),
    [(-1, -1, False), (-1, 0, True), (0, 0, False), (1, 0, False), (0, 2, True), (2, 2, False)],
)
def test_tier_too_low_only_below_the_required_rank(
    tier_rank: int, required: int, too_low: bool
) -> None:
    result = eligibility(VOUCHER, standing(tier_rank=tier_rank, required_tier_rank=required), NOW)
    assert (Ineligibility.TIER_TOO_LOW in result.reasons) is too_low


@pytest.mark.parametrize(
    ("stock_left", "sold_out"), [(None, False), (1, False), (0, True), (-2, True)]
)
def test_out_of_stock_when_nothing_is_left(stock_left: int | None, sold_out: bool) -> None:
    result = eligibility(VOUCHER, standing(stock_left=stock_left), NOW)
    assert (Ineligibility.OUT_OF_STOCK in result.reasons) is sold_out


def test_no_limit_means_any_number_of_redemptions() -> None:
    assert eligibility(reward(limit_per_member=0), standing(member_redemptions=10**6), NOW).ok
    limited = reward(limit_per_member=3)
    assert eligibility(limited, standing(member_redemptions=2), NOW).ok
    assert eligibility(limited, standing(member_redemptions=3), NOW).reasons == (
        Ineligibility.LIMIT_REACHED,
    )


@pytest.mark.parametrize(("spendable", "short"), [(500, 0), (10**6, 0), (499, 1), (0, 500)])
def test_points_short_is_the_missing_amount(spendable: int, short: int) -> None:
    result = eligibility(VOUCHER, standing(spendable_points=spendable), NOW)
    assert result.points_short == short
    assert (Ineligibility.POINTS_SHORT in result.reasons) is bool(short)


def test_negative_spendable_points_count_in_full() -> None:
    # Reserved points can exceed what is available after a correction: never negative short.
    result = eligibility(VOUCHER, standing(spendable_points=-100), NOW)
    assert result.points_short == 600


def test_raise_first_points_short_carries_the_shortfall() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        Eligibility((Ineligibility.POINTS_SHORT,), 120).raise_first("five-off")
    assert caught.value.reason == "INSUFFICIENT_POINTS"
    assert caught.value.metadata == {"reward": "five-off", "points_short": "120"}
    assert "120" in caught.value.message


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (Ineligibility.NOT_AVAILABLE, "REWARD_NOT_AVAILABLE"),
        (Ineligibility.TIER_TOO_LOW, "TIER_TOO_LOW"),
        (Ineligibility.OUT_OF_STOCK, "OUT_OF_STOCK"),
        (Ineligibility.LIMIT_REACHED, "LIMIT_REACHED"),
        (Ineligibility.POINTS_SHORT, "INSUFFICIENT_POINTS"),
    ],
)
def test_raise_first_reason_names_the_reward(reason: Ineligibility, code: str) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        Eligibility((reason, Ineligibility.POINTS_SHORT), 7).raise_first("five-off")
    assert caught.value.reason == code
    assert caught.value.metadata["reward"] == "five-off"
    assert "five-off" in caught.value.message


# --- hold_duration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "program_default", "seconds"),
    [
        (60, 0, 60),  # the request's
        (60, 1800, 60),  # the request wins over the program
        (0, 1800, 1800),  # the program's default
        (0, 0, DEFAULT_HOLD_SECONDS),  # 15 minutes
        (MAX_HOLD_SECONDS, 0, MAX_HOLD_SECONDS),
        (MAX_HOLD_SECONDS + 1, 0, MAX_HOLD_SECONDS),  # capped
        (0, MAX_HOLD_SECONDS * 2, MAX_HOLD_SECONDS),
    ],
)
def test_hold_duration(requested: int, program_default: int, seconds: int) -> None:
    assert hold_duration(requested, program_default) == timedelta(seconds=seconds)


def test_default_hold_is_fifteen_minutes_and_cap_a_week() -> None:
    assert timedelta(seconds=DEFAULT_HOLD_SECONDS) == timedelta(minutes=15)
    assert timedelta(seconds=MAX_HOLD_SECONDS) == timedelta(days=7)


# --- voucher codes ----------------------------------------------------------------------------


def test_voucher_alphabet_has_no_ambiguous_characters() -> None:
    assert not set("0O1IL") & set(VOUCHER_ALPHABET)
    assert len(set(VOUCHER_ALPHABET)) == len(VOUCHER_ALPHABET) == 31
    assert VOUCHER_ALPHABET.isupper()


def test_voucher_codes_have_the_format_and_are_distinct() -> None:
    allowed = re.escape(VOUCHER_ALPHABET)
    pattern = re.compile(f"RW-[{allowed}]{{4}}-[{allowed}]{{4}}")
    codes = [new_voucher_code() for _ in range(5_000)]
    for code in codes:
        assert pattern.fullmatch(code), code
    assert len(set(codes)) == len(codes)
    # Every character of the alphabet turns up: the codes use all of it.
    assert set("".join(c[3:7] + c[8:] for c in codes)) == set(VOUCHER_ALPHABET)


def test_voucher_code_prefix() -> None:
    assert re.fullmatch(r"GIFT-\w{4}-\w{4}", new_voucher_code("GIFT"))


# --- points_discount --------------------------------------------------------------------------


def discount_reason(*args: int) -> tuple[str, dict[str, str]]:
    with pytest.raises(FailedPrecondition) as caught:
        points_discount(*args)
    return caught.value.reason, caught.value.metadata


@pytest.mark.parametrize(
    ("points", "rate", "expected"),
    [
        (1_000, 100, 1_000),  # 1 point = 1 cent
        (1_000, 50, 500),
        (1_000, 250, 2_500),
        (199, 1, 1),  # rounding down
        (299, 1, 2),
        (150, 33, 49),  # 49.5 -> 49, never in the member's favour
        (100, 1, 1),
    ],
)
def test_points_discount_at_the_rate_rounding_down(points: int, rate: int, expected: int) -> None:
    assert points_discount(points, 10**6, rate, 0, 0) == expected


@pytest.mark.parametrize(("points", "rate"), [(99, 1), (1, 50), (1_000, 0)])
def test_worthless_points_are_below_minimum(points: int, rate: int) -> None:
    assert discount_reason(points, 10**6, rate, 0, 0)[0] == "BELOW_MINIMUM"


@pytest.mark.parametrize(("points", "ok"), [(99, False), (100, True), (101, True)])
def test_points_discount_minimum(points: int, ok: bool) -> None:
    if ok:
        assert points_discount(points, 10**6, 100, 100, 0) == points
    else:
        assert discount_reason(points, 10**6, 100, 100, 0)[0] == "BELOW_MINIMUM"


@pytest.mark.parametrize("points", [0, -10])
def test_at_least_one_point_even_without_a_minimum(points: int) -> None:
    assert discount_reason(points, 10**6, 100, 0, 0)[0] == "BELOW_MINIMUM"


def test_points_discount_maximum_share() -> None:
    assert points_discount(5_000, 10_000, 100, 0, 50) == 5_000
    reason, metadata = discount_reason(5_001, 10_000, 100, 0, 50)
    assert reason == "ABOVE_MAXIMUM_SHARE"
    assert metadata == {"max_discount_minor": "5000"}


def test_share_limit_rounds_down() -> None:
    # 33% of 999 is 329.67: the limit is 329.
    assert points_discount(329, 999, 100, 0, 33) == 329
    assert discount_reason(330, 999, 100, 0, 33) == (
        "ABOVE_MAXIMUM_SHARE",
        {"max_discount_minor": "329"},
    )


def test_no_share_limit_means_the_whole_order() -> None:
    assert points_discount(10_000, 10_000, 100, 0, 0) == 10_000
    assert points_discount(10_000, 10_000, 100, 0, 100) == 10_000
    assert discount_reason(10_001, 10_000, 100, 0, 0)[0] == "ABOVE_MAXIMUM_SHARE"


@given(
    points=st.integers(min_value=1, max_value=10**9),
    extra=st.integers(min_value=0, max_value=10**9),
    total=st.integers(min_value=1, max_value=MAX_AMOUNT_MINOR),
    rate=st.integers(min_value=0, max_value=10_000),
    min_points=st.integers(min_value=0, max_value=10_000),
    share=st.integers(min_value=0, max_value=100),
)
def test_points_discount_within_share_and_monotone(
    points: int, extra: int, total: int, rate: int, min_points: int, share: int
) -> None:
    def attempt(p: int) -> int | None:
        try:
            return points_discount(p, total, rate, min_points, share)
        except FailedPrecondition as error:
            assert error.reason in {"BELOW_MINIMUM", "ABOVE_MAXIMUM_SHARE"}
            return None

    fewer, more = attempt(points), attempt(points + extra)
    for discount in (fewer, more):
        if discount is not None:
            assert 0 < discount <= total * (share or 100) // 100
    if fewer is not None:
        assert fewer == points * rate // 100
        # More points never buy less: past the share they are refused, never shrunk.
        assert more is None or more >= fewer


# --- Redemption -------------------------------------------------------------------------------


def hold(expire_time: datetime | None = NOW + HOUR) -> Redemption:
    return Redemption(
        redemption_id="r1",
        reward_id="five-off",
        points=500,
        state=RedemptionState.RESERVED,
        create_time=NOW,
        expire_time=expire_time,
        events=[RedemptionEvent(RedemptionState.RESERVED, NOW)],
    )


def test_a_hold_holds_until_its_expire_time_exclusive() -> None:
    h = hold()
    assert h.holds_at(NOW)
    assert h.holds_at(NOW + HOUR - timedelta(microseconds=1))
    assert not h.holds_at(NOW + HOUR)
    assert not h.holds_at(NOW + 2 * HOUR)


def test_only_reserved_redemptions_with_an_expire_time_hold() -> None:
    assert not hold(expire_time=None).holds_at(NOW)
    for state in RedemptionState:
        h = hold()
        h.state = state
        assert h.holds_at(NOW) is (state is RedemptionState.RESERVED)


def test_move_to_records_each_state_with_its_time() -> None:
    h = hold()
    h.move_to(RedemptionState.CONFIRMED, NOW + timedelta(minutes=5))
    h.move_to(RedemptionState.FULFILLED, NOW + timedelta(days=2))
    assert h.state is RedemptionState.FULFILLED
    assert h.events == [
        RedemptionEvent(RedemptionState.RESERVED, NOW),
        RedemptionEvent(RedemptionState.CONFIRMED, NOW + timedelta(minutes=5)),
        RedemptionEvent(RedemptionState.FULFILLED, NOW + timedelta(days=2)),
    ]
    assert not h.holds_at(NOW)


def test_redemptions_do_not_share_event_lists() -> None:
    a = Redemption("a", None, 1, RedemptionState.CONFIRMED, NOW)
    b = Redemption("b", None, 1, RedemptionState.CONFIRMED, NOW)
    a.move_to(RedemptionState.CANCELLED, NOW)
    assert b.events == []
