"""The one place where errors become gRPC statuses.

Domain errors carry a stable reason; here they get their status code and travel as
``google.rpc.Status`` with an ``ErrorInfo`` (and ``BadRequest`` field violations for bad
input). Database outages become UNAVAILABLE. Anything else is a bug: it is logged with
its traceback and answered INTERNAL without internals in the message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import exc as sa_exc

from loyalty_engine.domain import errors as de

log = logging.getLogger(__name__)

ERROR_DOMAIN = "loyalty-engine"

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
    (de.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
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
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    details = [_pack(info)]
    if isinstance(error, de.InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        details.append(_pack(bad))
    return status_pb2.Status(code=code.value[0], message=error.message, details=details)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _trailers(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return (("grpc-status-details-bin", status.SerializeToString()),)


def is_database_outage(exc: BaseException) -> bool:
    """Whether an exception means the database could not be reached (worth a retry later)."""
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return True
    name = type(exc).__name__
    return name in {
        "CannotConnectNowError",
        "ConnectionDoesNotExistError",
        "PostgresConnectionError",
    }


def translate(exc: BaseException) -> de.DomainError | None:
    """The domain error an exception stands for, or None for a bug."""
    if isinstance(exc, de.DomainError):
        return exc
    if is_database_outage(exc):
        return de.Unavailable(
            "DATABASE_UNAVAILABLE", "the database is unavailable; retry with the same request_id"
        )
    return None


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str
) -> None:
    """End the call with the status `exc` maps to (never returns)."""
    error = translate(exc)
    if error is None:
        log.error("internal error in %s", method, exc_info=exc)
        error = de.DomainError("INTERNAL", "internal error")
        code = grpc.StatusCode.INTERNAL
    else:
        code = status_code(error)
    status = rich_status(code, error)
    await context.abort(code, error.message, trailing_metadata=_trailers(status))


Req = TypeVar("Req")
Resp = TypeVar("Resp")


def grpc_method(
    func: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Decorate a unary servicer method so every error leaves through `abort`."""

    @functools.wraps(func)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            return await func(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, func.__qualname__)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapper


def grpc_stream_method(
    func: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    """Decorate a server-streaming servicer method so every error leaves through `abort`."""

    @functools.wraps(func)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        try:
            async for item in func(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, func.__qualname__)

    return wrapper
