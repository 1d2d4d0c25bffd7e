"""Pooled connections the server dropped (a restart, an idle timeout) cost no failed call.

The pool does not ping before each checkout (a round trip per transaction); instead a
transaction whose connection turns out dead runs again on a new one.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


async def _drop_the_pools_connections(app) -> int:
    """Terminate every other connection to the test database, as a server restart would."""
    admin = create_async_engine(app.db.url, poolclass=NullPool)
    try:
        async with admin.connect() as conn:
            killed = (
                await conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            ).scalar_one()
    finally:
        await admin.dispose()
    return int(killed)


async def test_reads_and_writes_go_on_after_the_server_dropped_the_pool(app, scenario) -> None:
    program = await scenario.program()
    members = [await scenario.member(program) for _ in range(3)]
    for member in members:
        await scenario.purchase(member, 1_000)  # connections now wait in the pool
    assert await _drop_the_pools_connections(app) >= 1

    for member in members:  # each call would meet a dead connection first
        assert (await scenario.balance(member)).available_points == 10
    assert await _drop_the_pools_connections(app) >= 1
    reply = await scenario.purchase(members[0], 2_000)
    assert reply.points_awarded == 20
    balance = await scenario.assert_balance_matches_ledger(members[0])
    assert balance.available_points == 30
