"""Late and offline sales: the window they are accepted in, and the tier they earn at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps

OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE


async def expire(scenario: Any, program: str) -> ps.ExpirePointsResponse:
    return await scenario.client.points.ExpirePoints(
        ps.ExpirePointsRequest(program=f"programs/{program}")
    )


async def test_late_sales_inside_the_window_are_accepted_older_ones_are_not(
    scenario, clock, errors
) -> None:
    program = await scenario.program(late_purchase_window_days=7)
    member = await scenario.member(program)

    oldest = await scenario.purchase(member, 1_000, when=clock.now - timedelta(days=7))
    code, reason, _ = await errors(
        scenario.purchase(member, 1_000, when=clock.now - timedelta(days=7, seconds=1))
    )

    assert oldest.points_awarded == 10
    assert (code, reason) == (OUT_OF_RANGE, "PURCHASE_TOO_LATE")
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 10
    assert len(await scenario.ledger(member)) == 1


async def test_default_late_window_is_thirty_days(scenario, clock, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)

    await scenario.purchase(member, 1_000, when=clock.now - timedelta(days=30))
    code, reason, _ = await errors(
        scenario.purchase(member, 1_000, when=clock.now - timedelta(days=30, seconds=1))
    )

    assert (code, reason) == (OUT_OF_RANGE, "PURCHASE_TOO_LATE")
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 10


async def test_sales_more_than_five_minutes_ahead_are_in_the_future(
    scenario, clock, errors
) -> None:
    program = await scenario.program()
    member = await scenario.member(program)

    await scenario.purchase(member, 1_000, when=clock.now + timedelta(minutes=5))
    code, reason, _ = await errors(
        scenario.purchase(member, 1_000, when=clock.now + timedelta(minutes=5, seconds=1))
    )
    code_far, reason_far, _ = await errors(
        scenario.purchase(member, 1_000, when=clock.now + timedelta(days=400))
    )

    assert (code, reason) == (OUT_OF_RANGE, "PURCHASE_IN_FUTURE")
    assert (code_far, reason_far) == (OUT_OF_RANGE, "PURCHASE_IN_FUTURE")
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points + balance.pending_points == 10
    assert len(await scenario.ledger(member)) == 1


async def test_late_sale_earns_at_the_tier_held_when_it_happened(scenario, clock) -> None:
    program = await scenario.program(tier_policy={"window_months": 1})
    await scenario.tier(program, "gold", 10_000, multiplier=200)
    member = await scenario.member(program)
    t0 = clock.now
    upgrade = await scenario.purchase(member, 10_000)
    assert upgrade.tier_after.endswith("/tiers/gold")
    clock.advance(hours=1)

    before_gold = await scenario.purchase(member, 1_000, when=t0 - timedelta(days=2))
    as_gold = await scenario.purchase(member, 1_000)

    assert (before_gold.points_awarded, [c.rule for c in before_gold.breakdown]) == (10, ["base"])
    assert (as_gold.points_awarded, [c.rule for c in as_gold.breakdown]) == (
        20,
        ["base", "tier:gold"],
    )
    # The late sale does not change the tier either way.
    assert before_gold.tier_before == before_gold.tier_after == upgrade.tier_after

    # Downgraded at the review a month later; a sale from the last gold day, reported
    # after the downgrade, still earns at gold; one from after the downgrade does not.
    review = datetime(2026, 7, 15, 12, tzinfo=UTC)
    clock.now = review
    assert (await expire(scenario, program)).tier_changes == 1
    clock.advance(days=5)
    late_gold = await scenario.purchase(member, 1_000, when=review - timedelta(days=1))
    late_plain = await scenario.purchase(member, 1_000, when=review + timedelta(days=1))

    assert late_gold.tier_before == ""
    assert (late_gold.points_awarded, late_plain.points_awarded) == (20, 10)
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 100 + 10 + 20 + 20 + 10
    assert balance.tier == ""
