"""Self-test of the database fixtures in tests/conftest.py."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def test_database_url_accepts_queries(
    database_url: str, request: pytest.FixtureRequest
) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
            if engine.dialect.name == "postgresql":
                database = (await connection.execute(text("SELECT current_database()"))).scalar()
                assert str(database).startswith("loyalty_test_")
    finally:
        await engine.dispose()
    is_postgres = engine.dialect.name == "postgresql"
    assert (request.node.get_closest_marker("postgres") is not None) == is_postgres
