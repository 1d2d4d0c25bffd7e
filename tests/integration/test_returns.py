"""Returns through the real server: proportional reversal, claw-back and negative balances."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps

FAILED = grpc.StatusCode.FAILED_PRECONDITION


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(UTC).replace(tzinfo=None))
    return stamp


def return_request(
    scenario: Any,
    member: str,
    order_id: str,
    lines: list[tuple[int, int]] | None = None,
    *,
    return_id: str | None = None,
    request_id: str | None = None,
    when: datetime | None = None,
) -> ps.RecordReturnRequest:
    return ps.RecordReturnRequest(
        request_id=request_id or uid("r"),
        member=member,
        order_id=order_id,
        return_id=return_id or uid("ret"),
        return_time=ts(when or scenario.clock.now),
        lines=[ps.ReturnLine(line_index=i, quantity=q) for i, q in lines or []],
    )


def record_return(scenario: Any, member: str, order_id: str, *args: Any, **kwargs: Any) -> Any:
    return scenario.client.points.RecordReturn(
        return_request(scenario, member, order_id, *args, **kwargs)
    )


async def debit(scenario: Any, member: str, points: int) -> Any:
    return await scenario.client.points.AdjustPoints(
        ps.AdjustPointsRequest(
            request_id=uid("r"),
            member=member,
            points=-points,
            reason=ps.ADJUSTMENT_REASON_CORRECTION,
            actor="agent-1",
        )
    )


async def test_whole_return_reverses_everything_the_order_earned(scenario) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    await scenario.purchase(member, 4_000, order_id="keep")
    await scenario.purchase(member, 12_345, order_id="back")

    reply = await record_return(scenario, member, "back")

    assert reply.points_reversed == 123
    assert reply.shortfall_points == 0
    assert (reply.refund.amount_minor, reply.refund.currency_code) == (12_345, "EUR")
    assert reply.balance.available_points == 40
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance == reply.balance
    last = (await scenario.ledger(member))[-1]
    assert (last.kind, last.points, last.order_id) == (ps.LEDGER_ENTRY_KIND_REVERSE, -123, "back")


async def test_line_returns_in_steps_reverse_exactly_what_was_earned(scenario) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    # 7 x 1.50 = 10.50 (10.5 points) and 4.50 (4.5 points): 15 points in all, 11 and 4.
    bought = await scenario.purchase(
        member,
        1_500,
        order_id="o-1",
        lines=[("a", "toys", 7, 150), ("b", "toys", 1, 450)],
    )
    assert bought.points_awarded == 15

    steps = []
    for lines in ([(0, 2)], [(0, 2)], [(0, 3)], [(1, 1)]):
        reply = await record_return(scenario, member, "o-1", lines)
        steps.append((reply.points_reversed, reply.refund.amount_minor))
        await scenario.assert_balance_matches_ledger(member)

    assert [refund for _, refund in steps] == [300, 300, 450, 450]
    reversed_points = [points for points, _ in steps]
    assert sum(reversed_points) == 15
    # Proportional: every step is within a point of its share of the line's points.
    line_a = reversed_points[:3]
    assert sum(line_a) + reversed_points[3] == 15
    for points, quantity in zip(line_a, (2, 2, 3), strict=True):
        assert abs(points - sum(line_a) * quantity / 7) < 1
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 0
    assert balance.lifetime_earned_points == 15


async def test_order_level_bonus_is_reversed_with_the_refund(scenario, clock) -> None:
    from google.protobuf import json_format

    from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp

    program = await scenario.program()
    rule = pp.EarningRule()
    json_format.ParseDict(
        {
            "display_name": "Bonus",
            "kind": "EARNING_RULE_KIND_PROMOTION",
            "bonus_points": 9,
            "start_time": "2020-01-01T00:00:00Z",
            "end_time": "2099-01-01T00:00:00Z",
        },
        rule,
    )
    await scenario.client.programs.CreateEarningRule(
        pp.CreateEarningRuleRequest(
            request_id=uid("r"),
            parent=f"programs/{program}",
            earning_rule_id="bonus",
            earning_rule=rule,
        )
    )
    member = await scenario.member(program)
    bought = await scenario.purchase(
        member, 3_000, order_id="o", lines=[("a", "x", 1, 1_000), ("b", "x", 1, 2_000)]
    )
    assert bought.points_awarded == 39

    first = await record_return(scenario, member, "o", [(0, 1)])
    rest = await record_return(scenario, member, "o")

    assert first.points_reversed == 10 + 3  # line points and a third of the order bonus
    assert first.points_reversed + rest.points_reversed == 39
    assert rest.refund.amount_minor == 2_000
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 0


async def test_over_return_and_unknown_order_and_line_fail_and_write_nothing(
    scenario, errors
) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    other = await scenario.member(program)
    await scenario.purchase(member, 3_000, order_id="o", lines=[("a", "x", 3, 1_000)])
    await scenario.purchase(other, 1_000, order_id="theirs")
    await record_return(scenario, member, "o", [(0, 2)])
    ledger = await scenario.ledger(member)

    code, reason, _ = await errors(record_return(scenario, member, "o", [(0, 2)]))
    assert (code, reason) == (FAILED, "RETURN_EXCEEDS_PURCHASE")
    code, reason, _ = await errors(record_return(scenario, member, "o", [(0, 1), (0, 1)]))
    assert (code, reason) == (FAILED, "RETURN_EXCEEDS_PURCHASE")
    code, reason, _ = await errors(record_return(scenario, member, "nope"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    code, reason, _ = await errors(record_return(scenario, member, "theirs"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    code, reason, _ = await errors(record_return(scenario, member, "o", [(5, 1)]))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "LINE_NOT_FOUND")
    code, _, fields = await errors(record_return(scenario, member, "o", [(0, 0)]))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["lines[0].quantity"])
    code, reason, _ = await errors(
        record_return(scenario, member, "o", when=scenario.clock.now + timedelta(hours=1))
    )
    assert (code, reason) == (grpc.StatusCode.OUT_OF_RANGE, "RETURN_IN_FUTURE")

    assert await scenario.ledger(member) == ledger
    await record_return(scenario, member, "o")  # the last unit
    code, reason, _ = await errors(record_return(scenario, member, "o"))
    assert (code, reason) == (FAILED, "NOTHING_TO_RETURN")
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 0


async def test_return_id_is_recorded_once(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    await scenario.purchase(member, 4_000, order_id="o", lines=[("a", "x", 4, 1_000)])
    await scenario.purchase(member, 1_000, order_id="o2")
    request = return_request(scenario, member, "o", [(0, 1)], return_id="ret-1")

    first = await scenario.client.points.RecordReturn(request)
    retried = await scenario.client.points.RecordReturn(request)
    assert retried == first
    ledger = await scenario.ledger(member)

    # The same return id again under a new request id is a second report of one return,
    # whether it would fit the order or not.
    for lines, order in (([(0, 1)], "o"), ([(0, 4)], "o"), ([], "o"), ([], "o2")):
        code, reason, _ = await errors(
            record_return(scenario, member, order, lines, return_id="ret-1")
        )
        assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "RETURN_ALREADY_RECORDED")

    assert await scenario.ledger(member) == ledger
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 50 - 10


async def test_claw_back_stops_at_zero_and_reports_the_shortfall(scenario) -> None:
    program = await scenario.program(
        negative_balance_policy="NEGATIVE_BALANCE_POLICY_CLAW_BACK_TO_ZERO"
    )
    member = await scenario.member(program)
    await scenario.purchase(member, 10_000, order_id="o")
    await debit(scenario, member, 80)

    reply = await record_return(scenario, member, "o")

    assert (reply.points_reversed, reply.shortfall_points) == (20, 80)
    assert reply.balance.available_points == 0
    last = (await scenario.ledger(member))[-1]
    assert (last.kind, last.points, last.shortfall_points) == (
        ps.LEDGER_ENTRY_KIND_REVERSE,
        -20,
        80,
    )
    # The debt is forgiven: the next purchase is the member's in full.
    await scenario.purchase(member, 1_000)
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 10


async def test_default_policy_is_claw_back(scenario) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    await scenario.purchase(member, 5_000, order_id="o")
    await debit(scenario, member, 50)

    reply = await record_return(scenario, member, "o")

    assert (reply.points_reversed, reply.shortfall_points) == (0, 50)
    assert reply.balance.available_points == 0
    await scenario.assert_balance_matches_ledger(member)


async def test_allow_negative_goes_below_zero_and_later_earnings_pay_the_debt(
    scenario, errors
) -> None:
    program = await scenario.program(
        negative_balance_policy="NEGATIVE_BALANCE_POLICY_ALLOW_NEGATIVE"
    )
    member = await scenario.member(program)
    await scenario.purchase(member, 10_000, order_id="o")
    await debit(scenario, member, 80)

    reply = await record_return(scenario, member, "o")

    assert (reply.points_reversed, reply.shortfall_points) == (100, 0)
    assert reply.balance.available_points == -80
    await scenario.assert_balance_matches_ledger(member)
    code, reason, _ = await errors(debit(scenario, member, 1))
    assert (code, reason) == (FAILED, "INSUFFICIENT_POINTS")

    paid = await scenario.purchase(member, 5_000)
    assert paid.points_awarded == 50 and paid.balance.available_points == -30
    await scenario.assert_balance_matches_ledger(member)
    clear = await scenario.purchase(member, 5_000)
    assert clear.balance.available_points == 20
    # Only what is left after the debt can be spent.
    code, reason, _ = await errors(debit(scenario, member, 21))
    assert (code, reason) == (FAILED, "INSUFFICIENT_POINTS")
    await debit(scenario, member, 20)
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 0
    assert balance.lifetime_earned_points == 200


async def test_return_inside_the_pending_window_cancels_pending_points(scenario, clock) -> None:
    program = await scenario.program(pending_days=14)
    member = await scenario.member(program)
    await scenario.purchase(member, 10_000, order_id="o", lines=[("a", "x", 2, 5_000)])
    await scenario.purchase(member, 3_000, order_id="keep")
    clock.advance(days=3)

    half = await record_return(scenario, member, "o", [(0, 1)])
    assert half.points_reversed == 50
    assert (half.balance.available_points, half.balance.pending_points) == (0, 80)
    entry = (await scenario.ledger(member))[-1]
    assert (entry.kind, entry.points, entry.pending_points) == (
        ps.LEDGER_ENTRY_KIND_REVERSE,
        0,
        -50,
    )
    await scenario.assert_balance_matches_ledger(member)

    clock.advance(days=11)
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.pending_points) == (80, 0)
    rest = await record_return(scenario, member, "o")
    assert (rest.points_reversed, rest.shortfall_points) == (50, 0)
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.pending_points) == (30, 0)


async def test_return_lowers_qualifying_spend_but_not_the_tier_at_once(scenario) -> None:
    program = await scenario.program()
    await scenario.tier(program, "silver", 10_000)
    await scenario.tier(program, "gold", 50_000)
    member = await scenario.member(program)
    reply = await scenario.purchase(member, 12_000, order_id="o", lines=[("a", "x", 2, 6_000)])
    assert reply.tier_after.endswith("/tiers/silver")
    assert reply.balance.tier_progress.remaining == 38_000

    back = await record_return(scenario, member, "o", [(0, 1)])

    assert back.balance.tier.endswith("/tiers/silver")
    assert back.balance.tier_progress.remaining == 44_000
    await scenario.assert_balance_matches_ledger(member)


async def test_concurrent_returns_of_one_order_never_over_return(scenario, errors) -> None:
    import asyncio

    program = await scenario.program()
    member = await scenario.member(program)
    await scenario.purchase(member, 3_000, order_id="o", lines=[("a", "x", 3, 1_000)])

    results = await asyncio.gather(
        *(record_return(scenario, member, "o", [(0, 1)]) for _ in range(6)),
        return_exceptions=True,
    )

    ok = [r for r in results if isinstance(r, ps.RecordReturnResponse)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 3 and len(failed) == 3
    assert all(f.code() == FAILED for f in failed)
    assert sum(r.points_reversed for r in ok) == 30
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 0
