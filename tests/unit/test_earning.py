"""Earning rules: base points, additive multipliers, bonuses, one rounding, exact allocation."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loyalty_engine.domain.earning import (
    AwardComponent,
    EarningPolicy,
    LineItem,
    PointsAward,
    ProductRule,
    ProductRuleKind,
    Promotion,
    Rounding,
    allocate_largest_remainder,
    compute_award,
    cumulative_share,
    format_multiplier,
    round_points,
)
from loyalty_engine.domain.errors import InvalidArgument

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


def line(amount: int, category: str = "grocery", sku: str = "sku-1", quantity: int = 1) -> LineItem:
    assert amount % quantity == 0
    return LineItem(
        sku=sku, category=category, quantity=quantity, unit_price_minor=amount // quantity
    )


def promo(
    promotion_id: str = "summer",
    *,
    multiplier: int = 100,
    bonus: int = 0,
    categories: frozenset[str] = frozenset(),
    start: datetime = NOW - timedelta(days=1),
    end: datetime = NOW + timedelta(days=1),
) -> Promotion:
    return Promotion(
        promotion_id=promotion_id,
        name=f"Promo {promotion_id}",
        start_time=start,
        end_time=end,
        multiplier_percent=multiplier,
        bonus_points=bonus,
        categories=categories,
    )


def check_invariants(award: PointsAward, n_lines: int) -> None:
    assert len(award.line_points) == n_lines
    assert sum(award.line_points) + award.order_level_points == award.total
    assert sum(c.points for c in award.components) == award.total
    assert all(c.points != 0 for c in award.components)
    assert len({c.rule_id for c in award.components}) == len(award.components)
    assert award.total >= 0
    assert all(p >= 0 for p in award.line_points)


def test_line_item_amount() -> None:
    assert LineItem("sku", "cat", 3, 250).amount_minor == 750


def test_base_points_one_per_currency_unit() -> None:
    award = compute_award(EarningPolicy(), [line(4000)], NOW)
    assert award == PointsAward(
        total=40,
        components=(AwardComponent("base", "Base points", 40),),
        line_points=(40,),
        order_level_points=0,
        eligible_amount_minor=4000,
    )


def test_custom_rate() -> None:
    # 5 points per 2.00: 7.00 earns 17.5 -> 17 with the default FLOOR.
    policy = EarningPolicy(base_points=5, per_amount_minor=200)
    assert compute_award(policy, [line(700)], NOW).total == 17


@pytest.mark.parametrize(
    ("rounding", "amount", "expected"),
    [
        (Rounding.FLOOR, 250, 2),
        (Rounding.CEIL, 250, 3),
        (Rounding.HALF_UP, 250, 3),
        (Rounding.HALF_EVEN, 250, 2),
        (Rounding.HALF_EVEN, 350, 4),
        (Rounding.HALF_UP, 249, 2),
        (Rounding.CEIL, 201, 3),
        (Rounding.CEIL, 200, 2),
        (Rounding.FLOOR, 299, 2),
    ],
)
def test_rounding_modes(rounding: Rounding, amount: int, expected: int) -> None:
    policy = EarningPolicy(rounding=rounding)
    assert compute_award(policy, [line(amount)], NOW).total == expected


def test_round_points_on_negative_values() -> None:
    assert round_points(Fraction(-5, 2), Rounding.HALF_UP) == -3
    assert round_points(Fraction(-5, 2), Rounding.HALF_EVEN) == -2
    assert round_points(Fraction(-5, 2), Rounding.FLOOR) == -3
    assert round_points(Fraction(-5, 2), Rounding.CEIL) == -2


def test_rounding_happens_once_for_the_order() -> None:
    # Three lines of 0.50 each earn 1.5 points together: per-line flooring would give 0.
    award = compute_award(EarningPolicy(), [line(50), line(50), line(50)], NOW)
    assert award.total == 1
    assert award.line_points == (1, 0, 0)  # equal remainders: the earliest line wins
    check_invariants(award, 3)


def test_line_allocation_follows_largest_remainder() -> None:
    award = compute_award(EarningPolicy(), [line(130), line(180), line(150)], NOW)
    # exact 1.3 + 1.8 + 1.5 = 4.6 -> 4; floors 1+1+1, the extra point goes to 0.8.
    assert award.total == 4
    assert award.line_points == (1, 2, 1)


def test_excluded_categories_earn_nothing() -> None:
    policy = EarningPolicy(excluded_categories=frozenset({"tobacco", "gift_card"}))
    award = compute_award(policy, [line(1000), line(5000, "tobacco"), line(2000, "gift_card")], NOW)
    assert award.total == 10
    assert award.line_points == (10, 0, 0)
    assert award.eligible_amount_minor == 1000


def test_below_minimum_order_earns_nothing() -> None:
    policy = EarningPolicy(min_order_minor=1000, excluded_categories=frozenset({"tobacco"}))
    # 5.00 eligible + 20.00 excluded: the excluded part does not count towards the minimum.
    award = compute_award(policy, [line(500), line(2000, "tobacco")], NOW)
    assert award == PointsAward(0, (), (0, 0), 0, 500)
    assert compute_award(policy, [line(1000)], NOW).total == 10


def test_tier_multiplier_is_its_own_component() -> None:
    award = compute_award(
        EarningPolicy(),
        [line(4000)],
        NOW,
        tier_multiplier_percent=150,
        tier_id="gold",
        tier_name="Gold",
    )
    assert award.components == (
        AwardComponent("base", "Base points", 40),
        AwardComponent("tier:gold", "Gold tier 1.5x", 20),
    )
    assert award.total == 60


def test_multipliers_add_up_instead_of_compounding() -> None:
    policy = EarningPolicy(
        product_rules=(
            ProductRule("coffee2x", "Coffee 2x", ProductRuleKind.CATEGORY, "coffee", 200),
        ),
        promotions=(promo(multiplier=300),),
    )
    award = compute_award(policy, [line(1000, "coffee")], NOW, 200, "gold", "Gold")
    # 10 base + 10 tier + 10 product + 20 promotion = 5x, not 2*2*3 = 12x.
    assert award.total == 50
    assert {c.rule_id: c.points for c in award.components} == {
        "base": 10,
        "tier:gold": 10,
        "product:coffee2x": 10,
        "promotion:summer": 20,
    }
    assert [c.rule_id for c in award.components] == [
        "base",
        "tier:gold",
        "product:coffee2x",
        "promotion:summer",
    ]


def test_product_rules_match_by_sku_or_category_with_bonus_per_unit() -> None:
    policy = EarningPolicy(
        product_rules=(
            ProductRule("espresso", "Espresso beans", ProductRuleKind.SKU, "sku-espresso", 100, 5),
            ProductRule("bakery", "Bakery 1.5x", ProductRuleKind.CATEGORY, "bakery", 150),
        )
    )
    lines = [
        line(1200, "coffee", "sku-espresso", quantity=3),
        line(400, "bakery", "sku-bread"),
        line(400, "coffee", "sku-other"),
    ]
    award = compute_award(policy, lines, NOW)
    # espresso: 12 + 3*5 = 27; bread: 4 + 2 = 6; other: 4.
    assert award.line_points == (27, 6, 4)
    assert {c.rule_id: c.points for c in award.components} == {
        "base": 20,
        "product:espresso": 15,
        "product:bakery": 2,
    }
    check_invariants(award, 3)


def test_promotion_is_active_on_a_half_open_interval() -> None:
    window = promo(multiplier=200, start=NOW, end=NOW + timedelta(hours=1))
    policy = EarningPolicy(promotions=(window,))
    assert compute_award(policy, [line(1000)], NOW).total == 20
    assert compute_award(policy, [line(1000)], NOW + timedelta(hours=1)).total == 10
    assert compute_award(policy, [line(1000)], NOW - timedelta(microseconds=1)).total == 10


def test_promotion_categories_limit_the_multiplier() -> None:
    policy = EarningPolicy(promotions=(promo(multiplier=200, categories=frozenset({"toys"})),))
    award = compute_award(policy, [line(1000, "toys"), line(1000, "grocery")], NOW)
    assert award.line_points == (20, 10)


def test_promotion_bonus_is_once_per_order_and_needs_a_matching_eligible_line() -> None:
    policy = EarningPolicy(
        excluded_categories=frozenset({"tobacco"}),
        promotions=(
            promo("toys", bonus=100, categories=frozenset({"toys"})),
            promo("smoke", bonus=100, categories=frozenset({"tobacco"})),
            promo("any", bonus=7),
        ),
    )
    award = compute_award(
        policy, [line(1000, "toys"), line(1000, "toys"), line(1000, "tobacco")], NOW
    )
    assert award.order_level_points == 107
    assert award.line_points == (10, 10, 0)
    assert award.total == 127
    assert {c.rule_id: c.points for c in award.components} == {
        "base": 20,
        "promotion:toys": 100,
        "promotion:any": 7,
    }
    check_invariants(award, 3)


def test_promotion_bonus_survives_rounding_exactly() -> None:
    policy = EarningPolicy(rounding=Rounding.HALF_EVEN, promotions=(promo(bonus=1),))
    # exact 0.5 + 1 = 1.5 -> 2 (half to even): the extra point goes to the line, not the bonus.
    award = compute_award(policy, [line(50)], NOW)
    assert award.total == 2
    assert award.order_level_points == 1
    assert award.line_points == (1,)


def test_free_line_does_not_trigger_an_order_bonus() -> None:
    policy = EarningPolicy(promotions=(promo(bonus=50, categories=frozenset({"gift"})),))
    award = compute_award(policy, [line(0, "gift"), line(1000)], NOW)
    assert award.order_level_points == 0
    assert award.total == 10


def test_multiplier_below_100_gives_a_negative_component() -> None:
    policy = EarningPolicy(
        product_rules=(ProductRule("half", "Half", ProductRuleKind.CATEGORY, "deals", 50),)
    )
    award = compute_award(policy, [line(1000, "deals")], NOW)
    assert award.total == 5
    assert {c.rule_id: c.points for c in award.components} == {"base": 10, "product:half": -5}


def test_zero_multipliers_cancel_only_their_own_line() -> None:
    policy = EarningPolicy(
        product_rules=(ProductRule("none", "No points", ProductRuleKind.SKU, "sku-x", 0),),
        promotions=(promo(multiplier=0, categories=frozenset({"deals"})),),
    )
    # The sku-x line has two 0x rules (net -1x): it earns zero, not minus 10.
    award = compute_award(policy, [line(1000, "deals", "sku-x"), line(1000)], NOW)
    assert award.line_points == (0, 10)
    assert award.total == 10
    check_invariants(award, 2)


def test_zero_tier_multiplier_earns_nothing() -> None:
    award = compute_award(EarningPolicy(), [line(1000)], NOW, 0, "staff", "Staff")
    assert award.total == 0
    # The breakdown still explains why: the base is there and the tier takes it away.
    assert award.components == (
        AwardComponent("base", "Base points", 10),
        AwardComponent("tier:staff", "Staff tier 0x", -10),
    )


def test_empty_purchase() -> None:
    assert compute_award(EarningPolicy(promotions=(promo(bonus=5),)), [], NOW) == PointsAward(
        0, (), (), 0, 0
    )


@pytest.mark.parametrize(
    ("percent", "text"), [(100, "1x"), (150, "1.5x"), (125, "1.25x"), (200, "2x"), (5, "0.05x")]
)
def test_format_multiplier(percent: int, text: str) -> None:
    assert format_multiplier(percent) == text


# -- validation ---------------------------------------------------------------------------


def fields_of(error: InvalidArgument) -> set[str]:
    return {v.field for v in error.violations}


def test_policy_validation_reports_every_bad_field() -> None:
    policy = EarningPolicy(
        base_points=-1,
        per_amount_minor=0,
        min_order_minor=-5,
        product_rules=(
            ProductRule("r", "R", ProductRuleKind.SKU, "", 10_001, -1),
            ProductRule("r", "R", ProductRuleKind.SKU, "x"),
        ),
        promotions=(promo(start=NOW, end=NOW), promo("p", multiplier=-1, bonus=-1)),
    )
    with pytest.raises(InvalidArgument) as caught:
        policy.validate()
    assert fields_of(caught.value) == {
        "earning_policy.base_points",
        "earning_policy.per_amount_minor",
        "earning_policy.min_order_minor",
        "earning_policy.product_rules[0].match",
        "earning_policy.product_rules[0].multiplier_percent",
        "earning_policy.product_rules[0].bonus_points_per_unit",
        "earning_policy.product_rules[1].rule_id",
        "earning_policy.promotions[0].end_time",
        "earning_policy.promotions[1].multiplier_percent",
        "earning_policy.promotions[1].bonus_points",
    }


def test_policy_validation_rejects_naive_promotion_times() -> None:
    naive = datetime(2025, 1, 1)
    policy = EarningPolicy(promotions=(promo(start=naive, end=naive + timedelta(days=1)),))
    with pytest.raises(InvalidArgument) as caught:
        policy.validate()
    assert fields_of(caught.value) == {
        "earning_policy.promotions[0].start_time",
        "earning_policy.promotions[0].end_time",
    }


def test_default_policy_is_valid() -> None:
    EarningPolicy().validate()


def test_compute_award_rejects_bad_lines_and_inputs() -> None:
    with pytest.raises(InvalidArgument) as caught:
        compute_award(
            EarningPolicy(),
            [LineItem("a", "c", 0, 100), LineItem("b", "c", 1, -1), LineItem("c", "", 1, 1)],
            NOW,
        )
    assert fields_of(caught.value) == {
        "lines[0].quantity",
        "lines[1].unit_price_minor",
        "lines[2].category",
    }
    with pytest.raises(InvalidArgument):
        compute_award(EarningPolicy(), [line(100)], datetime(2025, 1, 1))
    with pytest.raises(InvalidArgument):
        compute_award(EarningPolicy(), [line(100)], NOW, tier_multiplier_percent=-1)
    with pytest.raises(InvalidArgument):
        compute_award(EarningPolicy(per_amount_minor=0), [line(100)], NOW)


# -- allocation and proportional reversal ---------------------------------------------------


def test_allocate_largest_remainder() -> None:
    values = [Fraction(1, 3)] * 3
    assert allocate_largest_remainder(1, values) == [1, 0, 0]
    assert allocate_largest_remainder(0, values) == [0, 0, 0]
    with pytest.raises(ValueError):
        allocate_largest_remainder(5, values)


def test_cumulative_share_edges() -> None:
    assert cumulative_share(10, 0, 3) == 0
    assert cumulative_share(10, 3, 3) == 10
    assert cumulative_share(10, 1, 3) == 3
    assert cumulative_share(10, 2, 3) == 6
    for part, whole in [(-1, 3), (4, 3), (0, 0)]:
        with pytest.raises(InvalidArgument):
            cumulative_share(10, part, whole)


@given(
    points=st.integers(min_value=0, max_value=10**9),
    steps=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=10),
)
def test_returning_everything_in_steps_reverses_exactly_the_points(
    points: int, steps: list[int]
) -> None:
    quantity = max(1, sum(steps))
    returned = 0
    reversed_total = 0
    for step in [*steps, quantity - sum(steps)]:
        before, returned = returned, min(quantity, returned + step)
        delta = cumulative_share(points, returned, quantity) - cumulative_share(
            points, before, quantity
        )
        assert delta >= 0
        reversed_total += delta
    assert returned == quantity
    assert reversed_total == points


# -- property: against an independent formula -----------------------------------------------

CATEGORIES = ["grocery", "coffee", "toys", "tobacco"]
SKUS = ["a", "b", "c"]

line_items = st.builds(
    LineItem,
    sku=st.sampled_from(SKUS),
    category=st.sampled_from(CATEGORIES),
    quantity=st.integers(min_value=1, max_value=5),
    unit_price_minor=st.integers(min_value=0, max_value=100_000),
)
product_rules = st.lists(
    st.builds(
        ProductRule,
        rule_id=st.text("xyz", min_size=1, max_size=3),
        name=st.just("rule"),
        kind=st.sampled_from(ProductRuleKind),
        match=st.sampled_from(CATEGORIES + SKUS),
        multiplier_percent=st.integers(min_value=0, max_value=500),
        bonus_points_per_unit=st.integers(min_value=0, max_value=20),
    ),
    max_size=3,
    unique_by=lambda rule: rule.rule_id,
)
promotions = st.lists(
    st.builds(
        promo,
        st.text("pq", min_size=1, max_size=3),
        multiplier=st.integers(min_value=0, max_value=500),
        bonus=st.integers(min_value=0, max_value=50),
        categories=st.frozensets(st.sampled_from(CATEGORIES), max_size=2),
        start=st.sampled_from([NOW - timedelta(days=1), NOW, NOW + timedelta(seconds=1)]),
    ),
    max_size=3,
    unique_by=lambda p: p.promotion_id,
)
policies = st.builds(
    EarningPolicy,
    base_points=st.integers(min_value=0, max_value=10),
    per_amount_minor=st.integers(min_value=1, max_value=1000),
    rounding=st.sampled_from(Rounding),
    min_order_minor=st.sampled_from([0, 0, 500, 5000]),
    excluded_categories=st.sampled_from([frozenset(), frozenset({"tobacco"})]),
    product_rules=product_rules.map(tuple),
    promotions=promotions.map(tuple),
)


def expected_line(policy: EarningPolicy, item: LineItem, tier_percent: int) -> Fraction:
    base = Fraction(item.amount_minor * policy.base_points, policy.per_amount_minor)
    percent = 100 + (tier_percent - 100)
    bonus = 0
    for rule in policy.product_rules:
        if rule.matches(item):
            percent += rule.multiplier_percent - 100
            bonus += rule.bonus_points_per_unit * item.quantity
    for p in policy.promotions:
        if p.is_active(NOW) and p.matches(item):
            percent += p.multiplier_percent - 100
    return max(Fraction(0), base * percent / 100 + bonus)


@settings(max_examples=300)
@given(
    policy=policies,
    lines=st.lists(line_items, max_size=6),
    tier_percent=st.integers(min_value=0, max_value=400),
)
def test_award_matches_the_formula_and_adds_up(
    policy: EarningPolicy, lines: list[LineItem], tier_percent: int
) -> None:
    award = compute_award(policy, lines, NOW, tier_percent, "t", "T")
    check_invariants(award, len(lines))

    eligible = [item.category not in policy.excluded_categories for item in lines]
    eligible_amount = sum(i.amount_minor for i, ok in zip(lines, eligible, strict=True) if ok)
    assert award.eligible_amount_minor == eligible_amount
    if eligible_amount < policy.min_order_minor:
        assert award.total == 0
        return
    exact_lines = [
        expected_line(policy, item, tier_percent) if ok else Fraction(0)
        for item, ok in zip(lines, eligible, strict=True)
    ]
    order_bonus = sum(
        p.bonus_points
        for p in policy.promotions
        if p.is_active(NOW)
        and any(
            ok and i.amount_minor > 0 and p.matches(i)
            for i, ok in zip(lines, eligible, strict=True)
        )
    )
    assert award.order_level_points == order_bonus
    assert award.total == round_points(sum(exact_lines, Fraction(0)) + order_bonus, policy.rounding)
    for points, exact in zip(award.line_points, exact_lines, strict=True):
        assert math.floor(exact) <= points <= math.ceil(exact)
