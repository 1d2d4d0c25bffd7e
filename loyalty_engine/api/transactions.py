"""Running a request in a transaction: exactly-once for writes, with retries on conflicts.

Exactly-once: the request id is claimed in the same transaction as the request's effects,
and the response is stored beside it. A retry with the same id and the same request gets
the stored response; the same id with a different request is REQUEST_ID_REUSED. Errors
are not stored: the transaction rolls back, nothing is written, and a retry runs afresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import exc as sa_exc

from loyalty_engine.bootstrap import App
from loyalty_engine.domain.errors import Aborted, InvalidArgument
from loyalty_engine.storage.group_commit import RUN_ALONE
from loyalty_engine.storage.unit_of_work import UnitOfWork

R = TypeVar("R")
M = TypeVar("M", bound=Message)

MAX_ATTEMPTS = 5
MAX_REQUEST_ID = 128
# PostgreSQL: serialization failure, deadlock, unique violation raced past ON CONFLICT.
_RETRY_SQLSTATES = {"40001", "40P01"}


def _is_transient_conflict(exc: BaseException) -> bool:
    """A conflict worth running the transaction again for, or a pooled connection that had
    died (the server restarted): SQLAlchemy invalidated it, and the next is a new one."""
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _RETRY_SQLSTATES:
        return True
    return "database is locked" in str(orig)


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))


def check_request_id(request_id: str) -> str:
    """The request id, if it is usable as an idempotency key."""
    if not request_id:
        raise InvalidArgument.for_field(
            "request_id", "is required (a unique id per logical request)"
        )
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidArgument.for_field(
            "request_id", f"must be 1-{MAX_REQUEST_ID} printable characters"
        )
    return request_id


def fingerprint(method: str, request: Message) -> str:
    """A stable digest of the method and the request's canonical bytes."""
    digest = hashlib.sha256(method.encode())
    digest.update(b"\0")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _reused(method: str) -> InvalidArgument:
    return InvalidArgument(
        reason="REQUEST_ID_REUSED",
        message="request_id was used before for a different request",
        metadata={"field": "request_id", "method": method},
    )


async def replay(
    app: App,
    *,
    method: str,
    request: Message,
    request_id: str,
    program_id: str,
    member_id: str,
    response_type: type[M],
) -> M | None:
    """The stored first response to a request id, or None if it is new (nothing is claimed).

    For work too long for one transaction (a whole-program rule run): it looks first, runs
    in transactions of its own, then records its response with `exactly_once`.
    """
    check_request_id(request_id)
    stored = await in_transaction(
        app, lambda uow: uow.idempotency.get(program_id, member_id, request_id)
    )
    if stored is None or stored.response is None:
        return None
    if stored.fingerprint != fingerprint(method, request):
        raise _reused(stored.method)
    return response_type.FromString(stored.response)


async def exactly_once(
    app: App,
    *,
    method: str,
    request: Message,
    request_id: str,
    program_id: str,
    member_id: str,
    work: Callable[[UnitOfWork], Awaitable[R]],
    encode: Callable[[R], M],
    response_type: type[M],
    on_commit: Callable[[R], None] | None = None,
    batch: bool | None = None,
) -> M:
    """Run `work` once per request id; a repeat returns the first response.

    `on_commit` runs once, after the first successful commit (business metrics), never on
    a replay. Writes on one member (`member_id` given) and those that ask with `batch` join
    a group commit when the database has one (`storage.group_commit`): they share a
    transaction and a COMMIT with concurrent writes, each in a savepoint of its own;
    program-level writes, rare and some long, always run alone.
    """
    check_request_id(request_id)
    print_ = fingerprint(method, request)

    async def attempt(uow: UnitOfWork) -> tuple[M, R | None, bool]:
        """(response, result, fresh): fresh is False for a replayed response."""
        stored = await uow.idempotency.claim(
            program_id, member_id, request_id, method, print_, app.clock()
        )
        if stored is not None:
            if stored.fingerprint != print_ or stored.response is None:
                raise _reused(stored.method)
            return response_type.FromString(stored.response), None, False
        result = await work(uow)
        response = encode(result)
        await uow.idempotency.complete(
            program_id, member_id, request_id, response.SerializeToString()
        )
        return response, result, True

    group = app.db.group_commit
    if group is not None and (bool(member_id) if batch is None else batch):
        outcome = await group.run((program_id, member_id or request_id), attempt)
        if outcome is not RUN_ALONE:
            return _answer(outcome, on_commit)
    for attempt_no in range(MAX_ATTEMPTS):
        try:
            async with app.db.unit_of_work() as uow:
                outcome = await attempt(uow)
                if outcome[2]:
                    await uow.commit()
                return _answer(outcome, on_commit)
        except sa_exc.DBAPIError as exc:
            if not _is_transient_conflict(exc) or attempt_no == MAX_ATTEMPTS - 1:
                raise
            await _backoff(attempt_no)
    raise Aborted(
        "CONCURRENT_UPDATE", "too many concurrent updates; retry with the same request_id"
    )


def _answer(outcome: tuple[M, R | None, bool], on_commit: Callable[[R], None] | None) -> M:
    response, result, fresh = outcome
    if fresh and on_commit is not None:
        on_commit(result)  # type: ignore[arg-type]
    return response


async def in_transaction(
    app: App,
    work: Callable[[UnitOfWork], Awaitable[R]],
    *,
    commit: bool = False,
    read_only: bool | None = None,
    autocommit: bool = False,
) -> R:
    """Run `work` in one transaction (committed if asked), retrying transient conflicts.

    Without `commit` the work is taken to only read, and the transaction says so (no write
    lock on SQLite); work that writes and then throws its writes away (a dry run) passes
    `read_only=False`. Work whose every statement stands alone (one snapshot each is
    enough, such as a balance read in one statement) passes `autocommit` and saves the
    BEGIN and ROLLBACK round trips on PostgreSQL.
    """
    for attempt in range(MAX_ATTEMPTS):
        try:
            only_reads = (not commit) if read_only is None else read_only
            async with app.db.unit_of_work(read_only=only_reads, autocommit=autocommit) as uow:
                result = await work(uow)
                if commit:
                    await uow.commit()
                return result
        except sa_exc.DBAPIError as exc:
            if not _is_transient_conflict(exc) or attempt == MAX_ATTEMPTS - 1:
                raise
            await _backoff(attempt)
    raise Aborted("CONCURRENT_UPDATE", "too many concurrent updates; retry")
