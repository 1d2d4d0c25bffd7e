"""The grpc.aio server: servicers, health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from loyalty_engine.api.servicers.members import MemberServicer
from loyalty_engine.api.servicers.offers import OfferServicer
from loyalty_engine.api.servicers.points import PointsServicer
from loyalty_engine.api.servicers.programs import ProgramServicer
from loyalty_engine.api.servicers.rewards import RewardServicer
from loyalty_engine.api.servicers.segments import SegmentServicer
from loyalty_engine.bootstrap import App
from loyalty_engine.config import Settings
from loyalty_engine.gen.loyalty.v1 import (
    member_service_pb2,
    member_service_pb2_grpc,
    offer_service_pb2,
    offer_service_pb2_grpc,
    points_service_pb2,
    points_service_pb2_grpc,
    program_service_pb2,
    program_service_pb2_grpc,
    reward_service_pb2,
    reward_service_pb2_grpc,
    segment_service_pb2,
    segment_service_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    program_service_pb2.DESCRIPTOR.services_by_name["ProgramService"].full_name,
    member_service_pb2.DESCRIPTOR.services_by_name["MemberService"].full_name,
    points_service_pb2.DESCRIPTOR.services_by_name["PointsService"].full_name,
    reward_service_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name,
    segment_service_pb2.DESCRIPTOR.services_by_name["SegmentService"].full_name,
    offer_service_pb2.DESCRIPTOR.services_by_name["OfferService"].full_name,
)


@dataclass
class RunningServer:
    """A started server and the port it listens on."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def stop(self, grace: float) -> None:
        """Stop taking calls, report NOT_SERVING, let in-flight calls finish within `grace`."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS with a client CA) from the configured files; None for plaintext."""
    if not settings.tls_cert_file:
        return None
    key = Path(settings.tls_key_file).read_bytes()
    cert = Path(settings.tls_cert_file).read_bytes()
    client_ca = (
        Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def start_server(
    app: App, address: str | None = None, *, reuse_port: bool = False
) -> RunningServer:
    """Build and start the server on `address` (port 0 picks a free port)."""
    settings = app.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        # Beyond this many calls in flight, new ones get RESOURCE_EXHAUSTED at once.
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    program_service_pb2_grpc.add_ProgramServiceServicer_to_server(ProgramServicer(app), server)
    member_service_pb2_grpc.add_MemberServiceServicer_to_server(MemberServicer(app), server)
    points_service_pb2_grpc.add_PointsServiceServicer_to_server(PointsServicer(app), server)
    reward_service_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(app), server)
    segment_service_pb2_grpc.add_SegmentServiceServicer_to_server(SegmentServicer(app), server)
    offer_service_pb2_grpc.add_OfferServiceServicer_to_server(OfferServicer(app), server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    target = address or settings.listen_address
    credentials = server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(target)
    else:
        port = server.add_secure_port(target, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {target}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer)


async def serve_until_signalled(
    app: App, running: RunningServer, background: list[asyncio.Task[None]]
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "shutting down: finishing in-flight calls for up to %.1fs",
        app.settings.grace_period_seconds,
    )
    for task in background:
        task.cancel()
    await running.stop(app.settings.grace_period_seconds)
    await asyncio.gather(*background, return_exceptions=True)
