"""The database: one async engine per process, built at start-up, never at import time."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from loyalty_engine.storage.group_commit import GroupCommit
from loyalty_engine.storage.program_cache import ProgramCache
from loyalty_engine.storage.unit_of_work import UnitOfWork


class Database:
    """Owns the engine and hands out units of work."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        echo: bool = False,
        group_commit: bool = True,
        group_commit_max_batch: int = 64,
    ) -> None:
        parsed = make_url(url)
        self.url = parsed
        self.backend = parsed.get_backend_name()
        # Parameters may hold personal data; errors and logs must not show them.
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.backend == "postgresql":
            # No ping before each checkout (a round trip per transaction): a connection that
            # died in the pool (a restarted server) fails its first statement, SQLAlchemy
            # then drops every pooled connection as old as it, and the transaction runs
            # again on a new one (`api.transactions`: `connection_invalidated`).
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600)
        elif self.backend == "sqlite":
            kwargs.update(connect_args={"timeout": 30})
        self.engine: AsyncEngine = create_async_engine(parsed, **kwargs)
        self.program_cache = ProgramCache()
        if self.backend == "sqlite":
            _configure_sqlite(self.engine)
        # SQLite has one writer at a time, so one lane; PostgreSQL overlaps two batches (one
        # runs its writes while the other waits for its COMMIT to be durable).
        self.group_commit: GroupCommit | None = (
            GroupCommit(
                self,
                lanes=1 if self.is_sqlite else min(2, pool_size),
                max_batch=group_commit_max_batch,
            )
            if group_commit
            else None
        )

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite store."""
        return self.backend == "sqlite"

    def unit_of_work(self, *, read_only: bool = False, autocommit: bool = False) -> UnitOfWork:
        """A new unit of work: one connection, one transaction, rolled back unless committed.

        `read_only` promises the work only reads; on SQLite it then takes no write lock.
        `autocommit` promises more: the work reads with statements that each stand alone
        (one snapshot each is enough), so on PostgreSQL it runs without a transaction.
        """
        return UnitOfWork(
            self.engine,
            dialect=self.backend,
            program_cache=self.program_cache,
            read_only=read_only,
            autocommit=autocommit,
        )

    async def vacuum(self, table: str) -> None:
        """VACUUM a table on PostgreSQL (outside any transaction; SQLite needs none).

        For a table a bulk pass has just rewritten: it clears the old row versions and marks
        the pages all-visible, so that index-only scans read no rows, also where autovacuum
        is off or has not come round yet.
        """
        if self.is_sqlite:
            return
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql(f'VACUUM "{table}"')

    async def ping(self) -> None:
        """Fail if the database cannot be reached."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        """Stop group commit and close every pooled connection."""
        if self.group_commit is not None:
            await self.group_commit.close()
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE so concurrent writers queue instead of deadlocking.

    pysqlite's own transaction handling is switched off (SQLAlchemy's documented recipe)
    so that SQLAlchemy's BEGIN is the one that runs, and it takes the write lock up front:
    a read-then-write transaction can then never fail half-way with "database is locked".
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Reads take no write lock, so in WAL mode they run beside the one writer.
        read_only = conn.get_execution_options().get("loyalty_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
