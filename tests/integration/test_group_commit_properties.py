"""Property: whatever mix of good and bad writes shares a batch, the ledger stays exact.

Each example starts a set of purchases (some in the wrong currency, some reusing an order
id another one records), credits and debits (some larger than the balance) and retries of
earlier requests, all at once, below the transport: they queue before their lane runs, so
they share one batch per lane. Which of two writes that compete (the same order id, a
debit and the credit it needs) wins depends on the batch's order; the property does not.
Afterwards every member's balance is the sum of its ledger and of exactly the writes that
succeeded, each once; a retry of a write that succeeded got its answer; a failed write
left nothing behind, so sending it again fails again rather than finding a stored
response.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loyalty_engine.api.servicers.members import MemberServicer
from loyalty_engine.api.servicers.points import PointsServicer
from loyalty_engine.api.servicers.programs import ProgramServicer
from loyalty_engine.bootstrap import build_app
from loyalty_engine.config import load_settings
from loyalty_engine.domain.errors import DomainError
from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as mp
from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps
from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp
from loyalty_engine.storage.migrate import upgrade
from tests.conftest import FakeClock, Scenario, uid
from tests.integration.buyers import call

MEMBERS = 3
_migrated: set[str] = set()


@dataclass(frozen=True)
class Buy:
    member: int
    amount: int  # minor units: 1 point per 1.00
    order: int  # a small range, so that two purchases may name the same order
    currency_ok: bool


@dataclass(frozen=True)
class Adjust:
    member: int
    points: int  # a debit is negative and may be more than the balance


@dataclass(frozen=True)
class Retry:
    of: int  # index of an earlier write to send again, same request id and payload


writes = st.lists(
    st.one_of(
        st.builds(
            Buy,
            st.integers(0, MEMBERS - 1),
            st.integers(100, 50_000),
            st.integers(0, 5),
            st.booleans() | st.just(True),
        ),
        st.builds(
            Adjust,
            st.integers(0, MEMBERS - 1),
            st.integers(-300, 300).filter(lambda p: p != 0),
        ),
        st.builds(Retry, st.integers(0, 40)),
    ),
    min_size=1,
    max_size=24,
)


async def _run(url: str, ops: list[Buy | Adjust | Retry]) -> None:
    clock = FakeClock()
    app = build_app(load_settings(database_url=url, db_pool_size=10, plaintext=True), clock=clock)
    try:
        if url not in _migrated:
            await upgrade(app.db)
            _migrated.add(url)
        await _check(app, clock, ops)
    finally:
        await app.close()


async def _check(app: Any, clock: FakeClock, ops: list[Buy | Adjust | Retry]) -> None:
    programs, members_api = ProgramServicer(app), MemberServicer(app)
    points = PointsServicer(app)
    program_id = uid("p")
    await call(
        ProgramServicer.CreateProgram,
        programs,
        pp.CreateProgramRequest(
            request_id=uid("r"),
            program_id=program_id,
            program=pp.Program(display_name="Batch", currency_code="EUR"),
        ),
    )
    members = []
    for _ in range(MEMBERS):
        reply = await call(
            MemberServicer.EnrollMember,
            members_api,
            mp.EnrollMemberRequest(
                request_id=uid("r"),
                parent=f"programs/{program_id}",
                member=mp.Member(external_id=uid("ext")),
            ),
        )
        members.append(reply.member.name)

    scenario = Scenario(client=None, clock=clock)  # type: ignore[arg-type]
    orders = [uid("o") for _ in range(6)]
    sent: list[tuple[Any, Any, int]] = []  # (method, request, member) per op, retries resolved
    for op in ops:
        if isinstance(op, Retry):
            if sent:
                sent.append(sent[op.of % len(sent)])
            continue
        if isinstance(op, Buy):
            request = scenario.purchase_request(
                members[op.member],
                op.amount,
                order_id=orders[op.order],
                currency="EUR" if op.currency_ok else "USD",
            )
            sent.append((PointsServicer.RecordPurchase, request, op.member))
        else:
            request = ps.AdjustPointsRequest(
                request_id=uid("r"),
                member=members[op.member],
                points=op.points,
                reason=ps.ADJUSTMENT_REASON_CORRECTION,
                actor="agent-1",
            )
            sent.append((PointsServicer.AdjustPoints, request, op.member))

    group = app.db.group_commit
    assert group is not None
    before = (group.stats.batches, group.stats.writes)
    results = await asyncio.gather(
        *(call(method, points, request) for method, request, _ in sent), return_exceptions=True
    )
    assert group.stats.writes - before[1] == len(sent)
    assert group.stats.batches - before[0] <= group.lanes  # they did share batches

    # Once a request succeeded, every retry of it got that same answer. (A failure stores
    # nothing, so a retry after a failure runs afresh: a debit refused for want of points
    # may pass once a purchase in the batch has credited them.)
    stored: dict[str, bytes] = {}
    for (_, request, _), result in zip(sent, results, strict=True):
        assert not isinstance(result, BaseException) or isinstance(result, DomainError), result
        if request.request_id in stored:
            assert not isinstance(result, DomainError), result
            assert result.SerializeToString(deterministic=True) == stored[request.request_id]
        elif not isinstance(result, DomainError):
            stored[request.request_id] = result.SerializeToString(deterministic=True)

    # The ledger holds exactly the writes that succeeded, each once.
    expected = [0] * MEMBERS
    earned: dict[int, set[str]] = {m: set() for m in range(MEMBERS)}
    counted: set[str] = set()
    for (method, request, member), result in zip(sent, results, strict=True):
        if isinstance(result, DomainError) or request.request_id in counted:
            continue
        counted.add(request.request_id)
        if method is PointsServicer.RecordPurchase:
            expected[member] += result.points_awarded
            earned[member].add(request.purchase.order_id)
        else:
            expected[member] += request.points
    stored_orders: list[str] = []
    for m, member in enumerate(members):
        balance = await scenario_balance(points, member)
        entries = await scenario_ledger(points, member)
        assert balance.available_points == sum(e.points for e in entries) == expected[m]
        purchases = [e.order_id for e in entries if e.kind == ps.LEDGER_ENTRY_KIND_EARN]
        assert sorted(purchases) == sorted(earned[m])
        stored_orders += purchases
    assert len(stored_orders) == len(set(stored_orders))  # an order id is awarded once

    # A failed write stored nothing: sent again, it is not answered from a stored response.
    for (method, request, _), result in zip(sent, results, strict=True):
        if (
            isinstance(result, DomainError)
            and result.reason != "INSUFFICIENT_POINTS"
            and request.request_id not in stored
        ):
            with pytest.raises(DomainError) as again:
                await call(method, points, request)
            assert again.value.reason == result.reason


async def scenario_balance(points: PointsServicer, member: str) -> Any:
    reply = await call(PointsServicer.GetBalance, points, ps.GetBalanceRequest(member=member))
    return reply.balance


async def scenario_ledger(points: PointsServicer, member: str) -> list[Any]:
    reply = await call(
        PointsServicer.ListLedgerEntries,
        points,
        ps.ListLedgerEntriesRequest(parent=member, page_size=500),
    )
    assert not reply.next_page_token
    return list(reply.ledger_entries)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=writes)
def test_any_mix_of_writes_in_a_batch_keeps_the_ledger_exact(database_url: str, ops: Any) -> None:
    asyncio.run(_run(database_url, ops))
