"""A database that is restarting is an outage (UNAVAILABLE, retry), never a bug (INTERNAL)."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from loyalty_engine.api.errors import classify, is_database_outage


def _as_sqlalchemy_raises_it(driver_error: Exception) -> sa_exc.DBAPIError:
    """The chain SQLAlchemy's asyncpg dialect builds when connecting fails this way."""
    adapted = AsyncAdapt_asyncpg_dbapi.Error(driver_error.args[0], driver_error)
    adapted.__cause__ = driver_error
    wrapped = sa_exc.DBAPIError.instance(
        None, None, adapted, AsyncAdapt_asyncpg_dbapi.Error, connection_invalidated=False
    )
    wrapped.__cause__ = adapted
    return wrapped


@pytest.mark.parametrize(
    "message",
    [
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is not yet accepting connections",
    ],
)
def test_cannot_connect_now_is_unavailable(message: str) -> None:
    error = _as_sqlalchemy_raises_it(asyncpg.exceptions.CannotConnectNowError(message))

    assert type(error) is sa_exc.DBAPIError  # a plain DBAPIError, not OperationalError
    assert is_database_outage(error)
    code, domain_error = classify(error, "PointsService/RecordPurchase")
    assert code is grpc.StatusCode.UNAVAILABLE
    assert domain_error.reason == "DATABASE_UNAVAILABLE"


def test_admin_shutdown_is_unavailable() -> None:
    error = _as_sqlalchemy_raises_it(
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")
    )

    assert classify(error, "PointsService/RecordPurchase")[0] is grpc.StatusCode.UNAVAILABLE


def test_other_database_errors_and_bugs_stay_internal() -> None:
    unique = _as_sqlalchemy_raises_it(
        asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint")
    )

    assert not is_database_outage(unique)
    assert classify(unique, "PointsService/RecordPurchase")[0] is grpc.StatusCode.INTERNAL
    assert classify(ValueError("a bug"), "PointsService/RecordPurchase")[0] is (
        grpc.StatusCode.INTERNAL
    )
