"""The unit of work: one connection and one transaction, rolled back unless committed."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty_engine.storage.imports import ImportRepository
from loyalty_engine.storage.keys import ApiKeyRepository
from loyalty_engine.storage.offers import OfferRepository
from loyalty_engine.storage.program_cache import ProgramCache
from loyalty_engine.storage.repositories import (
    AccountRepository,
    IdempotencyRepository,
    MemberRepository,
    ProgramRepository,
)
from loyalty_engine.storage.rewards import RewardRepository
from loyalty_engine.storage.segments import SegmentRepository


class UnitOfWork:
    """A database transaction with the repositories bound to it.

    Use as ``async with db.unit_of_work() as uow: ...; await uow.commit()``.
    Leaving the block without ``commit()`` rolls everything back, so an error
    half-way through never leaves half a write behind.
    """

    programs: ProgramRepository
    members: MemberRepository
    accounts: AccountRepository
    idempotency: IdempotencyRepository
    rewards: RewardRepository
    keys: ApiKeyRepository
    segments: SegmentRepository
    imports: ImportRepository
    offers: OfferRepository

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        dialect: str,
        program_cache: ProgramCache | None = None,
        read_only: bool = False,
        autocommit: bool = False,
    ) -> None:
        self.read_only = read_only or autocommit
        # Each statement its own transaction, with no BEGIN and ROLLBACK round trips: for
        # reads of one statement each (PostgreSQL; SQLite reads are local and keep theirs).
        self.autocommit = autocommit and dialect == "postgresql"
        self._engine = engine
        self.dialect = dialect
        self.program_cache = program_cache or ProgramCache(ttl=0)
        self._conn: AsyncConnection | None = None
        self._committed = False

    @property
    def connection(self) -> AsyncConnection:
        """The transaction's connection."""
        if self._conn is None:
            raise RuntimeError("unit of work used outside its `async with` block")
        return self._conn

    async def __aenter__(self) -> UnitOfWork:
        self._conn = await self._engine.connect()
        try:
            if self.autocommit:
                await self._conn.execution_options(isolation_level="AUTOCOMMIT")
            elif self.read_only:
                await self._conn.execution_options(loyalty_read_only=True)
            await self._conn.begin()
        except BaseException:
            await self._conn.close()
            raise
        conn = self._conn
        self.programs = ProgramRepository(conn, self.dialect)
        self.members = MemberRepository(conn, self.dialect)
        self.accounts = AccountRepository(conn, self.dialect)
        self.idempotency = IdempotencyRepository(conn, self.dialect)
        self.rewards = RewardRepository(conn, self.dialect)
        self.keys = ApiKeyRepository(conn, self.dialect)
        self.segments = SegmentRepository(conn, self.dialect)
        self.imports = ImportRepository(conn, self.dialect)
        self.offers = OfferRepository(conn, self.dialect)
        self._committed = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self.connection
        try:
            if not self._committed and conn.in_transaction():
                await conn.rollback()
        finally:
            await conn.close()
            self._conn = None

    async def commit(self) -> None:
        """Make the transaction's writes durable."""
        if self.read_only:
            raise RuntimeError("a read-only unit of work cannot commit")
        await self.connection.commit()
        self._committed = True
