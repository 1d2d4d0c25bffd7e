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
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

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
