"""Services of the contract whose issues have not landed: every RPC answers UNIMPLEMENTED.

They are registered anyway so reflection lists the whole v1 surface and clients get a clear
status with an ErrorInfo, instead of a bare "method not found".
"""

from __future__ import annotations

from typing import Any

import grpc

from loyalty_engine.api.errors import abort
from loyalty_engine.domain.errors import Unimplemented
from loyalty_engine.gen.loyalty.v1 import offer_service_pb2, segment_service_pb2

# service full name -> (module with the descriptor, the issue that builds it)
PENDING_SERVICES: dict[str, tuple[Any, str, int]] = {
    "loyalty.v1.SegmentService": (segment_service_pb2, "Segments, insights and metrics", 5),
    "loyalty.v1.OfferService": (offer_service_pb2, "Offers and rules", 6),
}


def _unary(feature: str, issue: int) -> Any:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, Unimplemented.for_issue(feature, issue), feature)

    return handler


def _server_stream(feature: str, issue: int) -> Any:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, Unimplemented.for_issue(feature, issue), feature)
        yield  # pragma: no cover - makes this an async generator

    return handler


def pending_handlers() -> list[grpc.GenericRpcHandler]:
    """Generic handlers answering UNIMPLEMENTED for every method of the pending services."""
    handlers: list[grpc.GenericRpcHandler] = []
    for full_name, (module, feature, issue) in PENDING_SERVICES.items():
        service = module.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[1]]
        methods: dict[str, grpc.RpcMethodHandler] = {}
        for method in service.methods:
            request_cls = _message_class(method.input_type)
            response_cls = _message_class(method.output_type)
            kwargs = {
                "request_deserializer": request_cls.FromString,
                "response_serializer": response_cls.SerializeToString,
            }
            if method.server_streaming and not method.client_streaming:
                methods[method.name] = grpc.unary_stream_rpc_method_handler(
                    _server_stream(feature, issue), **kwargs
                )
            elif method.client_streaming:
                methods[method.name] = grpc.stream_unary_rpc_method_handler(
                    _unary(feature, issue), **kwargs
                )
            else:
                methods[method.name] = grpc.unary_unary_rpc_method_handler(
                    _unary(feature, issue), **kwargs
                )
        handlers.append(grpc.method_handlers_generic_handler(full_name, methods))
    return handlers


def _message_class(descriptor: Any) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)
