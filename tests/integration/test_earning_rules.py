"""Earning rules through the real server: base rate, rounding, tiers, products, promotions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, json_format

from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_rule(scenario: Any, program: str, rule_id: str, **fields: Any) -> Any:
    rule = pp.EarningRule()
    json_format.ParseDict(fields, rule)
    return scenario.client.programs.CreateEarningRule(
        pp.CreateEarningRuleRequest(
            request_id=uid("r"),
            parent=f"programs/{program}",
            earning_rule_id=rule_id,
            earning_rule=rule,
        )
    )


def breakdown(reply: Any) -> dict[str, int]:
    return {c.rule: c.points for c in reply.breakdown}


def assert_breakdown_adds_up(reply: Any) -> None:
    assert sum(c.points for c in reply.breakdown) == reply.points_awarded


async def test_rounding_modes_round_the_exact_total_once(scenario) -> None:
    # 1 point per 1.00: 12.50 EUR is 12.5 points, 13.50 EUR is 13.5, 12.49 EUR is 12.49.
    expected = {
        "ROUNDING_FLOOR": (12, 13, 12),
        "ROUNDING_CEIL": (13, 14, 13),
        "ROUNDING_HALF_UP": (13, 14, 12),
        "ROUNDING_HALF_EVEN": (12, 14, 12),
    }
    for rounding, points in expected.items():
        program = await scenario.program(
            earning_policy={"base_points": 1, "per_amount_minor": 100, "rounding": rounding}
        )
        member = await scenario.member(program)
        got = []
        for amount in (1_250, 1_350, 1_249):
            reply = await scenario.purchase(member, amount)
            assert_breakdown_adds_up(reply)
            got.append(reply.points_awarded)
        assert tuple(got) == points, rounding
        balance = await scenario.assert_balance_matches_ledger(member)
        assert balance.available_points == sum(points)


async def test_base_rate_is_points_per_amount(scenario) -> None:
    # 3 points per 2.00 EUR, rounded half up: 10.01 EUR is 15.015 points.
    program = await scenario.program(
        earning_policy={"base_points": 3, "per_amount_minor": 200, "rounding": "ROUNDING_HALF_UP"}
    )
    member = await scenario.member(program)

    reply = await scenario.purchase(member, 1_001)

    assert reply.points_awarded == 15
    assert breakdown(reply) == {"base": 15}
    await scenario.assert_balance_matches_ledger(member)


async def test_tier_multiplier_adds_its_own_component(scenario) -> None:
    program = await scenario.program()
    await scenario.tier(program, "gold", 10_000, multiplier=150)
    member = await scenario.member(program)
    first = await scenario.purchase(member, 10_000)  # qualifies, earns before the upgrade
    assert breakdown(first) == {"base": 100}

    reply = await scenario.purchase(member, 5_000)

    assert reply.points_awarded == 75
    assert breakdown(reply) == {"base": 50, "tier:gold": 25}
    assert [c.label for c in reply.breakdown] == ["Base points", "Gold tier 1.5x"]
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 175


async def test_category_and_sku_rules_multiply_and_add_per_unit_bonuses(scenario) -> None:
    program = await scenario.program()
    await create_rule(
        scenario,
        program,
        "double-coffee",
        display_name="Double points on coffee",
        kind="EARNING_RULE_KIND_CATEGORY",
        match="coffee",
        multiplier_percent=200,
    )
    await create_rule(
        scenario,
        program,
        "mug-bonus",
        display_name="5 points per mug",
        kind="EARNING_RULE_KIND_SKU",
        match="sku-mug",
        bonus_points_per_unit=5,
    )
    member = await scenario.member(program)

    reply = await scenario.purchase(
        member,
        6_000,
        lines=[
            ("sku-beans", "coffee", 2, 1_000),  # 20 base + 20 double
            ("sku-mug", "kitchen", 3, 1_000),  # 30 base + 15 bonus
            ("sku-bread", "bakery", 1, 1_000),  # 10 base
        ],
    )

    assert breakdown(reply) == {
        "base": 60,
        "product:double-coffee": 20,
        "product:mug-bonus": 15,
    }
    assert reply.points_awarded == 95
    assert_breakdown_adds_up(reply)
    await scenario.assert_balance_matches_ledger(member)


async def test_excluded_categories_earn_nothing_and_do_not_reach_the_minimum(scenario) -> None:
    program = await scenario.program(
        earning_policy={
            "base_points": 1,
            "per_amount_minor": 100,
            "min_order_minor": 2_000,
            "excluded_categories": ["gift_card"],
        }
    )
    member = await scenario.member(program)

    only_gift_card = await scenario.purchase(member, 5_000, lines=[("gc", "gift_card", 1, 5_000)])
    too_small = await scenario.purchase(
        member, 6_999, lines=[("gc", "gift_card", 1, 5_000), ("b", "books", 1, 1_999)]
    )
    enough = await scenario.purchase(
        member, 7_000, lines=[("gc", "gift_card", 1, 5_000), ("b", "books", 1, 2_000)]
    )
    no_lines_small = await scenario.purchase(member, 1_999)

    assert only_gift_card.points_awarded == 0 and list(only_gift_card.breakdown) == []
    assert too_small.points_awarded == 0
    assert enough.points_awarded == 20 and breakdown(enough) == {"base": 20}
    assert no_lines_small.points_awarded == 0
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 20
    assert balance.lifetime_earned_points == 20
    # Purchases that earn nothing write no ledger entry.
    assert len(await scenario.ledger(member)) == 1


async def test_promotion_is_active_on_start_inclusive_end_exclusive_by_purchase_time(
    scenario, clock
) -> None:
    program = await scenario.program(late_purchase_window_days=30)
    start = clock.now + timedelta(days=1)
    end = start + timedelta(days=2)
    await create_rule(
        scenario,
        program,
        "weekend",
        display_name="Double points weekend",
        kind="EARNING_RULE_KIND_PROMOTION",
        multiplier_percent=200,
        bonus_points=7,
        start_time=rfc3339(start),
        end_time=rfc3339(end),
    )
    member = await scenario.member(program)

    before = await scenario.purchase(member, 1_000)
    clock.now = start
    at_start = await scenario.purchase(member, 1_000)
    clock.now = end - timedelta(seconds=1)
    last_second = await scenario.purchase(member, 1_000)
    clock.now = end
    at_end = await scenario.purchase(member, 1_000)
    clock.advance(days=5)
    # A sale made during the promotion but reported after it still gets it.
    late = await scenario.purchase(member, 1_000, when=start + timedelta(hours=3))

    assert breakdown(before) == {"base": 10}
    assert breakdown(at_start) == {"base": 10, "promotion:weekend": 17}
    assert breakdown(last_second) == {"base": 10, "promotion:weekend": 17}
    assert breakdown(at_end) == {"base": 10}
    assert breakdown(late) == {"base": 10, "promotion:weekend": 17}
    assert [c.label for c in at_start.breakdown] == ["Base points", "Double points weekend"]
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 5 * 10 + 3 * 17


async def test_promotion_limited_to_categories_and_rules_combine_additively(
    scenario, clock
) -> None:
    program = await scenario.program()
    await scenario.tier(program, "gold", 0, multiplier=200)
    await create_rule(
        scenario,
        program,
        "triple-toys",
        display_name="Triple toys",
        kind="EARNING_RULE_KIND_PROMOTION",
        multiplier_percent=300,
        bonus_points=4,
        categories=["toys"],
        start_time=rfc3339(clock.now - timedelta(days=1)),
        end_time=rfc3339(clock.now + timedelta(days=1)),
    )
    await create_rule(
        scenario,
        program,
        "toys-x2",
        display_name="Toys x2",
        kind="EARNING_RULE_KIND_CATEGORY",
        match="toys",
        multiplier_percent=200,
    )
    member = await scenario.member(program)
    await scenario.purchase(member, 0, lines=[("free", "misc", 1, 0)])  # becomes gold at 0

    books_only = await scenario.purchase(member, 1_000, lines=[("b", "books", 1, 1_000)])
    toys = await scenario.purchase(
        member, 2_000, lines=[("t", "toys", 1, 1_000), ("b", "books", 1, 1_000)]
    )

    # Books: base 10, gold +10. No promotion: it is for toys only.
    assert breakdown(books_only) == {"base": 10, "tier:gold": 10}
    # Toys: base 10, gold +10, category +10, promotion +20 and its order bonus 4 (additive,
    # not compounded); books: base 10, gold +10.
    assert breakdown(toys) == {
        "base": 20,
        "tier:gold": 20,
        "product:toys-x2": 10,
        "promotion:triple-toys": 24,
    }
    assert toys.points_awarded == 74
    assert_breakdown_adds_up(toys)
    await scenario.assert_balance_matches_ledger(member)


async def test_earning_rule_crud_and_deleted_rules_stop_earning(scenario, errors) -> None:
    program = await scenario.program()
    created = await create_rule(
        scenario,
        program,
        "wine",
        display_name="Wine x3",
        kind="EARNING_RULE_KIND_CATEGORY",
        match="wine",
        multiplier_percent=300,
    )
    name = f"programs/{program}/earningRules/wine"
    assert created.earning_rule.name == name
    got = await scenario.client.programs.GetEarningRule(pp.GetEarningRuleRequest(name=name))
    assert got.earning_rule == created.earning_rule
    listed = await scenario.client.programs.ListEarningRules(
        pp.ListEarningRulesRequest(parent=f"programs/{program}")
    )
    assert list(listed.earning_rules) == [created.earning_rule]
    member = await scenario.member(program)
    first = await scenario.purchase(member, 1_000, lines=[("w", "wine", 1, 1_000)])
    assert breakdown(first) == {"base": 10, "product:wine": 20}

    updated = await scenario.client.programs.UpdateEarningRule(
        pp.UpdateEarningRuleRequest(
            request_id=uid("r"),
            earning_rule=pp.EarningRule(name=name, multiplier_percent=150, match="ignored"),
            update_mask=field_mask_pb2.FieldMask(paths=["multiplier_percent"]),
        )
    )
    assert updated.earning_rule.multiplier_percent == 150
    assert updated.earning_rule.match == "wine"
    second = await scenario.purchase(member, 1_000, lines=[("w", "wine", 1, 1_000)])
    assert breakdown(second) == {"base": 10, "product:wine": 5}

    await scenario.client.programs.DeleteEarningRule(
        pp.DeleteEarningRuleRequest(request_id=uid("r"), name=name)
    )
    third = await scenario.purchase(member, 1_000, lines=[("w", "wine", 1, 1_000)])
    assert breakdown(third) == {"base": 10}
    code, reason, _ = await errors(
        scenario.client.programs.GetEarningRule(pp.GetEarningRuleRequest(name=name))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "EARNING_RULE_NOT_FOUND")
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 30 + 15 + 10  # points already awarded stay


async def test_bad_earning_rules_are_rejected(scenario, errors, clock) -> None:
    program = await scenario.program()
    await create_rule(
        scenario, program, "dup", display_name="D", kind="EARNING_RULE_KIND_SKU", match="s"
    )

    code, reason, fields = await errors(
        create_rule(
            scenario,
            program,
            "promo",
            display_name="No end",
            kind="EARNING_RULE_KIND_PROMOTION",
            multiplier_percent=200,
            start_time=rfc3339(clock.now),
        )
    )
    assert (code, reason, fields) == (INVALID, "INVALID_FIELD", ["earning_rule.end_time"])
    code, _, fields = await errors(
        create_rule(
            scenario,
            program,
            "backwards",
            display_name="Ends before it starts",
            kind="EARNING_RULE_KIND_PROMOTION",
            start_time=rfc3339(clock.now),
            end_time=rfc3339(clock.now - timedelta(days=1)),
        )
    )
    assert code == INVALID and any(f.endswith("end_time") for f in fields)
    code, _, fields = await errors(
        create_rule(
            scenario, program, "nomatch", display_name="X", kind="EARNING_RULE_KIND_CATEGORY"
        )
    )
    assert (code, fields) == (INVALID, ["earning_rule.match"])
    code, _, fields = await errors(
        create_rule(scenario, program, "nokind", display_name="X", match="x")
    )
    assert (code, fields) == (INVALID, ["earning_rule.kind"])
    code, _, fields = await errors(
        create_rule(
            scenario,
            program,
            "huge",
            display_name="X",
            kind="EARNING_RULE_KIND_SKU",
            match="x",
            multiplier_percent=1_000_000,
        )
    )
    assert code == INVALID and any(f.endswith("multiplier_percent") for f in fields)
    code, _, fields = await errors(
        create_rule(
            scenario, program, "Bad_Id", display_name="X", kind="EARNING_RULE_KIND_SKU", match="x"
        )
    )
    assert (code, fields) == (INVALID, ["earning_rule_id"])
    code, reason, _ = await errors(
        create_rule(
            scenario, program, "dup", display_name="D2", kind="EARNING_RULE_KIND_SKU", match="t"
        )
    )
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "EARNING_RULE_EXISTS")
    code, reason, _ = await errors(
        create_rule(
            scenario,
            "no-such-program",
            "r",
            display_name="X",
            kind="EARNING_RULE_KIND_SKU",
            match="x",
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")
    code, reason, fields = await errors(
        scenario.client.programs.UpdateEarningRule(
            pp.UpdateEarningRuleRequest(
                request_id=uid("r"),
                earning_rule=pp.EarningRule(
                    name=f"programs/{program}/earningRules/dup", kind=pp.EARNING_RULE_KIND_CATEGORY
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["kind"]),
            )
        )
    )
    assert (code, reason, fields) == (INVALID, "INVALID_UPDATE_MASK", ["update_mask"])

    listed = await scenario.client.programs.ListEarningRules(
        pp.ListEarningRulesRequest(parent=f"programs/{program}")
    )
    assert [r.name for r in listed.earning_rules] == [f"programs/{program}/earningRules/dup"]
    assert listed.earning_rules[0].match == "s"
