"""Group commit: concurrent writes share a transaction, and each one's failure stays its own.

The writes are started together with `asyncio.gather` on the servicer itself (below the
gRPC transport), so that they are all queued before their lane runs: they then form one
batch, which the tests check through the lane's counters.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty_engine.api.servicers.points import PointsServicer
from loyalty_engine.domain.errors import AlreadyExists, InvalidArgument, NotFound
from loyalty_engine.storage.group_commit import RUN_ALONE, GroupCommit
from tests.conftest import uid


def purchase(servicer: PointsServicer, request: Any) -> Any:
    """The servicer's RecordPurchase without the transport (no context, no auth)."""
    return PointsServicer.RecordPurchase.__wrapped__(servicer, request, None)  # type: ignore[attr-defined]


def lanes(app: Any) -> GroupCommit:
    group = app.db.group_commit
    assert group is not None, "group commit is on by default"
    return group


async def test_one_bad_write_in_a_batch_fails_alone_and_the_others_commit(app, scenario) -> None:
    program = await scenario.program()
    members = [await scenario.member(program) for _ in range(4)]
    servicer = PointsServicer(app)
    group = lanes(app)
    before = (group.stats.batches, group.stats.writes)
    good = [scenario.purchase_request(m, 1_000 * (i + 1)) for i, m in enumerate(members)]
    wrong_currency = scenario.purchase_request(members[0], 500, currency="USD")
    unknown_member = scenario.purchase_request(f"programs/{program}/members/{uid('m')}", 700)
    # The same order again under another request id: queued after the first, and on the same
    # member, so in the same lane and after it (a batch keeps arrival order per member).
    same_order = scenario.purchase_request(members[0], 900, order_id=good[0].purchase.order_id)
    requests = [*good, wrong_currency, unknown_member, same_order]

    results = await asyncio.gather(
        *(purchase(servicer, r) for r in requests), return_exceptions=True
    )

    # One batch carried all seven, on one lane or both.
    batches, writes = group.stats.batches - before[0], group.stats.writes - before[1]
    assert writes == len(requests)
    assert batches <= group.lanes
    for i, reply in enumerate(results[:4]):
        assert not isinstance(reply, BaseException), reply
        assert reply.points_awarded == 10 * (i + 1)
    assert isinstance(results[4], InvalidArgument)
    assert isinstance(results[5], NotFound)
    assert isinstance(results[6], AlreadyExists)
    assert results[6].reason == "ORDER_ALREADY_RECORDED"

    # The good writes are durable and counted once; the bad ones left nothing behind.
    for i, member in enumerate(members):
        balance = await scenario.assert_balance_matches_ledger(member)
        assert balance.available_points == 10 * (i + 1)
        assert len(await scenario.ledger(member)) == 1
    # Their request ids were not stored: fixed and sent again with the same ids, they run.
    wrong_currency.purchase.total.currency_code = "EUR"
    fixed = await scenario.client.points.RecordPurchase(wrong_currency)
    assert fixed.points_awarded == 5
    same_order.purchase.order_id = uid("o")
    assert (await scenario.client.points.RecordPurchase(same_order)).points_awarded == 9
    assert (await scenario.assert_balance_matches_ledger(members[0])).available_points == 24


async def test_a_retry_inside_the_same_batch_gets_the_first_response(app, scenario) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    servicer = PointsServicer(app)
    request = scenario.purchase_request(member, 2_500)
    replies = await asyncio.gather(*(purchase(servicer, request) for _ in range(5)))
    assert {r.SerializeToString(deterministic=True) for r in replies} == {
        replies[0].SerializeToString(deterministic=True)
    }
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 25
    assert len(await scenario.ledger(member)) == 1


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_write_stuck_on_a_lock_holds_its_batch_only_until_lock_timeout(
    app, scenario
) -> None:
    program = await scenario.program()
    stuck, free = await scenario.member(program), await scenario.member(program)
    stuck_id = stuck.rsplit("/", 1)[1]
    servicer = PointsServicer(app)
    group = lanes(app)
    alone_before = group.stats.run_alone
    async with app.db.engine.connect() as holder:
        await holder.execute(
            sa.text(
                "SELECT 1 FROM member_accounts WHERE program_id = :p AND member_id = :m FOR UPDATE"
            ),
            {"p": program, "m": stuck_id},
        )
        both = [
            asyncio.ensure_future(purchase(servicer, scenario.purchase_request(m, 1_000)))
            for m in (stuck, free)
        ]
        # The free member's write commits while the other member is still locked: its batch
        # gave up on the stuck write after lock_timeout and let it run on its own.
        free_reply = await asyncio.wait_for(both[1], timeout=30)
        assert free_reply.points_awarded == 10
        # Well past lock_timeout, the stuck write waits on its own, in a transaction of its own.
        await asyncio.sleep(5 * group.lock_timeout_ms / 1000)
        assert not both[0].done()
        assert group.stats.run_alone == alone_before + 1
        await holder.rollback()
    stuck_reply = await asyncio.wait_for(both[0], timeout=30)
    assert stuck_reply.points_awarded == 10
    assert group.stats.run_alone == alone_before + 1
    for member in (stuck, free):
        assert (await scenario.assert_balance_matches_ledger(member)).available_points == 10


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_batch_whose_connection_dies_runs_every_write_alone_once(
    app, scenario, caplog
) -> None:
    program = await scenario.program()
    members = [await scenario.member(program) for _ in range(3)]
    servicer = PointsServicer(app)
    group = lanes(app)

    async def kill_own_connection(uow: Any) -> None:
        await uow.connection.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))

    alone_before = group.stats.run_alone
    results = await asyncio.gather(
        *(purchase(servicer, scenario.purchase_request(m, 3_000)) for m in members),
        # Sorted last in every lane ("~" after the program ids): the others ran before it.
        *(group.run(("~", str(lane)), kill_own_connection) for lane in range(8)),
        return_exceptions=True,
    )
    assert all(r is RUN_ALONE for r in results[3:]), results[3:]
    assert group.stats.run_alone >= alone_before + 3 + 8
    # Both lanes' batches failed, and the log said so once (an outage fails every batch).
    assert group.stats.failed_batches == 2
    warnings = [r for r in caplog.records if "group commit: a batch" in r.getMessage()]
    assert len(warnings) == 1
    for reply in results[:3]:
        assert not isinstance(reply, BaseException), reply
        assert reply.points_awarded == 30
    for member in members:
        assert (await scenario.assert_balance_matches_ledger(member)).available_points == 30
        assert len(await scenario.ledger(member)) == 1


async def test_a_caller_that_gives_up_before_its_write_starts_writes_nothing(app) -> None:
    group = lanes(app)
    entered, gate, ran = asyncio.Event(), asyncio.Event(), []

    async def slow(uow: Any) -> str:
        entered.set()
        await gate.wait()
        ran.append("slow")
        return "slow"

    async def never(uow: Any) -> str:
        ran.append("never")
        return "never"

    skipped = group.stats.skipped
    first = asyncio.ensure_future(group.run(("same",), slow))  # one key: one lane
    await entered.wait()  # the lane is in the first batch, held at the gate
    second = asyncio.ensure_future(group.run(("same",), never))
    await asyncio.sleep(0.01)
    second.cancel()
    gate.set()
    assert await first == "slow"
    with pytest.raises(asyncio.CancelledError):
        await second
    for _ in range(200):
        if group.stats.skipped > skipped:
            break
        await asyncio.sleep(0.01)
    assert group.stats.skipped == skipped + 1
    assert ran == ["slow"]


async def test_a_caller_that_gives_up_after_its_write_started_gets_its_outcome(app) -> None:
    group = lanes(app)
    started, gate = asyncio.Event(), asyncio.Event()

    async def write(uow: Any) -> str:
        started.set()
        await gate.wait()
        return "committed"

    call = asyncio.ensure_future(group.run(("k",), write))
    await started.wait()
    call.cancel()  # the deadline passes while the write runs in its batch
    await asyncio.sleep(0.01)
    gate.set()
    # Not CANCELLED ("nothing was written"): the write committed, and the caller says so.
    assert await call == "committed"
