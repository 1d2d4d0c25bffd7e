"""Group commit: concurrent writes share one transaction and one durable commit.

A write that joins a batch runs inside a savepoint of the batch's transaction, so its
failure is its own: a business error (a `DomainError`) or any other exception rolls back
to its savepoint and is answered to its caller alone, once the batch has committed (the
error may depend on another write of the batch, such as the same order id twice, and so
holds only if the batch commits). The others go on. Every caller is answered only after
the batch's COMMIT returned: with synchronous_commit on, after its write is durable.

What a batch cannot decide for a write is handed back as `RUN_ALONE`, and the caller runs
the write in a transaction of its own (the ordinary path, with its retries):

- a database error inside the write (a deadlock, a serialization failure, a lock it waited
  for longer than `lock_timeout`): the savepoint is rolled back and the write runs alone, so
  one write stuck behind a lock held elsewhere holds up its batch for at most that long;
- a batch whose COMMIT failed or whose connection broke: its outcome is unknown, so every
  write of it runs alone. Writes are idempotent by request id, so a write the failed COMMIT
  did make durable is found by its claim and answered from the stored response.

Writes go to a lane chosen by their key (the member), so two batches in flight never wait
for each other's row locks on one member; within a batch they run in key order, the order
every other multi-row writer locks in. A caller that gives up (a cancelled call, an expired
deadline) before its write started is skipped, and nothing is written; one that gives up
later waits for its batch, so that it never reports a write it could not stop as undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncTransaction

if TYPE_CHECKING:
    from loyalty_engine.storage.database import Database
    from loyalty_engine.storage.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


class _RunAlone:
    def __repr__(self) -> str:
        return "RUN_ALONE"


RUN_ALONE: Final = _RunAlone()
"""The batch could not decide this write: run it in a transaction of its own."""

Write = Callable[["UnitOfWork"], Awaitable[Any]]
WARN_EVERY_SECONDS = 5.0


@dataclass
class _Job:
    key: tuple[str, ...]
    write: Write
    future: asyncio.Future[Any]
    started: bool = False
    outcome: tuple[bool, Any] | None = None  # (succeeded, result or exception)


@dataclass
class GroupCommitStats:
    """Counts since start, for tests and telemetry."""

    batches: int = 0
    writes: int = 0
    run_alone: int = 0
    skipped: int = 0
    failed_batches: int = 0
    largest_batch: int = 0


class GroupCommit:
    """Lanes of batched writes over one database; start lazily, `close()` at shutdown."""

    def __init__(
        self,
        db: Database,
        *,
        lanes: int = 2,
        max_batch: int = 64,
        lock_timeout_ms: int = 100,
    ) -> None:
        if lanes < 1 or max_batch < 1:
            raise ValueError("group commit needs at least one lane and a batch of one")
        self._db = db
        self.lanes = lanes
        self.max_batch = max_batch
        self.lock_timeout_ms = lock_timeout_ms
        self.stats = GroupCommitStats()
        self._queues: list[asyncio.Queue[_Job]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._last_warning = -WARN_EVERY_SECONDS

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        # A new event loop (tests run several): the old lanes died with theirs.
        self._loop = loop
        self._queues = [asyncio.Queue() for _ in range(self.lanes)]
        self._tasks = [
            loop.create_task(self._lane(q), name=f"group-commit-{i}")
            for i, q in enumerate(self._queues)
        ]

    async def run(self, key: tuple[str, ...], write: Write) -> Any:
        """The write's result once its batch committed, its error, or `RUN_ALONE`."""
        if self._closed:
            return RUN_ALONE
        self._start()
        lane = zlib.crc32("\0".join(key).encode()) % self.lanes
        if self._tasks[lane].done():  # a lane that stopped (it never should) starts again
            self._tasks[lane] = asyncio.get_running_loop().create_task(
                self._lane(self._queues[lane]), name=f"group-commit-{lane}"
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job = _Job(key, write, future)
        self._queues[lane].put_nowait(job)
        gave_up = False
        while True:
            try:
                outcome = await asyncio.shield(future)
            except asyncio.CancelledError:
                if future.done():
                    raise
                if not job.started:
                    future.cancel()  # its lane skips it: nothing is written
                    raise
                # Its write ran in a batch that may yet commit: wait for the outcome, so
                # that a caller is never told nothing was written when something was.
                gave_up = True
                continue
            if gave_up and outcome is RUN_ALONE:
                raise asyncio.CancelledError  # nothing was written, and nobody waits
            return outcome

    async def close(self) -> None:
        """Stop taking writes (at shutdown, once no call is in flight): the lanes stop, and
        anything still queued or in a batch is answered `RUN_ALONE` and rolled back."""
        self._closed = True
        stats = self.stats
        if stats.batches:
            log.info(
                "group commit: %d writes in %d batches (%.1f a batch, largest %d); "
                "%d ran alone, %d skipped, %d batches failed",
                stats.writes,
                stats.batches,
                stats.writes / stats.batches,
                stats.largest_batch,
                stats.run_alone,
                stats.skipped,
                stats.failed_batches,
            )
        for queue in self._queues:
            while not queue.empty():
                job = queue.get_nowait()
                if not job.future.done():
                    job.future.set_result(RUN_ALONE)
        if self._loop is not asyncio.get_running_loop():
            self._tasks = []  # lanes of an event loop that is gone
            return
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _lane(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            jobs = [await queue.get()]
            while len(jobs) < self.max_batch and not queue.empty():
                jobs.append(queue.get_nowait())
            live = [j for j in jobs if not j.future.done()]  # callers that gave up: skipped
            self.stats.skipped += len(jobs) - len(live)
            if not live:
                continue
            live.sort(key=lambda j: j.key)
            try:
                await self._run_batch(live)
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                self._answer(live, committed=False)  # the lane stops; `run` starts another
                raise
            except Exception as exc:  # the COMMIT or the connection failed: outcome unknown
                self._warn_failed_batch(len(live), exc)
                self._answer(live, committed=False)
            else:
                self._answer(live, committed=True)

    def _warn_failed_batch(self, size: int, exc: Exception) -> None:
        """One warning per WARN_EVERY_SECONDS at most: an outage fails every batch."""
        self.stats.failed_batches += 1
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY_SECONDS:
            return
        log.warning(
            "group commit: a batch of %d failed (%s); each write runs alone "
            "(%d failed batches since start)",
            size,
            type(exc).__name__,
            self.stats.failed_batches,
        )
        self._last_warning = now

    async def _run_batch(self, jobs: list[_Job]) -> None:
        self.stats.batches += 1
        self.stats.writes += len(jobs)
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        async with self._db.unit_of_work() as uow:
            conn = uow.connection
            savepoints: _Savepoints
            if self._db.backend == "postgresql":
                # The first statement also begins the transaction the savepoints live in.
                await conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}")
                savepoints = _PostgresSavepoints(await conn.get_raw_connection())
            else:
                savepoints = _NestedTransactions(conn)
            for job in jobs:
                if job.future.done():
                    self.stats.skipped += 1
                    continue
                job.started = True
                await savepoints.begin()
                try:
                    result = await job.write(uow)
                except sa_exc.DBAPIError:
                    # A rollback that fails breaks the batch: the lane answers RUN_ALONE.
                    await savepoints.rollback()
                    job.outcome = (False, RUN_ALONE)
                except Exception as exc:  # kept for its caller alone
                    await savepoints.rollback()
                    job.outcome = (False, exc)
                else:
                    await savepoints.release()
                    job.outcome = (True, result)
            await uow.commit()

    def _answer(self, jobs: list[_Job], *, committed: bool) -> None:
        for job in jobs:
            outcome, job.outcome = job.outcome, None
            if job.future.done():
                continue
            if not committed or outcome is None:
                self.stats.run_alone += 1
                job.future.set_result(RUN_ALONE)
            elif outcome[0] or outcome[1] is RUN_ALONE:
                if outcome[1] is RUN_ALONE:
                    self.stats.run_alone += 1
                job.future.set_result(outcome[1])
            else:
                job.future.set_exception(outcome[1])


class _Savepoints:
    """A savepoint around each write of a batch, one at a time."""

    async def begin(self) -> None:
        raise NotImplementedError

    async def release(self) -> None:
        raise NotImplementedError

    async def rollback(self) -> None:
        raise NotImplementedError


class _NestedTransactions(_Savepoints):
    """SQLAlchemy's nested transactions (SQLite, where a savepoint costs no round trip)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._nested: AsyncTransaction | None = None

    async def begin(self) -> None:
        self._nested = await self._conn.begin_nested()

    async def release(self) -> None:
        assert self._nested is not None
        await self._nested.commit()

    async def rollback(self) -> None:
        assert self._nested is not None
        await self._nested.rollback()


class _PostgresSavepoints(_Savepoints):
    """One round trip per write: a write's RELEASE goes with the next one's SAVEPOINT.

    Sent on the driver's connection, in the simple query protocol, which takes several
    statements at once; the last RELEASE is the COMMIT's. The transaction they live in is
    SQLAlchemy's, begun before the first.
    """

    def __init__(self, raw: Any) -> None:
        self._driver = raw.driver_connection
        self._open = False

    async def begin(self) -> None:
        await self._driver.execute(
            "RELEASE SAVEPOINT write; SAVEPOINT write" if self._open else "SAVEPOINT write"
        )
        self._open = True

    async def release(self) -> None:
        """Released with the next SAVEPOINT, or by the COMMIT."""

    async def rollback(self) -> None:
        await self._driver.execute("ROLLBACK TO SAVEPOINT write")
