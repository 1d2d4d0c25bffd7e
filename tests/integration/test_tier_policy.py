"""Tiers through the real server: qualifying, upgrades at once, downgrades only at review."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as mp
from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps
from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp

T0 = datetime(2026, 6, 15, 12, tzinfo=UTC)  # the FakeClock's start


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def at(timestamp: Any) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def tier_name(program: str, tier: str) -> str:
    return f"programs/{program}/tiers/{tier}" if tier else ""


async def expire(scenario: Any, program: str) -> ps.ExpirePointsResponse:
    return await scenario.client.points.ExpirePoints(
        ps.ExpirePointsRequest(program=f"programs/{program}")
    )


async def tier_changes(scenario: Any, member: str) -> list[tuple[str, str, str, datetime]]:
    """The member's tier history, newest first, as (before, after, reason, time)."""
    reply = await scenario.client.points.ListTierChanges(ps.ListTierChangesRequest(parent=member))
    return [
        (
            c.tier_before.rsplit("/", 1)[-1],
            c.tier_after.rsplit("/", 1)[-1],
            c.reason,
            at(c.change_time),
        )
        for c in reply.tier_changes
    ]


async def member_tier(scenario: Any, member: str) -> str:
    reply = await scenario.client.members.GetMember(mp.GetMemberRequest(name=member))
    return reply.member.tier.rsplit("/", 1)[-1] if reply.member.tier else ""


async def test_upgrade_happens_at_the_purchase_that_qualifies(scenario, clock) -> None:
    program = await scenario.program()
    await scenario.tier(program, "silver", 10_000)
    await scenario.tier(program, "gold", 50_000)
    member = await scenario.member(program)

    first = await scenario.purchase(member, 6_000)
    assert (first.tier_before, first.tier_after) == ("", "")
    progress = first.balance.tier_progress
    assert (progress.next_tier, progress.remaining, progress.window_months) == (
        tier_name(program, "silver"),
        4_000,
        12,
    )
    assert progress.description == "Spend 40.00 EUR more in the next 12 months to reach Silver."

    clock.advance(hours=1)
    second = await scenario.purchase(member, 4_000)

    assert (second.tier_before, second.tier_after) == ("", tier_name(program, "silver"))
    assert second.balance.tier == tier_name(program, "silver")
    assert await member_tier(scenario, member) == "silver"
    assert await tier_changes(scenario, member) == [("", "silver", "UPGRADE", clock.now)]
    # Straight past silver to gold in one purchase from another member.
    other = await scenario.member(program)
    jump = await scenario.purchase(other, 60_000)
    assert (jump.tier_before, jump.tier_after) == ("", tier_name(program, "gold"))
    assert not jump.balance.HasField("tier_progress")  # the top tier
    await scenario.assert_balance_matches_ledger(member)
    await scenario.assert_balance_matches_ledger(other)


async def test_get_balance_reports_every_counter_and_the_tier_progress(scenario, clock) -> None:
    program = await scenario.program(
        pending_days=7, expiry_policy={"mode": "EXPIRY_MODE_AFTER_EARNING", "months": 12}
    )
    await scenario.tier(program, "silver", 10_000)
    await scenario.tier(program, "gold", 20_000)
    member = await scenario.member(program)
    await scenario.purchase(member, 10_000)
    clock.advance(days=8)
    await scenario.purchase(member, 6_000)

    balance = await scenario.assert_balance_matches_ledger(member)

    assert balance.member == member
    assert (balance.available_points, balance.pending_points) == (100, 60)
    assert (balance.lifetime_earned_points, balance.redeemed_points) == (160, 0)
    assert (balance.expired_points, balance.reserved_points) == (0, 0)
    assert (balance.next_expiry_points, at(balance.next_expiry_time)) == (
        100,
        datetime(2027, 6, 15, 12, tzinfo=UTC),
    )
    assert balance.tier == tier_name(program, "silver")
    assert balance.tier_progress.next_tier == tier_name(program, "gold")
    assert balance.tier_progress.remaining == 4_000
    assert (
        balance.tier_progress.description
        == "Spend 40.00 EUR more in the next 12 months to reach Gold."
    )


async def test_points_metric_counts_points_earned_in_the_window(scenario) -> None:
    program = await scenario.program(
        tier_policy={"metric": "QUALIFYING_METRIC_POINTS", "window_months": 6}
    )
    await scenario.tier(program, "bronze", 50)
    await scenario.tier(program, "silver", 200)
    member = await scenario.member(program)

    reply = await scenario.purchase(member, 6_000)

    assert reply.tier_after == tier_name(program, "bronze")
    progress = reply.balance.tier_progress
    assert (progress.remaining, progress.window_months) == (140, 6)
    assert progress.description == "Earn 140 more points in the next 6 months to reach Silver."
    await scenario.assert_balance_matches_ledger(member)


async def test_downgrade_waits_for_the_review_date_plus_grace_one_step_at_a_time(
    scenario, clock
) -> None:
    program = await scenario.program(
        tier_policy={"grace_days": 10, "downgrade_mode": "DOWNGRADE_MODE_ONE_STEP"}
    )
    await scenario.tier(program, "silver", 10_000)
    await scenario.tier(program, "gold", 50_000)
    member = await scenario.member(program)
    await scenario.purchase(member, 50_000)  # gold at T0; review at T0 + 12 months
    review = datetime(2027, 6, 15, 12, tzinfo=UTC)

    for when in (review - timedelta(seconds=1), review, review + timedelta(days=10, seconds=-1)):
        clock.now = when
        assert (await expire(scenario, program)).tier_changes == 0
        assert await member_tier(scenario, member) == "gold"

    clock.now = review + timedelta(days=10)
    run = await expire(scenario, program)
    again = await expire(scenario, program)

    assert (run.tier_changes, run.members_changed) == (1, 1)
    assert (again.tier_changes, again.members_changed) == (0, 0)
    assert await member_tier(scenario, member) == "silver"  # one step, though nothing was spent
    # The next review is a window after the first one, again with grace.
    clock.now = datetime(2028, 6, 25, 12, tzinfo=UTC) - timedelta(seconds=1)
    assert (await expire(scenario, program)).tier_changes == 0
    clock.now = datetime(2028, 6, 25, 12, tzinfo=UTC)
    assert (await scenario.balance(member)).tier == ""  # reading the balance reviews too
    assert await tier_changes(scenario, member) == [
        ("silver", "", "DOWNGRADE", datetime(2028, 6, 25, 12, tzinfo=UTC)),
        ("gold", "silver", "DOWNGRADE", review + timedelta(days=10)),
        ("", "gold", "UPGRADE", T0),
    ]
    await scenario.assert_balance_matches_ledger(member)


async def test_downgrade_modes_one_step_versus_to_qualifying(scenario, clock) -> None:
    results = {}
    for mode in ("DOWNGRADE_MODE_ONE_STEP", "DOWNGRADE_MODE_TO_QUALIFYING"):
        clock.now = T0
        program = await scenario.program(tier_policy={"downgrade_mode": mode})
        await scenario.tier(program, "bronze", 1_000)
        await scenario.tier(program, "silver", 10_000)
        await scenario.tier(program, "gold", 50_000)
        member = await scenario.member(program)
        await scenario.purchase(member, 50_000)
        clock.now = datetime(2026, 12, 15, tzinfo=UTC)
        await scenario.purchase(member, 1_500)  # enough for bronze only
        clock.now = datetime(2027, 6, 15, 12, tzinfo=UTC)
        assert (await expire(scenario, program)).tier_changes == 1
        results[mode] = await member_tier(scenario, member)
        await scenario.assert_balance_matches_ledger(member)

    assert results == {
        "DOWNGRADE_MODE_ONE_STEP": "silver",
        "DOWNGRADE_MODE_TO_QUALIFYING": "bronze",
    }


async def test_member_who_still_qualifies_keeps_the_tier_for_another_window(
    scenario, clock
) -> None:
    program = await scenario.program()
    await scenario.tier(program, "silver", 10_000)
    member = await scenario.member(program)
    await scenario.purchase(member, 10_000)
    clock.now = datetime(2027, 5, 15, tzinfo=UTC)
    kept = await scenario.purchase(member, 10_000)
    assert (kept.tier_before, kept.tier_after) == (tier_name(program, "silver"),) * 2

    clock.now = datetime(2027, 6, 15, 12, tzinfo=UTC)
    retained = await expire(scenario, program)
    # A review that keeps the tier only moves its date: no tier change, no member changed.
    assert (retained.tier_changes, retained.members_changed) == (0, 0)
    assert await member_tier(scenario, member) == "silver"
    assert len(await tier_changes(scenario, member)) == 1

    clock.now = datetime(2028, 6, 15, 12, tzinfo=UTC) - timedelta(seconds=1)
    assert (await expire(scenario, program)).tier_changes == 0
    clock.now = datetime(2028, 6, 15, 12, tzinfo=UTC)
    assert (await expire(scenario, program)).tier_changes == 1
    assert await member_tier(scenario, member) == ""
    await scenario.assert_balance_matches_ledger(member)


async def test_tier_changes_page_newest_first(scenario, clock, errors) -> None:
    program = await scenario.program(tier_policy={"window_months": 1})
    await scenario.tier(program, "silver", 1_000)
    member = await scenario.member(program)
    for month in range(3):
        clock.now = datetime(2026, 7 + month, 1, tzinfo=UTC)
        await scenario.purchase(member, 1_000)  # upgrade
        clock.now = datetime(2026, 8 + month, 1, tzinfo=UTC)
        await expire(scenario, program)  # and the downgrade a month later
    changes = []
    token = ""
    while True:
        page = await scenario.client.points.ListTierChanges(
            ps.ListTierChangesRequest(parent=member, page_size=4, page_token=token)
        )
        changes.extend(page.tier_changes)
        token = page.next_page_token
        if not token:
            break

    assert [c.reason for c in changes] == ["DOWNGRADE", "UPGRADE"] * 3
    times = [at(c.change_time) for c in changes]
    assert times == sorted(times, reverse=True)
    code, reason, _ = await errors(
        scenario.client.points.ListTierChanges(
            ps.ListTierChangesRequest(parent=member, page_token="bogus")
        )
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    await scenario.assert_balance_matches_ledger(member)


async def test_tiers_are_ordered_by_threshold_and_validated(scenario, errors) -> None:
    program = await scenario.program()
    await scenario.tier(program, "gold", 50_000, multiplier=200)
    await scenario.tier(program, "silver", 10_000, multiplier=150)

    listed = await scenario.client.programs.ListTiers(
        pp.ListTiersRequest(parent=f"programs/{program}")
    )
    assert [(t.name, t.threshold, t.multiplier_percent) for t in listed.tiers] == [
        (tier_name(program, "silver"), 10_000, 150),
        (tier_name(program, "gold"), 50_000, 200),
    ]
    code, reason, _ = await errors(scenario.tier(program, "platinum", 10_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, reason, _ = await errors(scenario.tier(program, "gold", 90_000))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "TIER_EXISTS")
    code, reason, _ = await errors(scenario.tier("no-such-program", "gold", 1))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")

    member = await scenario.member(program)
    await scenario.purchase(member, 10_000)
    code, reason, _ = await errors(
        scenario.client.programs.DeleteTier(
            pp.DeleteTierRequest(request_id=uid("r"), name=tier_name(program, "silver"))
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TIER_IN_USE")
    await scenario.client.programs.DeleteTier(
        pp.DeleteTierRequest(request_id=uid("r"), name=tier_name(program, "gold"))
    )
    listed = await scenario.client.programs.ListTiers(
        pp.ListTiersRequest(parent=f"programs/{program}")
    )
    assert [t.name for t in listed.tiers] == [tier_name(program, "silver")]
    await scenario.assert_balance_matches_ledger(member)
