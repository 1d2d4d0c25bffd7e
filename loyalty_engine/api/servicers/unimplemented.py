"""Services of the contract whose issues have not landed: every RPC answers UNIMPLEMENTED.

They are registered anyway so reflection lists the whole v1 surface and clients get a clear
status with an ErrorInfo (after the same key check as every other RPC), instead of a bare
"method not found".
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message_factory

from loyalty_engine.api.errors import RpcBoundary
from loyalty_engine.domain.errors import Unimplemented

# service full name -> (module with the descriptor, the feature, the issue that builds it)
PENDING_SERVICES: dict[str, tuple[Any, str, int]] = {}


async def _refuse(
    app: Any, method: str, feature: str, issue: int, request: Any, context: Any
) -> None:
    boundary = RpcBoundary(app, method)
    try:
        if request is not None:
            boundary.note_request(request)
        await boundary.authorize(request, context)
        raise Unimplemented.for_issue(feature, issue)
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        await boundary.fail(context, exc)
    finally:
        boundary.finish()


def pending_handlers(app: Any) -> list[grpc.GenericRpcHandler]:
    """Generic handlers answering UNIMPLEMENTED for every method of the pending services."""
    handlers: list[grpc.GenericRpcHandler] = []
    for full_name, (module, feature, issue) in PENDING_SERVICES.items():
        service = module.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[1]]
        methods: dict[str, grpc.RpcMethodHandler] = {}
        for m in service.methods:
            method = f"{full_name}/{m.name}"
            kwargs: dict[str, Any] = {
                "request_deserializer": message_factory.GetMessageClass(m.input_type).FromString,
                "response_serializer": message_factory.GetMessageClass(
                    m.output_type
                ).SerializeToString,
            }
            if m.client_streaming:

                async def stream_in(
                    requests: Any,
                    context: Any,
                    method: str = method,
                    feature: str = feature,
                    issue: int = issue,
                ) -> Any:
                    await _refuse(app, method, feature, issue, None, context)

                methods[m.name] = grpc.stream_unary_rpc_method_handler(stream_in, **kwargs)
            elif m.server_streaming:

                async def stream_out(
                    request: Any,
                    context: Any,
                    method: str = method,
                    feature: str = feature,
                    issue: int = issue,
                ) -> Any:
                    await _refuse(app, method, feature, issue, request, context)
                    yield  # pragma: no cover - makes this an async generator

                methods[m.name] = grpc.unary_stream_rpc_method_handler(stream_out, **kwargs)
            else:

                async def unary(
                    request: Any,
                    context: Any,
                    method: str = method,
                    feature: str = feature,
                    issue: int = issue,
                ) -> Any:
                    await _refuse(app, method, feature, issue, request, context)

                methods[m.name] = grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        handlers.append(grpc.method_handlers_generic_handler(full_name, methods))
    return handlers
