"""A deadline that passes after gRPC has ended the call is not an internal error.

When a call's deadline expires, gRPC may end the call before the handler's own timeout
fires; aborting then fails with ExecuteBatchError. That must not be logged and counted
as INTERNAL (a server bug): the call ended for a reason that is not the server's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from grpc._cython import cygrpc

from loyalty_engine.api.errors import call_already_ended, grpc_method
from loyalty_engine.gen.loyalty.v1 import points_service_pb2


class _Telemetry:
    def __init__(self) -> None:
        self.codes: list[str] = []

    def observe(self, method: str, code: str, *rest: Any) -> None:
        self.codes.append(code)


class _App:
    auth = None

    def __init__(self) -> None:
        self.telemetry = _Telemetry()


class _EndedContext:
    """A call whose deadline is about to pass, and that gRPC has ended by abort time."""

    def time_remaining(self) -> float:
        return 0.01

    async def abort(self, *args: Any, **kwargs: Any) -> None:
        raise cygrpc.ExecuteBatchError('Failed "execute_batch"')


class _Servicer:
    SERVICE = "PointsService"

    def __init__(self) -> None:
        self.app = _App()

    @grpc_method
    async def GetBalance(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(1)


async def test_abort_on_an_ended_call_is_counted_as_its_deadline(caplog) -> None:
    servicer = _Servicer()
    request = points_service_pb2.GetBalanceRequest(member="programs/p/members/m")

    with caplog.at_level(logging.ERROR), pytest.raises(cygrpc.ExecuteBatchError):
        await servicer.GetBalance(request, _EndedContext())

    assert servicer.app.telemetry.codes == ["DEADLINE_EXCEEDED"]
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


def test_only_execute_batch_errors_count_as_an_ended_call() -> None:
    assert call_already_ended(cygrpc.ExecuteBatchError("x"))
    assert not call_already_ended(cygrpc.InternalError("x"))
    assert not call_already_ended(ValueError("x"))
