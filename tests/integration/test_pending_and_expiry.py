"""Pending points and expiry through the real server, with the fake clock moving time."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps

AFTER_EARNING_12 = {"mode": "EXPIRY_MODE_AFTER_EARNING", "months": 12}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def at(timestamp: Any) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


async def expire(scenario: Any, program: str) -> ps.ExpirePointsResponse:
    return await scenario.client.points.ExpirePoints(
        ps.ExpirePointsRequest(program=f"programs/{program}")
    )


async def adjust(scenario: Any, member: str, points: int) -> Any:
    return await scenario.client.points.AdjustPoints(
        ps.AdjustPointsRequest(
            request_id=uid("r"),
            member=member,
            points=points,
            reason=ps.ADJUSTMENT_REASON_GOODWILL if points > 0 else ps.ADJUSTMENT_REASON_CORRECTION,
            actor="agent-1",
        )
    )


def report(r: ps.ExpirePointsResponse) -> tuple[int, int, int, int]:
    return (r.members_changed, r.points_expired, r.points_released, r.tier_changes)


async def test_pending_points_become_available_after_the_hold(scenario, clock) -> None:
    program = await scenario.program(pending_days=14)
    member = await scenario.member(program)
    bought_at = clock.now

    reply = await scenario.purchase(member, 10_000)

    assert reply.points_awarded == 100 and reply.points_pending is True
    assert (reply.balance.available_points, reply.balance.pending_points) == (0, 100)
    [entry] = await scenario.ledger(member)
    assert (entry.kind, entry.points, entry.pending_points) == (
        ps.LEDGER_ENTRY_KIND_PENDING,
        0,
        100,
    )
    clock.advance(days=14, seconds=-1)
    held = await scenario.assert_balance_matches_ledger(member)
    assert (held.available_points, held.pending_points) == (0, 100)
    assert held.lifetime_earned_points == 100

    clock.advance(seconds=1)
    released = await scenario.assert_balance_matches_ledger(member)

    assert (released.available_points, released.pending_points) == (100, 0)
    last = (await scenario.ledger(member))[-1]
    assert (last.kind, last.points, last.pending_points) == (
        ps.LEDGER_ENTRY_KIND_RELEASE,
        100,
        -100,
    )
    assert at(last.occur_time) == bought_at + timedelta(days=14)
    # Reading again writes nothing more.
    await scenario.balance(member)
    assert len(await scenario.ledger(member)) == 2


async def test_expire_points_releases_pending_points_once(scenario, clock) -> None:
    program = await scenario.program(pending_days=7)
    first = await scenario.member(program)
    second = await scenario.member(program)
    await scenario.purchase(first, 10_000)
    await scenario.purchase(second, 5_000)
    clock.advance(days=3)
    await scenario.purchase(second, 2_000)  # held until day 10

    clock.advance(days=4)
    run = await expire(scenario, program)
    again = await expire(scenario, program)

    assert report(run) == (2, 0, 150, 0)
    assert report(again) == (0, 0, 0, 0)
    a = await scenario.assert_balance_matches_ledger(first)
    b = await scenario.assert_balance_matches_ledger(second)
    assert (a.available_points, a.pending_points) == (100, 0)
    assert (b.available_points, b.pending_points) == (50, 20)
    clock.advance(days=3)
    assert report(await expire(scenario, program)) == (1, 0, 20, 0)
    b = await scenario.assert_balance_matches_ledger(second)
    assert (b.available_points, b.pending_points) == (70, 0)


async def test_sale_reported_after_its_hold_is_available_at_once(scenario, clock) -> None:
    program = await scenario.program(pending_days=7, late_purchase_window_days=30)
    member = await scenario.member(program)

    reply = await scenario.purchase(member, 3_000, when=clock.now - timedelta(days=10))

    assert reply.points_pending is False
    assert (reply.balance.available_points, reply.balance.pending_points) == (30, 0)
    [entry] = await scenario.ledger(member)
    assert entry.kind == ps.LEDGER_ENTRY_KIND_EARN
    await scenario.assert_balance_matches_ledger(member)


async def test_sale_from_a_till_slightly_ahead_is_available_at_once(scenario, clock) -> None:
    # pending_days 0 means "at once", even when the till's clock runs a little ahead.
    program = await scenario.program()
    member = await scenario.member(program)

    reply = await scenario.purchase(member, 3_000, when=clock.now + timedelta(minutes=4))

    assert reply.points_pending is False
    assert (reply.balance.available_points, reply.balance.pending_points) == (30, 0)
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.pending_points) == (30, 0)
    assert [e.kind for e in await scenario.ledger(member)] == [ps.LEDGER_ENTRY_KIND_EARN]


async def test_points_expire_after_earning_oldest_lots_first(scenario, clock) -> None:
    program = await scenario.program(expiry_policy=AFTER_EARNING_12)
    member = await scenario.member(program)
    t0 = clock.now
    await scenario.purchase(member, 10_000)  # 100 points, expire t0 + 12 months
    clock.now = datetime(2026, 8, 15, 12, tzinfo=UTC)
    await scenario.purchase(member, 5_000)  # 50 points, expire 2027-08-15

    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.next_expiry_points, at(balance.next_expiry_time)) == (
        100,
        datetime(2027, 6, 15, 12, tzinfo=UTC),
    )
    assert t0 == datetime(2026, 6, 15, 12, tzinfo=UTC)
    # Spending takes the oldest points first: the first lot is used up, 30 of the second stay.
    await adjust(scenario, member, -120)
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.next_expiry_points, at(balance.next_expiry_time)) == (
        30,
        datetime(2027, 8, 15, 12, tzinfo=UTC),
    )

    clock.now = datetime(2027, 6, 16, tzinfo=UTC)
    assert report(await expire(scenario, program)) == (0, 0, 0, 0)
    clock.now = datetime(2027, 8, 15, 12, tzinfo=UTC) - timedelta(seconds=1)
    assert report(await expire(scenario, program)) == (0, 0, 0, 0)
    clock.now = datetime(2027, 8, 15, 12, tzinfo=UTC)
    assert report(await expire(scenario, program)) == (1, 30, 0, 0)

    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.expired_points) == (0, 30)
    assert balance.next_expiry_points == 0 and not balance.HasField("next_expiry_time")
    last = (await scenario.ledger(member))[-1]
    assert (last.kind, last.points) == (ps.LEDGER_ENTRY_KIND_EXPIRE, -30)
    assert at(last.occur_time) == datetime(2027, 8, 15, 12, tzinfo=UTC)
    assert report(await expire(scenario, program)) == (0, 0, 0, 0)


async def test_get_balance_applies_expiry_without_a_maintenance_run(scenario, clock) -> None:
    program = await scenario.program(
        expiry_policy={"mode": "EXPIRY_MODE_AFTER_EARNING", "months": 1}
    )
    member = await scenario.member(program)
    await scenario.purchase(member, 4_000)
    clock.advance(days=20)
    await scenario.purchase(member, 1_000)

    clock.now = datetime(2026, 7, 15, 12, tzinfo=UTC)
    balance = await scenario.assert_balance_matches_ledger(member)

    assert (balance.available_points, balance.expired_points) == (10, 40)
    assert balance.next_expiry_points == 10
    assert at(balance.next_expiry_time) == datetime(2026, 8, 5, 12, tzinfo=UTC)
    # The maintenance run finds nothing left to do.
    assert report(await expire(scenario, program)) == (0, 0, 0, 0)


async def test_points_expire_after_inactivity(scenario, clock) -> None:
    program = await scenario.program(
        expiry_policy={"mode": "EXPIRY_MODE_AFTER_INACTIVITY", "months": 6}
    )
    member = await scenario.member(program)
    await scenario.purchase(member, 10_000)  # 2026-06-15
    balance = await scenario.balance(member)
    assert (balance.next_expiry_points, at(balance.next_expiry_time)) == (
        100,
        datetime(2026, 12, 15, 12, tzinfo=UTC),
    )

    clock.now = datetime(2026, 11, 15, 12, tzinfo=UTC)
    await scenario.purchase(member, 5_000)  # activity: the clock restarts
    clock.advance(days=1)
    await adjust(scenario, member, -10)  # a debit is not the member's activity
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.next_expiry_points, at(balance.next_expiry_time)) == (
        140,
        datetime(2027, 5, 15, 12, tzinfo=UTC),
    )

    clock.now = datetime(2027, 5, 15, 12, tzinfo=UTC) - timedelta(seconds=1)
    assert report(await expire(scenario, program)) == (0, 0, 0, 0)
    clock.now = datetime(2027, 5, 20, tzinfo=UTC)
    assert report(await expire(scenario, program)) == (1, 140, 0, 0)
    assert report(await expire(scenario, program)) == (0, 0, 0, 0)

    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.expired_points) == (0, 140)
    expiries = [e for e in await scenario.ledger(member) if e.kind == ps.LEDGER_ENTRY_KIND_EXPIRE]
    assert sum(e.points for e in expiries) == -140
    assert {at(e.occur_time) for e in expiries} == {datetime(2027, 5, 15, 12, tzinfo=UTC)}
    # A goodwill credit is activity: it does not expire at the next run.
    await adjust(scenario, member, 5)
    assert report(await expire(scenario, program)) == (0, 0, 0, 0)
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 5


async def test_concurrent_expiry_runs_expire_what_is_due_exactly_once(scenario, clock) -> None:
    program = await scenario.program(
        pending_days=3, expiry_policy={"mode": "EXPIRY_MODE_AFTER_EARNING", "months": 1}
    )
    members = [await scenario.member(program) for _ in range(6)]
    due = 0
    for i, member in enumerate(members):
        for amount in (1_000 * (i + 1), 700):
            due += (await scenario.purchase(member, amount)).points_awarded
    clock.advance(days=20)
    fresh = await scenario.member(program)
    await scenario.purchase(fresh, 9_900)  # released by the run, expires later
    clock.now = datetime(2026, 7, 15, 12, tzinfo=UTC)

    runs = await asyncio.gather(expire(scenario, program), expire(scenario, program))

    assert sum(r.points_expired for r in runs) == due
    assert sum(r.points_released for r in runs) == due + 99
    assert sum(r.members_changed for r in runs) == 7
    assert report(await expire(scenario, program)) == (0, 0, 0, 0)
    for member in members:
        balance = await scenario.assert_balance_matches_ledger(member)
        assert (balance.available_points, balance.pending_points) == (0, 0)
        kinds = [e.kind for e in await scenario.ledger(member)]
        assert kinds.count(ps.LEDGER_ENTRY_KIND_EXPIRE) == 2
        assert kinds.count(ps.LEDGER_ENTRY_KIND_RELEASE) == 2
    balance = await scenario.assert_balance_matches_ledger(fresh)
    assert (balance.available_points, balance.expired_points) == (99, 0)


async def test_expire_points_names_the_program(scenario, errors) -> None:
    code, reason, _ = await errors(expire(scenario, "no-such-program"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")
    code, reason, fields = await errors(
        scenario.client.points.ExpirePoints(ps.ExpirePointsRequest(program="programs/"))
    )
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME", ["program"])


async def test_inactivity_expiry_at_a_month_end_is_found_by_the_maintenance_run(
    scenario, clock
) -> None:
    # Active on Aug 31: six months later is Feb 28 (clamped), and the run that day must
    # expire the points, as reading the balance would.
    program = await scenario.program(
        expiry_policy={"mode": "EXPIRY_MODE_AFTER_INACTIVITY", "months": 6}
    )
    member = await scenario.member(program)
    clock.now = datetime(2026, 8, 31, 12, tzinfo=UTC)
    await scenario.purchase(member, 10_000)

    clock.now = datetime(2027, 2, 28, 12, tzinfo=UTC) - timedelta(seconds=1)
    assert report(await expire(scenario, program)) == (0, 0, 0, 0)
    clock.now = datetime(2027, 2, 28, 12, tzinfo=UTC)
    assert report(await expire(scenario, program)) == (1, 100, 0, 0)

    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.expired_points) == (0, 100)
