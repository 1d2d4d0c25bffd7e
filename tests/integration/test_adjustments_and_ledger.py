"""Manual adjustments and the ledger's history through the real server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps

INVALID = grpc.StatusCode.INVALID_ARGUMENT
K = ps.LedgerEntryKind


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(UTC).replace(tzinfo=None))
    return stamp


def adjust_request(member: str, points: int, **fields: Any) -> ps.AdjustPointsRequest:
    values: dict[str, Any] = {
        "request_id": uid("r"),
        "member": member,
        "points": points,
        "reason": ps.ADJUSTMENT_REASON_GOODWILL,
        "actor": "agent-7",
    }
    values.update(fields)
    return ps.AdjustPointsRequest(**values)


def adjust(scenario: Any, member: str, points: int, **fields: Any) -> Any:
    return scenario.client.points.AdjustPoints(adjust_request(member, points, **fields))


def list_entries(scenario: Any, member: str, **fields: Any) -> Any:
    return scenario.client.points.ListLedgerEntries(
        ps.ListLedgerEntriesRequest(parent=member, **fields)
    )


async def test_credit_and_debit_carry_reason_and_actor(scenario) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    await scenario.purchase(member, 10_000)

    credit = await adjust(scenario, member, 50, note="parcel arrived late")
    recovery = await adjust(
        scenario, member, 25, reason=ps.ADJUSTMENT_REASON_SERVICE_RECOVERY, actor="agent-8"
    )
    debit = await adjust(scenario, member, -40, reason=ps.ADJUSTMENT_REASON_CORRECTION)

    assert credit.balance.available_points == 150
    assert recovery.balance.available_points == 175
    assert debit.balance.available_points == 135
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 135
    assert balance.lifetime_earned_points == 100  # credits are not earnings
    entries = (await scenario.ledger(member))[1:]
    assert [(e.kind, e.points, e.actor) for e in entries] == [
        (K.LEDGER_ENTRY_KIND_ADJUST, 50, "agent-7"),
        (K.LEDGER_ENTRY_KIND_ADJUST, 25, "agent-8"),
        (K.LEDGER_ENTRY_KIND_ADJUST, -40, "agent-7"),
    ]
    assert entries[0].reason.startswith("GOODWILL") and "parcel arrived late" in entries[0].reason
    assert entries[1].reason.startswith("SERVICE_RECOVERY")
    assert entries[2].reason.startswith("CORRECTION")


async def test_debit_beyond_the_balance_fails_and_writes_nothing(scenario, errors) -> None:
    program = await scenario.program(pending_days=10)
    member = await scenario.member(program)
    await adjust(scenario, member, 30)
    await scenario.purchase(member, 10_000)  # 100 pending points cannot be spent yet
    ledger = await scenario.ledger(member)

    code, reason, _ = await errors(adjust(scenario, member, -31))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS")

    assert await scenario.ledger(member) == ledger
    await adjust(scenario, member, -30)
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.pending_points) == (0, 100)


async def test_adjustments_need_reason_actor_and_sane_points(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    await adjust(scenario, member, 10)
    ledger = await scenario.ledger(member)

    cases = [
        ({"reason": ps.ADJUSTMENT_REASON_UNSPECIFIED}, 5, ["reason"]),
        ({"reason": 42}, 5, ["reason"]),
        ({"actor": ""}, 5, ["actor"]),
        ({"actor": "   "}, 5, ["actor"]),
        ({"actor": "a" * 201}, 5, ["actor"]),
        ({"note": "n" * 1_000}, 5, ["note"]),
        ({}, 0, ["points"]),
        ({}, 10**13, ["points"]),
        ({}, -(10**13), ["points"]),
    ]
    for fields, points, expected in cases:
        code, _, got = await errors(adjust(scenario, member, points, **fields))
        assert (code, got) == (INVALID, expected), fields
    code, _, got = await errors(adjust(scenario, member, 0, actor=""))
    assert code == INVALID and set(got) == {"actor", "points"}

    assert await scenario.ledger(member) == ledger
    await scenario.assert_balance_matches_ledger(member)
    code, reason, _ = await errors(adjust(scenario, f"programs/{program}/members/ghost", 5))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    code, reason, fields = await errors(adjust(scenario, "ghost", 5))
    assert (code, reason, fields) == (INVALID, "INVALID_NAME", ["member"])


async def test_adjustment_is_exactly_once_per_request_id(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    request = adjust_request(member, 15)

    first = await scenario.client.points.AdjustPoints(request)
    second = await scenario.client.points.AdjustPoints(request)

    assert first == second
    assert len(await scenario.ledger(member)) == 1
    changed = ps.AdjustPointsRequest()
    changed.CopyFrom(request)
    changed.points = 16
    code, reason, _ = await errors(scenario.client.points.AdjustPoints(changed))
    assert (code, reason) == (INVALID, "REQUEST_ID_REUSED")
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 15


async def test_history_is_never_edited_only_appended(scenario, clock) -> None:
    program = await scenario.program(
        pending_days=5,
        expiry_policy={"mode": "EXPIRY_MODE_AFTER_EARNING", "months": 1},
    )
    member = await scenario.member(program)
    steps = [
        lambda: scenario.purchase(member, 10_000, order_id="o1"),
        lambda: adjust(scenario, member, 20),
        lambda: clock.advance(days=6),
        lambda: scenario.client.points.RecordReturn(
            ps.RecordReturnRequest(
                request_id=uid("r"),
                member=member,
                order_id="o1",
                return_id="ret",
                return_time=ts(clock.now),
            )
        ),
        lambda: scenario.purchase(member, 3_000),
        lambda: adjust(scenario, member, -5, reason=ps.ADJUSTMENT_REASON_CORRECTION),
        lambda: clock.advance(days=40),
    ]
    history: list[Any] = []
    for step in steps:
        result = step()
        if hasattr(result, "__await__"):
            await result
        entries = await scenario.ledger(member)
        assert entries[: len(history)] == history
        assert len(entries) >= len(history)
        history = entries
        await scenario.assert_balance_matches_ledger(member)
    entries = await scenario.ledger(member)
    assert entries[: len(history)] == history
    history = entries

    assert [e.kind for e in history] == [
        K.LEDGER_ENTRY_KIND_PENDING,
        K.LEDGER_ENTRY_KIND_ADJUST,
        K.LEDGER_ENTRY_KIND_RELEASE,
        K.LEDGER_ENTRY_KIND_REVERSE,
        K.LEDGER_ENTRY_KIND_PENDING,
        K.LEDGER_ENTRY_KIND_ADJUST,
        K.LEDGER_ENTRY_KIND_RELEASE,
        K.LEDGER_ENTRY_KIND_EXPIRE,
        K.LEDGER_ENTRY_KIND_EXPIRE,
    ]
    names = [e.name for e in history]
    assert len(set(names)) == len(names)
    assert all(n.startswith(f"{member}/ledgerEntries/") for n in names)
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 0


async def test_ledger_pages_newest_first_and_filters_by_kind_and_time(scenario, clock) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    t0 = clock.now
    for day in range(7):
        clock.now = t0 + timedelta(days=day)
        if day % 2:
            await adjust(scenario, member, day)
        else:
            await scenario.purchase(member, 1_000 * (day + 1))

    pages = []
    token = ""
    while True:
        page = await list_entries(scenario, member, page_size=3, page_token=token)
        pages.append(list(page.ledger_entries))
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    flat = [e for p in pages for e in p]
    times = [e.create_time.ToDatetime(tzinfo=UTC) for e in flat]
    assert times == sorted(times, reverse=True) and len(set(times)) == 7
    assert list(reversed(flat)) == await scenario.ledger(member)
    await scenario.assert_balance_matches_ledger(member)

    adjusts = await list_entries(scenario, member, kinds=[K.LEDGER_ENTRY_KIND_ADJUST])
    assert [e.points for e in adjusts.ledger_entries] == [5, 3, 1]
    earns = await list_entries(
        scenario, member, kinds=[K.LEDGER_ENTRY_KIND_EARN, K.LEDGER_ENTRY_KIND_EXPIRE]
    )
    assert [e.points for e in earns.ledger_entries] == [70, 50, 30, 10]
    window = await list_entries(
        scenario,
        member,
        start_time=ts(t0 + timedelta(days=2)),
        end_time=ts(t0 + timedelta(days=5)),
    )
    assert [e.occur_time.ToDatetime(tzinfo=UTC) for e in window.ledger_entries] == [
        t0 + timedelta(days=4),
        t0 + timedelta(days=3),
        t0 + timedelta(days=2),
    ]
    # A filtered list pages too, and keeps its filter.
    first = await list_entries(scenario, member, kinds=[K.LEDGER_ENTRY_KIND_EARN], page_size=2)
    second = await list_entries(
        scenario,
        member,
        kinds=[K.LEDGER_ENTRY_KIND_EARN],
        page_size=2,
        page_token=first.next_page_token,
    )
    assert [e.points for e in first.ledger_entries] == [70, 50]
    assert [e.points for e in second.ledger_entries] == [30, 10]
    assert second.next_page_token == ""


async def test_ledger_list_rejects_bad_requests(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    for _ in range(3):
        await adjust(scenario, member, 1)
    first = await list_entries(scenario, member, page_size=1)

    for fields in (
        {"page_token": "not-a-token"},
        {"page_token": first.next_page_token, "kinds": [K.LEDGER_ENTRY_KIND_ADJUST]},
    ):
        code, reason, got = await errors(list_entries(scenario, member, **fields))
        assert (code, reason, got) == (INVALID, "INVALID_PAGE_TOKEN", ["page_token"])
    other = await scenario.member(program)
    code, reason, _ = await errors(list_entries(scenario, other, page_token=first.next_page_token))
    assert (code, reason) == (INVALID, "INVALID_PAGE_TOKEN")
    code, _, got = await errors(list_entries(scenario, member, kinds=[99]))
    assert (code, got) == (INVALID, ["kinds[0]"])
    code, _, got = await errors(list_entries(scenario, member, page_size=-5))
    assert (code, got) == (INVALID, ["page_size"])
    code, reason, _ = await errors(list_entries(scenario, f"programs/{program}/members/ghost"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    code, reason, got = await errors(list_entries(scenario, f"programs/{program}"))
    assert (code, reason, got) == (INVALID, "INVALID_NAME", ["parent"])
    await scenario.assert_balance_matches_ledger(member)
