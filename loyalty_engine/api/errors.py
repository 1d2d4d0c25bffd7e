"""The one place where errors become gRPC statuses.

Domain errors carry a stable reason; here they get their status code and travel as
``google.rpc.Status`` with an ``ErrorInfo`` (and ``BadRequest`` field violations for bad
input). Database outages become UNAVAILABLE. Anything else is a bug: it is logged with
its traceback and answered INTERNAL without internals in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import exc as sa_exc

from loyalty_engine.api.auth import referenced_programs
from loyalty_engine.api.converters.common import reject_nul
from loyalty_engine.domain import errors as de

log = logging.getLogger(__name__)

ERROR_DOMAIN = "loyalty-engine"

# A status travels in HTTP/2 headers, which peers cap at 16 KiB in all (grpc-message is
# percent-encoded, the details base64-encoded), and messages echo client input such as ids
# and mask paths; past the cap the client gets RESOURCE_EXHAUSTED "Stream removed" instead.
MAX_MESSAGE_BYTES = 512
MAX_DETAIL_BYTES = 256
MAX_VIOLATIONS = 10

_CODES: list[tuple[type[de.DomainError], grpc.StatusCode]] = [
    (de.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (de.NotFound, grpc.StatusCode.NOT_FOUND),
    (de.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (de.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (de.Aborted, grpc.StatusCode.ABORTED),
    (de.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (de.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (de.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (de.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (de.Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_code(error: de.DomainError) -> grpc.StatusCode:
    """The gRPC code for a domain error."""
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def rich_status(code: grpc.StatusCode, error: de.DomainError) -> status_pb2.Status:
    """A google.rpc.Status with ErrorInfo, and BadRequest for field violations."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=ERROR_DOMAIN,
        metadata={k: _bounded(v, MAX_DETAIL_BYTES) for k, v in error.metadata.items()},
    )
    details = [_pack(info)]
    if isinstance(error, de.InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_bounded(v.field, MAX_DETAIL_BYTES),
                    description=_bounded(v.description, MAX_DETAIL_BYTES),
                )
                for v in error.violations[:MAX_VIOLATIONS]
            ]
        )
        details.append(_pack(bad))
    return status_pb2.Status(
        code=code.value[0], message=_bounded(error.message, MAX_MESSAGE_BYTES), details=details
    )


def _bounded(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, marked with an ellipsis when cut."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "\u2026"


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _trailers(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return (("grpc-status-details-bin", status.SerializeToString()),)


# SQLSTATEs of a server going away or not up yet: connection exceptions (class 08),
# admin_shutdown and crash_shutdown (57P01, 57P02: a fast or immediate restart), and
# cannot_connect_now (57P03: starting up, shutting down, in recovery).
_OUTAGE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
_OUTAGE_NAMES = {
    "CannotConnectNowError",
    "ConnectionDoesNotExistError",
    "PostgresConnectionError",
}


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc`, the driver error it wraps (`orig`), and their causes, without cycles."""
    chain: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(chain) < 10:
        link = todo.pop(0)
        if link is None or any(link is seen for seen in chain):
            continue
        chain.append(link)
        orig = getattr(link, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, link.__cause__]
    return chain


def is_database_outage(exc: BaseException) -> bool:
    """Whether an exception means the database could not be reached (worth a retry later)."""
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return True
    # SQLAlchemy wraps some driver errors in a plain DBAPIError (asyncpg's
    # CannotConnectNowError while PostgreSQL starts up or shuts down): look beneath.
    for link in _causes(exc):
        if type(link).__name__ in _OUTAGE_NAMES:
            return True
        code = getattr(link, "sqlstate", None) or getattr(link, "pgcode", None)
        if isinstance(code, str) and code.startswith(_OUTAGE_SQLSTATES):
            return True
    return False


def call_already_ended(exc: BaseException) -> bool:
    """Whether `exc` is gRPC failing to send on a call that is over (ExecuteBatchError)."""
    return any(cls.__name__ == "ExecuteBatchError" for cls in type(exc).__mro__)


def translate(exc: BaseException) -> de.DomainError | None:
    """The domain error an exception stands for, or None for a bug."""
    if isinstance(exc, de.DomainError):
        return exc
    if is_database_outage(exc):
        return de.Unavailable(
            "DATABASE_UNAVAILABLE", "the database is unavailable; retry with the same request_id"
        )
    return None


def classify(exc: BaseException, method: str) -> tuple[grpc.StatusCode, de.DomainError]:
    """The status code and domain error an exception ends a call with (bugs are logged)."""
    error = translate(exc)
    if error is None:
        log.error("internal error in %s", method, exc_info=exc)
        return grpc.StatusCode.INTERNAL, de.DomainError("INTERNAL", "internal error")
    return status_code(error), error


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str
) -> None:
    """End the call with the status `exc` maps to (never returns)."""
    code, error = classify(exc, method)
    await abort_with(context, code, error)


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, error: de.DomainError
) -> None:
    """End the call with `code` and a rich status for `error` (never returns)."""
    status = rich_status(code, error)
    await context.abort(code, status.message, trailing_metadata=_trailers(status))


class RpcBoundary:
    """Around every RPC: authorization, the error mapping, metrics and the log line."""

    def __init__(self, app: Any, method: str) -> None:
        self.app = app
        self.method = method
        self.code = "OK"
        self.reason = ""
        self.request_id = ""
        self.program = ""
        self._started = time.perf_counter()

    def note_request(self, request: Any) -> None:
        """Remember what the log line may say about the request (ids only, never data)."""
        request_id = str(getattr(request, "request_id", "") or "")[:128]
        self.request_id = request_id if request_id.isprintable() else "<unprintable>"
        self.program = next(iter(referenced_programs(request)), "")[:64]

    async def authorize(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Check the caller's key (skipped when auth is switched off)."""
        if self.app.auth is not None:
            await self.app.auth.authorize(self.method, request, context)

    async def fail(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        """Abort the call for `exc`, remembering its code for the log line."""
        code, error = classify(exc, self.method)
        self.code, self.reason = code.name, error.reason
        await abort_with(context, code, error)

    @contextlib.asynccontextmanager
    async def guard(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """Every error leaves through `fail` (an abort); the call is counted and logged once."""
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            self.code = "CANCELLED"
            raise
        except Exception as exc:
            if call_already_ended(exc):
                # Sending the status failed because the call had ended (its deadline passed
                # or the client went away): nobody to answer, and not a bug. gRPC ignores
                # this error for a call the client closed.
                if self.code == "OK":
                    self.code = "CANCELLED"
                raise
            await self.fail(context, exc)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            self.finish()

    def finish(self) -> None:
        """Count and log the call."""
        self.app.telemetry.observe(
            self.method,
            self.code,
            time.perf_counter() - self._started,
            self.request_id,
            self.program,
            self.reason,
        )


Req = TypeVar("Req")
Resp = TypeVar("Resp")


def grpc_method(
    func: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Decorate a unary servicer method: authorize, map errors, observe."""

    @functools.wraps(func)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        boundary = RpcBoundary(self.app, f"{self.SERVICE}/{func.__name__}")
        async with boundary.guard(context):
            boundary.note_request(request)
            await boundary.authorize(request, context)
            reject_nul(request)  # type: ignore[arg-type]
            # The client's deadline bounds the work: when it passes, the work is cancelled
            # and its transaction rolls back, instead of finishing for nobody.
            deadline = asyncio.timeout(context.time_remaining())
            try:
                async with deadline:
                    return await func(self, request, context)
            except TimeoutError:
                if not deadline.expired():
                    raise  # a timeout of the work's own (the database): handled by the guard
                boundary.code = "DEADLINE_EXCEEDED"
                await abort_with(
                    context,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    de.DomainError("DEADLINE_EXCEEDED", "the deadline passed; nothing was written"),
                )
        raise AssertionError("unreachable: the call returned or aborted")

    return wrapper


def grpc_stream_method(
    func: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    """Decorate a server-streaming servicer method: authorize, map errors, observe."""

    @functools.wraps(func)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        boundary = RpcBoundary(self.app, f"{self.SERVICE}/{func.__name__}")
        async with boundary.guard(context):
            boundary.note_request(request)
            await boundary.authorize(request, context)
            reject_nul(request)  # type: ignore[arg-type]
            async for item in func(self, request, context):
                yield item

    return wrapper


def grpc_client_stream_method(
    func: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Decorate a client-streaming method: authorize the method; the handler checks tenants."""

    @functools.wraps(func)
    async def wrapper(
        self: Any, requests: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Resp:
        boundary = RpcBoundary(self.app, f"{self.SERVICE}/{func.__name__}")
        async with boundary.guard(context):
            await boundary.authorize(None, context)
            return await func(self, requests, context)
        raise AssertionError("unreachable: the call returned or aborted")

    return wrapper
