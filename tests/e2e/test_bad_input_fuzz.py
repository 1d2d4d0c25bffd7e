"""Hypothesis fuzzing of the gRPC surface with bad input: no server errors, no partial writes.

Every request field is drawn from a mix of good values (the names of a real program and
member, so requests get past the first check) and bad ones: empty and huge strings, odd
code points and NUL, extreme int64 and int32 numbers, timestamps with extreme seconds and
nanos, malformed resource names, unknown enum numbers, random update masks and forged page
tokens. Every call must end in success or in a status other than INTERNAL and UNKNOWN,
and every failure must carry an ``ErrorInfo`` reason. A failed write must leave the
resource it aimed at unchanged (a failed RecordPurchase leaves the member's ledger and
balance as they were, a failed EnrollMember leaves the program's member list, ...).

How it runs: hypothesis' ``@given`` does not work on ``async def`` tests under
pytest-asyncio, and starting a server per example would be far too slow. So a
module-scoped fixture runs ONE application and grpc.aio server per backend (SQLite in a
temporary directory, and PostgreSQL) on an event loop in a background thread, and the
tests are plain sync functions that talk to it through ordinary *synchronous* gRPC stubs,
exactly as an outside client would. A function-scoped ``world`` fixture creates a fresh
program, tier, earning rule, member and purchase per test (shared by that test's examples,
hence the suppressed ``function_scoped_fixture`` health check).

``LOYALTY_FUZZ_EXAMPLES`` sets the number of examples per RPC and backend (default 40).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import uuid
from collections import namedtuple
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import field_mask_pb2, message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from loyalty_engine.bootstrap import build_app
from loyalty_engine.config import load_settings
from loyalty_engine.domain.keys import OPERATOR_PROGRAM, Scope
from loyalty_engine.gen.loyalty.v1 import (
    common_pb2,
    offer_service_pb2,
    reward_service_pb2,
    segment_service_pb2,
)
from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as mp
from loyalty_engine.gen.loyalty.v1 import member_service_pb2_grpc as mp_grpc
from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps
from loyalty_engine.gen.loyalty.v1 import points_service_pb2_grpc as ps_grpc
from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp
from loyalty_engine.gen.loyalty.v1 import program_service_pb2_grpc as pp_grpc
from loyalty_engine.services.keys import create_key
from loyalty_engine.storage.migrate import upgrade

EXAMPLES = int(os.environ.get("LOYALTY_FUZZ_EXAMPLES", "40"))
CALL_TIMEOUT = 30.0
SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

T = TypeVar("T")

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- one server per backend, on its own event loop ------------------------------------------


class _LoopThread:
    """An event loop of its own in a daemon thread, for the server under test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class _CallDetails(
    namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _Bearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <key>` to every call."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.token}")]
        return continuation(
            _CallDetails(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                details.wait_for_ready,
                details.compression,
            ),
            request,
        )


@dataclass
class Stubs:
    """Synchronous stubs on a channel that sends one API key."""

    programs: pp_grpc.ProgramServiceStub
    members: mp_grpc.MemberServiceStub
    points: ps_grpc.PointsServiceStub


class Server:
    """The application and its grpc.aio server, running on a background event loop."""

    def __init__(self, url: str) -> None:
        from loyalty_engine.api.server import start_server

        self.loop = _LoopThread()
        self.app = build_app(load_settings(database_url=url, db_pool_size=10, plaintext=True))

        async def start() -> Any:
            await upgrade(self.app.db)
            return await start_server(self.app, "127.0.0.1:0")

        self.running = self.loop.run(start())
        self.channels: list[grpc.Channel] = []
        self.operator = self.stubs(self.new_key(OPERATOR_PROGRAM, Scope.OPERATOR))

    def new_key(self, program_id: str, scope: Scope) -> str:
        async def create() -> str:
            async with self.app.db.unit_of_work() as uow:
                created = await create_key(
                    uow, program_id, "fuzz", frozenset({scope}), self.app.clock()
                )
                await uow.commit()
            return created.token

        return self.loop.run(create())

    def stubs(self, token: str) -> Stubs:
        channel = grpc.intercept_channel(
            grpc.insecure_channel(f"127.0.0.1:{self.running.port}"), _Bearer(token)
        )
        self.channels.append(channel)
        return Stubs(
            programs=pp_grpc.ProgramServiceStub(channel),
            members=mp_grpc.MemberServiceStub(channel),
            points=ps_grpc.PointsServiceStub(channel),
        )

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.loop.run(self.running.stop(0))
        self.loop.run(self.app.close())
        self.loop.stop()


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'loyalty.db'}"
    running = Server(url)
    try:
        yield running
    finally:
        running.close()


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _now_ts() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.now(UTC).replace(tzinfo=None))
    return ts


@dataclass
class World:
    """A fresh program with a tier, an earning rule, and a member with one purchase.

    `op` calls with the operator's key, `api` with an ADMIN key of this program only, so
    names of other programs are also stopped by the tenant check.
    """

    op: Stubs
    api: Stubs
    program_id: str
    program: str
    member: str
    member_id: str
    order_id: str
    email: str


@pytest.fixture
def world(server: Server) -> World:
    op = server.operator
    program_id = _uid("fz")
    op.programs.CreateProgram(
        pp.CreateProgramRequest(
            request_id=_uid("r"),
            program_id=program_id,
            program=pp.Program(display_name="Fuzz", currency_code="EUR", pending_days=3),
        ),
        timeout=CALL_TIMEOUT,
    )
    program = f"programs/{program_id}"
    op.programs.CreateTier(
        pp.CreateTierRequest(
            request_id=_uid("r"),
            parent=program,
            tier_id="gold",
            tier=pp.Tier(display_name="Gold", threshold=100_000, multiplier_percent=150),
        ),
        timeout=CALL_TIMEOUT,
    )
    op.programs.CreateEarningRule(
        pp.CreateEarningRuleRequest(
            request_id=_uid("r"),
            parent=program,
            earning_rule_id="books",
            earning_rule=pp.EarningRule(
                display_name="Books", kind=pp.EARNING_RULE_KIND_CATEGORY, match="books"
            ),
        ),
        timeout=CALL_TIMEOUT,
    )
    email = f"{_uid('m')}@example.com"
    member = op.members.EnrollMember(
        mp.EnrollMemberRequest(
            request_id=_uid("r"),
            parent=program,
            member=mp.Member(external_id=_uid("ext"), email=email, given_name="Ada"),
        ),
        timeout=CALL_TIMEOUT,
    ).member
    order_id = _uid("o")
    op.points.RecordPurchase(
        ps.RecordPurchaseRequest(
            request_id=_uid("r"),
            member=member.name,
            purchase=ps.Purchase(
                order_id=order_id,
                purchase_time=_now_ts(),
                total=common_pb2.Money(amount_minor=5_000, currency_code="EUR"),
                line_items=[
                    common_pb2.LineItem(
                        sku="a", category="books", quantity=2, unit_price_minor=1500
                    ),
                    common_pb2.LineItem(
                        sku="b", category="food", quantity=1, unit_price_minor=2000
                    ),
                ],
            ),
        ),
        timeout=CALL_TIMEOUT,
    )
    return World(
        op=op,
        api=server.stubs(server.new_key(program_id, Scope.ADMIN)),
        program_id=program_id,
        program=program,
        member=member.name,
        member_id=member.name.rsplit("/", 1)[1],
        order_id=order_id,
        email=email,
    )


# --- calling and checking -------------------------------------------------------------------


def _error_info(error: grpc.RpcError) -> tuple[str, list[str]]:
    reason, fields = "", []
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields = [v.field for v in bad.field_violations]
    return reason, fields


def call(method: Callable[..., Any], request: Message) -> grpc.StatusCode:
    """Call, and check the outcome is a success or a deliberate, well-described error."""
    try:
        method(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
        if currently_in_test_context():
            event(f"{code.name} {_error_info(error)[0]}")  # --hypothesis-show-statistics
        details = error.details()  # type: ignore[attr-defined]
        assert code not in SERVER_ERRORS, f"{code.name}: {details}\nrequest: {request!r}"
        reason, fields = _error_info(error)
        assert reason, f"{code.name} without an ErrorInfo reason: {details}\nrequest: {request!r}"
        if code is grpc.StatusCode.INVALID_ARGUMENT and reason == "INVALID_FIELD":
            assert fields, f"INVALID_FIELD without a field violation: {details}"
        return code
    if currently_in_test_context():
        event("OK")
    return grpc.StatusCode.OK


_last_seen: dict[Any, Any] = {}


def checked_write(
    method: Callable[..., Any], request: Message, snapshot: Callable[[], Any], key: Any = None
) -> grpc.StatusCode:
    """A write that fails must leave `snapshot()` as it was (remembered under `key`)."""
    before = _last_seen[key] if key is not None and key in _last_seen else snapshot()
    code = call(method, request)
    after = snapshot()
    if code is not grpc.StatusCode.OK:
        assert after == before, (
            f"{code.name} but something was written:\nbefore: {before}\nafter: {after}\n"
            f"request: {request!r}"
        )
    if key is not None:
        _last_seen[key] = after
    return code


def ledger_snapshot(w: World) -> Callable[[], Any]:
    def take() -> Any:
        entries = w.api.points.ListLedgerEntries(
            ps.ListLedgerEntriesRequest(parent=w.member, page_size=500), timeout=CALL_TIMEOUT
        ).ledger_entries
        balance = w.api.points.GetBalance(
            ps.GetBalanceRequest(member=w.member), timeout=CALL_TIMEOUT
        ).balance
        # Tier progress moves with the clock alone (a sale stamped a few minutes ahead
        # counts once its time has come), so it is no sign of a write.
        balance.ClearField("tier_progress")
        return [e.SerializeToString(deterministic=True) for e in entries], balance

    return take


# --- strategies -----------------------------------------------------------------------------

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
ODD_STRINGS = [
    "\x00",
    "a\x00b",
    "\x01\x1f\x7f",
    "\u200b",
    "\ufeff",
    "\u202e",
    "\U0010ffff",
    "e\u0301",
    " ",
    "\t\n\r",
    "ß" * 300,
    "🎉" * 70,
    "../..",
    "%00",
    "' OR 1=1 --",
    "null",
]


def mostly(good: st.SearchStrategy[T], bad: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`good` four times in five: a request is then often bad in one or two fields only,
    which is what gets it past the first checks into the service and the database."""
    return st.integers(0, 4).flatmap(lambda roll: good if roll else bad)


def texts(*good: str) -> st.SearchStrategy[str]:
    """Strings: one of `good` (if given) most of the time, else empty, odd, huge or random."""
    bad = st.one_of(
        st.just(""),
        st.sampled_from(ODD_STRINGS),
        st.text(st.characters(exclude_categories=("Cs",)), max_size=30),
        st.sampled_from(ODD_STRINGS).map(lambda odd: f"ok{odd}"),
        st.integers(201, 20_000).map(lambda n: "x" * n),
        st.sampled_from([63, 64, 65, 128, 129, 199, 200, 201, 320, 321]).map(lambda n: "a" * n),
    )
    return mostly(st.sampled_from(good), bad) if good else bad


def int64s(*good: int) -> st.SearchStrategy[int]:
    edges = [0, 1, -1, *INT64, 2**31, -(2**31) - 1, 10**12, 10**12 + 1, 2**53 + 1]
    bad = st.one_of(st.sampled_from(edges), st.integers(-5, 10_000), st.integers(*INT64))
    return mostly(st.sampled_from(good), bad) if good else bad


def int32s(*good: int) -> st.SearchStrategy[int]:
    edges = [0, 1, -1, *INT32, 365, 366, 3650, 3651]
    bad = st.one_of(st.sampled_from(edges), st.integers(-5, 500), st.integers(*INT32))
    return mostly(st.sampled_from(good), bad) if good else bad


def enums(valid: int) -> st.SearchStrategy[int]:
    """Enum numbers: mostly known ones (0..valid), else just past them or any int32."""
    return mostly(
        st.integers(0, valid), st.one_of(st.integers(valid + 1, valid + 3), st.integers(*INT32))
    )


def timestamps(
    back: int = 40 * 86_400, ahead: int = 600
) -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    """Mostly from `back` seconds ago to `ahead` from now; else extreme or any values."""
    # Offsets from the time of drawing, so the strategy itself never changes between runs.
    recent = st.integers(-back, ahead).map(
        lambda offset: int(datetime.now(UTC).timestamp()) + offset
    )
    extreme = st.one_of(
        st.sampled_from([0, -62_135_596_800, -62_135_596_801, 253_402_300_799, 253_402_300_800]),
        st.integers(*INT64),
    )
    nanos = mostly(
        st.integers(0, 999_999_999),
        st.one_of(st.sampled_from([-1, 10**9, *INT32]), st.integers(*INT32)),
    )
    return st.builds(timestamp_pb2.Timestamp, seconds=mostly(recent, extreme), nanos=nanos)


def optional(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return mostly(strategy, st.none())


def names(w: World, *good: str) -> st.SearchStrategy[str]:
    """Resource names: mostly real ones, else well-formed unknown ones or malformed ones."""
    bad = st.one_of(
        st.sampled_from(
            [
                "programs/nope/members/nobody",
                f"{w.program}/members/nobody",
                f"programs/{w.program_id.upper()}",
                f"{w.member}/",
                f"/{w.member}",
                f"{w.member}/extra",
                "programs//members/",
                f"{w.program}/members/{'a' * 64}",
                f"programs/{'a' * 64}/members/m",
                f"{w.program}/tiers/gold",
                "programs/-/members/-",
            ]
        ),
        texts().map(lambda s: f"{w.program}/members/{s}"),
        texts().map(lambda s: f"programs/{s}"),
        texts(),
    )
    return mostly(st.sampled_from(good), bad)


def masks(*fields: str) -> st.SearchStrategy[field_mask_pb2.FieldMask]:
    paths = mostly(
        st.sampled_from(fields),
        st.one_of(
            st.sampled_from(["name", "create_time", "state", "tier", "currency_code", "x.y", "*"]),
            st.sampled_from(fields).map(lambda f: f"{f}.nope"),
            texts(),
        ),
    )
    return st.lists(paths, max_size=4).map(lambda p: field_mask_pb2.FieldMask(paths=p))


def page_tokens(query: Any, key: str) -> st.SearchStrategy[str]:
    """Mostly none; else garbage, or a well-formed token for this query at a forged position."""
    position = st.one_of(
        int64s(),
        st.integers(2**63, 2**70),
        st.floats(allow_nan=False),
        texts(),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )

    def forge(value: Any, drop_key: bool) -> str:
        payload = {"q": query} if drop_key else {"q": query, key: value}
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()

    return mostly(st.just(""), st.one_of(texts(), st.builds(forge, position, st.booleans())))


@st.composite
def line_items(draw: st.DrawFn) -> common_pb2.LineItem:
    return common_pb2.LineItem(
        sku=draw(texts("sku-1")),
        category=draw(texts("books", "food")),
        quantity=draw(int64s(1, 2)),
        unit_price_minor=draw(int64s(1500, 2000)),
    )


def set_message(message: Message, field: str, value: Message | None) -> None:
    if value is not None:
        getattr(message, field).CopyFrom(value)


# --- the fuzz tests -------------------------------------------------------------------------


@fuzz
@given(data=st.data())
def test_record_purchase(world: World, data: st.DataObject) -> None:
    w = world
    purchase = ps.Purchase(
        order_id=data.draw(texts(_uid("o"), w.order_id)),
        store_id=data.draw(texts("store-1")),
        line_items=data.draw(st.lists(line_items(), max_size=3)),
    )
    set_message(purchase, "purchase_time", data.draw(optional(timestamps())))
    lines_sum = sum(i.quantity * i.unit_price_minor for i in purchase.line_items)
    total = data.draw(
        optional(
            st.builds(
                common_pb2.Money,
                amount_minor=mostly(st.just(lines_sum), int64s(5000, 3000))
                if INT64[0] <= lines_sum <= INT64[1]
                else int64s(5000),
                currency_code=texts("EUR", "USD", "eur"),
            )
        )
    )
    set_message(purchase, "total", total)
    request = ps.RecordPurchaseRequest(
        request_id=data.draw(texts(_uid("r"))), member=data.draw(names(w, w.member))
    )
    set_message(request, "purchase", data.draw(st.sampled_from([purchase, None])))
    checked_write(w.api.points.RecordPurchase, request, ledger_snapshot(w), (w.member, "ledger"))


@fuzz
@given(data=st.data())
def test_record_return(world: World, data: st.DataObject) -> None:
    w = world
    request = ps.RecordReturnRequest(
        request_id=data.draw(texts(_uid("r"))),
        member=data.draw(names(w, w.member)),
        order_id=data.draw(texts(w.order_id)),
        return_id=data.draw(texts(_uid("ret"))),
        lines=data.draw(
            st.lists(
                st.builds(ps.ReturnLine, line_index=int32s(0, 1), quantity=int64s(1, 2)),
                max_size=3,
            )
        ),
    )
    # Not before the world's purchase, so that returns get as far as the ledger.
    set_message(request, "return_time", data.draw(optional(timestamps(back=0, ahead=240))))
    checked_write(w.api.points.RecordReturn, request, ledger_snapshot(w), (w.member, "ledger"))


@fuzz
@given(data=st.data())
def test_adjust_points(world: World, data: st.DataObject) -> None:
    w = world
    request = ps.AdjustPointsRequest(
        request_id=data.draw(texts(_uid("r"))),
        member=data.draw(names(w, w.member)),
        points=data.draw(int64s(10, -10, -(10**9))),
        reason=data.draw(enums(3)),
        actor=data.draw(texts("agent-7")),
        note=data.draw(texts("ok")),
    )
    checked_write(w.api.points.AdjustPoints, request, ledger_snapshot(w), (w.member, "ledger"))


@fuzz
@given(data=st.data())
def test_get_balance(world: World, data: st.DataObject) -> None:
    call(
        world.api.points.GetBalance,
        ps.GetBalanceRequest(member=data.draw(names(world, world.member))),
    )


@fuzz
@given(data=st.data())
def test_list_ledger_entries(world: World, data: st.DataObject) -> None:
    w = world
    request = ps.ListLedgerEntriesRequest(
        parent=data.draw(names(w, w.member)),
        page_size=data.draw(int32s(1, 2)),
        kinds=data.draw(st.lists(enums(7), max_size=3)),
    )
    set_message(request, "start_time", data.draw(optional(timestamps())))
    set_message(request, "end_time", data.draw(optional(timestamps())))
    start = (
        request.start_time.ToDatetime(tzinfo=UTC).isoformat()
        if request.HasField("start_time")
        and 0 <= request.start_time.nanos < 10**9
        and -62_135_596_800 <= request.start_time.seconds <= 253_402_300_799
        else ""
    )
    end = (
        request.end_time.ToDatetime(tzinfo=UTC).isoformat()
        if request.HasField("end_time")
        and 0 <= request.end_time.nanos < 10**9
        and -62_135_596_800 <= request.end_time.seconds <= 253_402_300_799
        else ""
    )
    query = {"m": request.parent, "k": sorted(request.kinds), "s": start, "e": end}
    request.page_token = data.draw(page_tokens(query, "before"))
    call(w.api.points.ListLedgerEntries, request)


def member_messages(w: World, name: str) -> st.SearchStrategy[mp.Member]:
    @st.composite
    def build(draw: st.DrawFn) -> mp.Member:
        member = mp.Member(
            name=draw(names(w, name)),
            external_id=draw(texts(_uid("ext"))),
            given_name=draw(texts("Grace")),
            family_name=draw(texts("Hopper")),
            email=draw(texts(f"{_uid('e')}@example.com", w.email, "A@B.CO")),
            phone=draw(texts("+4915112345678", "")),
            card_number=draw(texts("CARD-1", "")),
            marketing_consent=draw(st.booleans()),
            state=draw(enums(2)),
            tier=draw(texts("", f"{w.program}/tiers/gold")),
        )
        birth = draw(
            optional(
                st.builds(
                    common_pb2.Date,
                    year=int32s(1990, 0, 1899),
                    month=int32s(1, 12, 13),
                    day=int32s(1, 29, 31, 32),
                )
            )
        )
        set_message(member, "birth_date", birth)
        set_message(member, "join_time", draw(optional(timestamps())))
        set_message(member, "create_time", draw(optional(timestamps())))
        return member

    return build()


def member_count(w: World) -> Callable[[], Any]:
    def take() -> Any:
        out, token = [], ""
        while True:
            page = w.api.members.ListMembers(
                mp.ListMembersRequest(parent=w.program, page_size=500, page_token=token),
                timeout=CALL_TIMEOUT,
            )
            out += [m.name for m in page.members]
            token = page.next_page_token
            if not token:
                return sorted(out)

    return take


@fuzz
@given(data=st.data())
def test_enroll_member(world: World, data: st.DataObject) -> None:
    w = world
    request = mp.EnrollMemberRequest(
        request_id=data.draw(texts(_uid("r"))),
        parent=data.draw(names(w, w.program)),
        member_id=data.draw(texts("", _uid("m"), w.member_id)),
    )
    set_message(request, "member", data.draw(optional(member_messages(w, ""))))
    checked_write(w.api.members.EnrollMember, request, member_count(w), (w.program, "members"))


@fuzz
@given(data=st.data())
def test_update_member(world: World, data: st.DataObject) -> None:
    w = world
    request = mp.UpdateMemberRequest(
        request_id=data.draw(texts(_uid("r"))),
        update_mask=data.draw(
            masks(
                "external_id",
                "given_name",
                "family_name",
                "email",
                "phone",
                "card_number",
                "birth_date",
                "marketing_consent",
                "join_time",
            )
        ),
    )
    set_message(request, "member", data.draw(optional(member_messages(w, w.member))))

    def snapshot() -> Any:
        return w.api.members.GetMember(mp.GetMemberRequest(name=w.member), timeout=CALL_TIMEOUT)

    checked_write(w.api.members.UpdateMember, request, snapshot, (w.member, "member"))


@fuzz
@given(data=st.data())
def test_lookup_member(world: World, data: st.DataObject) -> None:
    w = world
    request = mp.LookupMemberRequest(parent=data.draw(names(w, w.program)))
    key = data.draw(st.sampled_from(["external_id", "email", "phone", "card_number", None]))
    if key is not None:
        setattr(request, key, data.draw(texts(w.email, "+4915112345678")))
    call(w.api.members.LookupMember, request)


@fuzz
@given(data=st.data())
def test_list_members(world: World, data: st.DataObject) -> None:
    w = world
    request = mp.ListMembersRequest(
        parent=data.draw(names(w, w.program)),
        page_size=data.draw(int32s(1, 2)),
        tier=data.draw(texts("", f"{w.program}/tiers/gold", f"{w.program}/tiers/x")),
        state=data.draw(enums(2)),
    )
    set_message(request, "join_time_after", data.draw(optional(timestamps())))
    query = {
        "tier": request.tier,
        "state": request.state,
        "join": request.join_time_after.ToJsonString()
        if request.HasField("join_time_after")
        and 0 <= request.join_time_after.nanos < 10**9
        and -62_135_596_800 <= request.join_time_after.seconds <= 253_402_300_799
        else "",
    }
    request.page_token = data.draw(page_tokens(query, "after"))
    call(w.api.members.ListMembers, request)


def program_messages(w: World, name: str) -> st.SearchStrategy[pp.Program]:
    @st.composite
    def build(draw: st.DrawFn) -> pp.Program:
        program = pp.Program(
            name=draw(names(w, name)),
            display_name=draw(texts("Fuzzed")),
            currency_code=draw(texts("EUR", "USD", "XXX")),
            pending_days=draw(int32s(0, 14, 365)),
            negative_balance_policy=draw(enums(2)),
            late_purchase_window_days=draw(int32s(0, 30)),
            point_value_minor_per_100_points=draw(int64s(100)),
        )
        if draw(st.booleans()):
            program.earning_policy.CopyFrom(
                pp.EarningPolicy(
                    base_points=draw(int64s(1, 0)),
                    per_amount_minor=draw(int64s(100, 0)),
                    rounding=draw(enums(4)),
                    min_order_minor=draw(int64s(0, 500)),
                    excluded_categories=draw(st.lists(texts("gift-cards"), max_size=3)),
                )
            )
        if draw(st.booleans()):
            program.tier_policy.CopyFrom(
                pp.TierPolicy(
                    metric=draw(enums(2)),
                    window_months=draw(int32s(12, 0, 121)),
                    grace_days=draw(int32s(0, 30)),
                    downgrade_mode=draw(enums(2)),
                )
            )
        if draw(st.booleans()):
            program.expiry_policy.CopyFrom(
                pp.ExpiryPolicy(mode=draw(enums(3)), months=draw(int32s(12, 0, 121)))
            )
        set_message(program, "create_time", draw(optional(timestamps())))
        return program

    return build()


@fuzz
@given(data=st.data())
def test_create_program(world: World, data: st.DataObject) -> None:
    w = world
    program_id = data.draw(texts(_uid("fz"), w.program_id))
    request = pp.CreateProgramRequest(request_id=data.draw(texts(_uid("r"))), program_id=program_id)
    set_message(request, "program", data.draw(optional(program_messages(w, ""))))

    def snapshot() -> Any:
        # Only a well-formed id that did not exist before can be checked for leftovers.
        if program_id == w.program_id:
            return w.op.programs.GetProgram(
                pp.GetProgramRequest(name=w.program), timeout=CALL_TIMEOUT
            )
        try:
            w.op.programs.GetProgram(
                pp.GetProgramRequest(name=f"programs/{program_id}"), timeout=CALL_TIMEOUT
            )
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined]
        return "exists"

    checked_write(w.op.programs.CreateProgram, request, snapshot)


@fuzz
@given(data=st.data())
def test_update_program(world: World, data: st.DataObject) -> None:
    w = world
    request = pp.UpdateProgramRequest(
        request_id=data.draw(texts(_uid("r"))),
        update_mask=data.draw(
            masks(
                "display_name",
                "earning_policy",
                "tier_policy",
                "expiry_policy",
                "pending_days",
                "negative_balance_policy",
                "late_purchase_window_days",
                "point_value_minor_per_100_points",
                "earning_policy.base_points",
                "expiry_policy.months",
            )
        ),
    )
    set_message(request, "program", data.draw(optional(program_messages(w, w.program))))

    def snapshot() -> Any:
        return w.api.programs.GetProgram(pp.GetProgramRequest(name=w.program), timeout=CALL_TIMEOUT)

    checked_write(w.api.programs.UpdateProgram, request, snapshot, (w.program, "program"))


@fuzz
@given(data=st.data())
def test_create_tier(world: World, data: st.DataObject) -> None:
    w = world
    request = pp.CreateTierRequest(
        request_id=data.draw(texts(_uid("r"))),
        parent=data.draw(names(w, w.program)),
        tier_id=data.draw(texts(f"t{uuid.uuid4().hex[:8]}", "gold")),
    )
    tier = st.builds(
        pp.Tier,
        name=texts(""),
        display_name=texts("Silver"),
        threshold=int64s(200_000, 50_000),
        multiplier_percent=int32s(120, 0),
        perks=texts("Free coffee"),
    )
    set_message(request, "tier", data.draw(optional(tier)))

    def snapshot() -> Any:
        return w.api.programs.ListTiers(pp.ListTiersRequest(parent=w.program), timeout=CALL_TIMEOUT)

    checked_write(w.api.programs.CreateTier, request, snapshot, (w.program, "tiers"))


@fuzz
@given(data=st.data())
def test_create_earning_rule(world: World, data: st.DataObject) -> None:
    w = world
    request = pp.CreateEarningRuleRequest(
        request_id=data.draw(texts(_uid("r"))),
        parent=data.draw(names(w, w.program)),
        earning_rule_id=data.draw(texts(f"r{uuid.uuid4().hex[:8]}", "books")),
    )
    rule = pp.EarningRule(
        name=data.draw(texts("")),
        display_name=data.draw(texts("Promo")),
        kind=data.draw(enums(3)),
        match=data.draw(texts("books", "")),
        multiplier_percent=data.draw(int32s(200, 0)),
        bonus_points_per_unit=data.draw(int64s(0, 5)),
        bonus_points=data.draw(int64s(0, 50)),
        categories=data.draw(st.lists(texts("books"), max_size=3)),
    )
    set_message(rule, "start_time", data.draw(optional(timestamps())))
    set_message(rule, "end_time", data.draw(optional(timestamps())))
    if data.draw(st.booleans()):
        request.earning_rule.CopyFrom(rule)

    def snapshot() -> Any:
        return w.api.programs.ListEarningRules(
            pp.ListEarningRulesRequest(parent=w.program), timeout=CALL_TIMEOUT
        )

    checked_write(w.api.programs.CreateEarningRule, request, snapshot, (w.program, "rules"))


# --- what the fuzzing found, pinned -----------------------------------------------------------


def _token(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


REGRESSIONS: dict[str, Callable[[World], tuple[Callable[..., Any], Message, str, str]]] = {
    # program_id went into the idempotency key (VARCHAR(64)) before it was validated
    "create program with a 100-character id": lambda w: (
        w.op.programs.CreateProgram,
        pp.CreateProgramRequest(
            request_id=_uid("r"),
            program_id="a" * 100,
            program=pp.Program(display_name="P", currency_code="EUR"),
        ),
        "INVALID_FIELD",
        "program_id",
    ),
    # PostgreSQL text cannot hold NUL: every string field of every request is checked
    "NUL in a purchase line's SKU": lambda w: (
        w.api.points.RecordPurchase,
        ps.RecordPurchaseRequest(
            request_id=_uid("r"),
            member=w.member,
            purchase=ps.Purchase(
                order_id=_uid("o"),
                purchase_time=_now_ts(),
                total=common_pb2.Money(amount_minor=100, currency_code="EUR"),
                line_items=[
                    common_pb2.LineItem(sku="a\0", category="c", quantity=1, unit_price_minor=100)
                ],
            ),
        ),
        "INVALID_FIELD",
        "purchase.line_items[0].sku",
    ),
    "NUL in an adjustment's note": lambda w: (
        w.api.points.AdjustPoints,
        ps.AdjustPointsRequest(
            request_id=_uid("r"),
            member=w.member,
            points=5,
            reason=ps.ADJUSTMENT_REASON_GOODWILL,
            actor="agent",
            note="\0",
        ),
        "INVALID_FIELD",
        "note",
    ),
    "control character in a return's order id": lambda w: (
        w.api.points.RecordReturn,
        ps.RecordReturnRequest(
            request_id=_uid("r"),
            member=w.member,
            order_id="o\x01",
            return_id=_uid("ret"),
            return_time=_now_ts(),
        ),
        "INVALID_FIELD",
        "order_id",
    ),
    "control character in a lookup key": lambda w: (
        w.api.members.LookupMember,
        mp.LookupMemberRequest(parent=w.program, external_id="\x01"),
        "INVALID_FIELD",
        "external_id",
    ),
    # a page token of the right query but without its position raised KeyError
    "members page token without a position": lambda w: (
        w.api.members.ListMembers,
        mp.ListMembersRequest(
            parent=w.program, page_token=_token({"q": {"tier": "", "state": 0, "join": ""}})
        ),
        "INVALID_PAGE_TOKEN",
        "page_token",
    ),
    # a position past int64 failed in the database
    "ledger page token past int64": lambda w: (
        w.api.points.ListLedgerEntries,
        ps.ListLedgerEntriesRequest(
            parent=w.member,
            page_token=_token({"q": {"m": w.member, "k": [], "s": "", "e": ""}, "before": 2**70}),
        ),
        "INVALID_PAGE_TOKEN",
        "page_token",
    ),
}


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_found_by_fuzzing_now_invalid_argument(world: World, case: str) -> None:
    method, request, reason, field = REGRESSIONS[case](world)
    with pytest.raises(grpc.RpcError) as caught:
        method(request, timeout=CALL_TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert _error_info(caught.value) == (reason, [field])


def test_error_echoing_a_huge_name_still_fits_in_the_headers(world: World) -> None:
    """A status that echoes 20 000 characters of input used to exceed the 16 KiB header cap
    and reach the client as RESOURCE_EXHAUSTED "Stream removed" instead."""
    name = f"programs/{'x' * 20_000}"
    with pytest.raises(grpc.RpcError) as caught:
        world.api.points.GetBalance(ps.GetBalanceRequest(member=name), timeout=CALL_TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert len(caught.value.details().encode()) <= 512  # type: ignore[attr-defined]
    assert _error_info(caught.value)[0] == "PROGRAM_NOT_FOUND"


# --- found by the fuzz: a tier name longer than its column ------------------------------------


def test_tier_name_longer_than_200_characters_is_invalid_argument(world: World) -> None:
    request = pp.CreateTierRequest(
        request_id=_uid("r"),
        parent=world.program,
        tier_id="silver",
        tier=pp.Tier(display_name="S" * 201, threshold=200_000),
    )
    assert call(world.api.programs.CreateTier, request) is grpc.StatusCode.INVALID_ARGUMENT


# --- every RPC of the contract, from its descriptor -------------------------------------------


_ALL_METHODS: list[MethodDescriptor] = [
    method
    for module in (pp, mp, ps, reward_service_pb2, offer_service_pb2, segment_service_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]


def _strings(w: World) -> st.SearchStrategy[str]:
    names = [
        w.program, w.member, f"{w.program}/tiers/gold", f"{w.program}/earningRules/books",
        f"{w.program}/rewards/r-1", f"{w.program}/segments/champions", f"{w.program}/offers/o-1",
        f"{w.member}/redemptions/x1", f"{w.program}/apiKeys/k1", w.order_id, "LOYALTY15",
    ]  # fmt: skip
    return st.one_of(
        st.sampled_from(names),
        st.text(max_size=40),
        st.text(min_size=250, max_size=1200),
        st.sampled_from(["", "\x00", "programs/", "programs//members/", "💥" * 70]),
    )


def _field(field: FieldDescriptor, w: World, depth: int) -> st.SearchStrategy[Any]:
    t = FieldDescriptor
    if field.type == t.TYPE_STRING:
        one: st.SearchStrategy[Any] = _strings(w)
    elif field.type == t.TYPE_BOOL:
        one = st.booleans()
    elif field.type == t.TYPE_ENUM:
        one = st.integers(-2, 12)
    elif field.type in (t.TYPE_INT32, t.TYPE_SINT32, t.TYPE_SFIXED32):
        one = st.one_of(st.integers(-5, 10_000), st.integers(-(2**31), 2**31 - 1))
    elif field.type in (t.TYPE_INT64, t.TYPE_SINT64, t.TYPE_SFIXED64):
        one = st.one_of(st.integers(-5, 100_000), st.integers(-(2**63), 2**63 - 1))
    elif field.type == t.TYPE_MESSAGE:
        one = _message(field.message_type, w, depth + 1)
    else:  # no other scalar types in the contract
        one = st.nothing()
    return st.lists(one, max_size=3) if field.is_repeated else one


def _message(descriptor: Descriptor, w: World, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.builds(
            cls,
            seconds=st.one_of(st.integers(0, 4_102_444_800), st.integers(-(2**63), 2**63 - 1)),
            nanos=st.integers(-(2**31), 2**31 - 1),
        )
    if descriptor.full_name == "google.protobuf.FieldMask":
        return st.builds(cls, paths=st.lists(st.text(max_size=30), max_size=3))
    if depth > 2:
        return st.just(cls())
    fields = {f.name: _field(f, w, depth) for f in descriptor.fields}

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            target = getattr(message, name) if hasattr(message, name) else None
            field = descriptor.fields_by_name[name]
            if field.is_repeated:
                target.extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=fields).map(build)


@pytest.mark.parametrize(
    "method", _ALL_METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}"
)
@settings(
    max_examples=max(3, EXAMPLES // 4),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_rpc_answers_bad_input_without_a_server_error(
    server: Server, world: World, method: MethodDescriptor, data: st.DataObject
) -> None:
    request = data.draw(_message(method.input_type, world))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.running.port}")
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_cls = message_factory.GetMessageClass(method.output_type)
    kwargs: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": response_cls.FromString,
    }
    metadata = (("authorization", f"Bearer {server.new_key(world.program_id, Scope.ADMIN)}"),)
    try:
        if method.client_streaming:
            channel.stream_unary(path, **kwargs)(
                iter([request, request]), metadata=metadata, timeout=CALL_TIMEOUT
            )
        elif method.server_streaming:
            for _ in channel.unary_stream(path, **kwargs)(
                request, metadata=metadata, timeout=CALL_TIMEOUT
            ):
                pass
        else:
            channel.unary_unary(path, **kwargs)(request, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        assert code not in SERVER_ERRORS, f"{path}: {code.name}: {error.details()}\n{request!r}"  # type: ignore[attr-defined]
    finally:
        channel.close()
