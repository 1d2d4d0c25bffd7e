"""Database fixtures for the whole suite.

``database_url`` runs a test once on SQLite (a file per test) and once on PostgreSQL (one fresh
database per test run, shared by its tests, which use unique ids instead of truncating tables).
PostgreSQL comes from ``LOYALTY_TEST_DATABASE_URL`` (an admin SQLAlchemy URL) or the local
default; when it is unreachable the PostgreSQL tests are skipped, or fail under ``CI=true``.
Every test that touches PostgreSQL carries the ``postgres`` marker, so ``-m "not postgres"``
runs without a server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import URL, make_url

from loyalty_engine.bootstrap import App, build_app
from loyalty_engine.config import load_settings
from loyalty_engine.gen.loyalty.v1 import (
    member_service_pb2_grpc,
    points_service_pb2_grpc,
    program_service_pb2_grpc,
    reward_service_pb2_grpc,
)
from loyalty_engine.storage.migrate import upgrade

DEFAULT_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_SECONDS = 5.0

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # A private loop, so the current event loop that pytest-asyncio manages is left alone
    # (asyncio.run would reset it to None when it finishes).
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def _admin_url() -> URL:
    url = make_url(os.environ.get("LOYALTY_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL)
    if url.drivername in {"postgres", "postgresql"}:
        url = url.set(drivername="postgresql+asyncpg")
    return url


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _execute_on_admin_database(admin_url: URL, statement: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL database created for this test run and dropped after it."""
    admin_url = _admin_url()
    database = f"loyalty_test_{secrets.token_hex(6)}"
    unreachable = ""
    try:
        _run(_execute_on_admin_database(admin_url, f'CREATE DATABASE "{database}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        unreachable = (
            f"PostgreSQL not reachable at {admin_url.render_as_string(hide_password=True)} "
            f"({type(exc).__name__}: {exc}): set LOYALTY_TEST_DATABASE_URL or run "
            "scripts/ensure_postgres.sh to enable these tests"
        )
    if unreachable:
        # pytest caches a session fixture's outcome, so this check runs once per session.
        if os.environ.get("CI") == "true":
            pytest.fail(unreachable, pytrace=False)
        pytest.skip(unreachable)
    try:
        yield admin_url.set(database=database).render_as_string(hide_password=False)
    finally:
        _run(
            _execute_on_admin_database(
                admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'
            )
        )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of an empty SQLite database file private to the test."""
    return f"sqlite+aiosqlite:///{tmp_path / 'loyalty.db'}"


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The test's database URL, once per supported backend."""
    # Looked up lazily so that a SQLite-only run never touches PostgreSQL.
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: the marker must be in place before `-m` deselects items.
    for item in items:
        callspec = getattr(item, "callspec", None)
        uses_postgres = "postgres_url" in getattr(item, "fixturenames", ()) or (
            callspec is not None and callspec.params.get("database_url") == "postgres"
        )
        if uses_postgres and item.get_closest_marker("postgres") is None:
            item.add_marker(pytest.mark.postgres)


# --- the application and a real gRPC server -------------------------------------------------

_migrated: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def quiet_logs() -> None:
    """The service's own logging, at WARNING: one line per RPC would drown test output."""
    from loyalty_engine.api.telemetry import configure_logging

    configure_logging("WARNING")


class FakeClock:
    """A clock tests move by hand; starts at a fixed, recent instant."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 6, 15, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


def uid(prefix: str = "t") -> str:
    """A unique id for a test's program, member or order (tests never truncate tables)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def app(database_url: str, clock: FakeClock) -> AsyncIterator[App]:
    """The application on a migrated database of the test's backend, with a fake clock."""
    application = build_app(
        load_settings(database_url=database_url, db_pool_size=20, plaintext=True), clock=clock
    )
    if database_url not in _migrated:
        await upgrade(application.db)
        _migrated.add(database_url)
    try:
        yield application
    finally:
        await application.close()


@pytest.fixture
async def operator_key(app: App) -> str:
    """A platform (operator) key: the default caller of the e2e tests, allowed everything."""
    from loyalty_engine.domain.keys import OPERATOR_PROGRAM, Scope
    from loyalty_engine.services.keys import create_key

    async with app.db.unit_of_work() as uow:
        created = await create_key(
            uow, OPERATOR_PROGRAM, "tests", frozenset({Scope.OPERATOR}), app.clock()
        )
        await uow.commit()
    return created.token


class _Bearer:
    """Adds `authorization: Bearer <key>` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _with_key(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        if not any(k == "authorization" for k, _ in metadata):
            metadata.append(("authorization", f"Bearer {self.token}"))
        return details._replace(metadata=grpc.aio.Metadata(*metadata))


# grpc.aio files an interceptor under the first call type it implements, so one class each.
class _UnaryUnaryBearer(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_key(details), request)


class _UnaryStreamBearer(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_key(details), request)


class _StreamUnaryBearer(_Bearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_key(details), requests)


class _StreamStreamBearer(_Bearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_key(details), requests)


def bearer_interceptors(token: str) -> list[Any]:
    """Client interceptors that send `token` on every call of a channel."""
    return [
        _UnaryUnaryBearer(token),
        _UnaryStreamBearer(token),
        _StreamUnaryBearer(token),
        _StreamStreamBearer(token),
    ]


@dataclass
class Client:
    """Stubs on a channel to a real server started for the test."""

    channel: grpc.aio.Channel
    address: str
    programs: program_service_pb2_grpc.ProgramServiceStub
    members: member_service_pb2_grpc.MemberServiceStub
    points: points_service_pb2_grpc.PointsServiceStub
    rewards: reward_service_pb2_grpc.RewardServiceStub


@pytest.fixture
async def client(app: App, operator_key: str) -> AsyncIterator[Client]:
    """A real grpc.aio server on a free port, and a real client channel to it (operator key)."""
    from loyalty_engine.api.server import start_server

    running = await start_server(app, "127.0.0.1:0")
    address = f"127.0.0.1:{running.port}"
    channel = grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(operator_key))
    try:
        yield Client(
            channel=channel,
            address=address,
            programs=program_service_pb2_grpc.ProgramServiceStub(channel),
            members=member_service_pb2_grpc.MemberServiceStub(channel),
            points=points_service_pb2_grpc.PointsServiceStub(channel),
            rewards=reward_service_pb2_grpc.RewardServiceStub(channel),
        )
    finally:
        await channel.close()
        await running.stop(1.0)


class Scenario:
    """Builds programs, members and purchases through the real gRPC API, with unique ids."""

    def __init__(self, client: Client, clock: FakeClock) -> None:
        self.client = client
        self.clock = clock

    async def program(self, **fields: Any) -> str:
        """Create a program (EUR, 1 point per 1.00 by default); returns its id."""
        from google.protobuf import json_format

        from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp

        program_id = uid("p")
        program = pp.Program(display_name="Test program", currency_code="EUR")
        json_format.ParseDict(fields, program)
        await self.client.programs.CreateProgram(
            pp.CreateProgramRequest(request_id=uid("r"), program_id=program_id, program=program)
        )
        return program_id

    async def tier(
        self, program_id: str, tier_id: str, threshold: int, multiplier: int = 100
    ) -> None:
        from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp

        await self.client.programs.CreateTier(
            pp.CreateTierRequest(
                request_id=uid("r"),
                parent=f"programs/{program_id}",
                tier_id=tier_id,
                tier=pp.Tier(
                    display_name=tier_id.title(), threshold=threshold, multiplier_percent=multiplier
                ),
            )
        )

    async def member(self, program_id: str, **fields: Any) -> str:
        """Enroll a member; returns its resource name."""
        from google.protobuf import json_format

        from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as mp

        member = mp.Member(external_id=uid("ext"))
        json_format.ParseDict(fields, member)
        reply = await self.client.members.EnrollMember(
            mp.EnrollMemberRequest(
                request_id=uid("r"), parent=f"programs/{program_id}", member=member
            )
        )
        return reply.member.name

    def purchase_request(
        self,
        member: str,
        total_minor: int,
        *,
        order_id: str | None = None,
        request_id: str | None = None,
        when: datetime | None = None,
        lines: list[tuple[str, str, int, int]] | None = None,
        currency: str = "EUR",
    ) -> Any:
        from google.protobuf import timestamp_pb2

        from loyalty_engine.gen.loyalty.v1 import common_pb2
        from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps

        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime((when or self.clock.now).astimezone(UTC).replace(tzinfo=None))
        return ps.RecordPurchaseRequest(
            request_id=request_id or uid("r"),
            member=member,
            purchase=ps.Purchase(
                order_id=order_id or uid("o"),
                purchase_time=ts,
                store_id="store-1",
                total=common_pb2.Money(amount_minor=total_minor, currency_code=currency),
                line_items=[
                    common_pb2.LineItem(sku=s, category=c, quantity=q, unit_price_minor=p)
                    for s, c, q, p in (lines or [])
                ],
            ),
        )

    async def purchase(self, member: str, total_minor: int, **kwargs: Any) -> Any:
        return await self.client.points.RecordPurchase(
            self.purchase_request(member, total_minor, **kwargs)
        )

    async def balance(self, member: str) -> Any:
        from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps

        return (await self.client.points.GetBalance(ps.GetBalanceRequest(member=member))).balance

    async def ledger(self, member: str) -> list[Any]:
        """Every ledger entry of the member, oldest first."""
        from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps

        entries: list[Any] = []
        token = ""
        while True:
            page = await self.client.points.ListLedgerEntries(
                ps.ListLedgerEntriesRequest(parent=member, page_size=500, page_token=token)
            )
            entries.extend(page.ledger_entries)
            token = page.next_page_token
            if not token:
                return list(reversed(entries))

    async def assert_balance_matches_ledger(self, member: str) -> Any:
        """The invariant: the balance is the sum of the member's entries."""
        balance = await self.balance(member)
        entries = await self.ledger(member)
        assert balance.available_points == sum(e.points for e in entries)
        assert balance.pending_points == sum(e.pending_points for e in entries)
        if entries:
            assert entries[-1].balance_after == balance.available_points
            assert entries[-1].pending_after == balance.pending_points
        return balance


@pytest.fixture
def scenario(client: Client, clock: FakeClock) -> Scenario:
    return Scenario(client, clock)


def error_info(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """The status code, the ErrorInfo reason and the BadRequest fields of a failed call."""
    from google.rpc import error_details_pb2, status_pb2

    reason, fields = "", []
    for key, value in error.trailing_metadata() or ():
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
    return error.code(), reason, fields


@pytest.fixture
def errors() -> Any:
    """`errors(call)` awaits a call that must fail and returns (code, reason, fields)."""

    async def expect_failure(call: Any) -> tuple[grpc.StatusCode, str, list[str]]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return error_info(caught.value)

    return expect_failure
