"""The server as a generic client sees it: reflection, health, errors, start and shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as mp
from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps
from loyalty_engine.gen.loyalty.v1 import points_service_pb2_grpc
from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
V1_SERVICES = {
    "loyalty.v1.ProgramService",
    "loyalty.v1.MemberService",
    "loyalty.v1.PointsService",
    "loyalty.v1.RewardService",
    "loyalty.v1.OfferService",
    "loyalty.v1.SegmentService",
}


async def _list_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    return {s.name for s in reply.list_services_response.service}


async def test_reflection_lists_every_service_and_health_is_serving(client) -> None:
    services = await _list_services(client.channel)

    assert services >= V1_SERVICES
    assert "grpc.health.v1.Health" in services
    health = health_pb2_grpc.HealthStub(client.channel)
    for name in ("", "loyalty.v1.PointsService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_describes_a_method_for_generic_clients(client) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    call = stub.ServerReflectionInfo()
    await call.write(
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="loyalty.v1.PointsService")
    )
    reply = await call.read()
    await call.done_writing()

    assert reply.file_descriptor_response.file_descriptor_proto


async def test_offer_service_is_served(scenario, errors) -> None:
    # It answered UNIMPLEMENTED until issue 6; an unknown offer is now NOT_FOUND.
    from loyalty_engine.gen.loyalty.v1 import offer_service_pb2, offer_service_pb2_grpc

    offers = offer_service_pb2_grpc.OfferServiceStub(scenario.client.channel)
    code, reason, _ = await errors(
        offers.GetOffer(offer_service_pb2.GetOfferRequest(name="programs/x/offers/y"))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "OFFER_NOT_FOUND")


async def test_empty_required_field_is_invalid_argument_naming_it(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)

    code, reason, fields = await errors(
        scenario.client.points.RecordPurchase(
            ps.RecordPurchaseRequest(request_id="r1", member=member)
        )
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason == "INVALID_FIELD"
    assert fields == ["purchase"]


async def test_malformed_name_and_unknown_program(scenario, errors) -> None:
    code, reason, fields = await errors(
        scenario.client.points.GetBalance(ps.GetBalanceRequest(member="members/42"))
    )
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME", ["member"])

    code, reason, _ = await errors(
        scenario.client.programs.GetProgram(pp.GetProgramRequest(name="programs/no-such-program"))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")

    code, reason, _ = await errors(
        scenario.client.members.GetMember(
            mp.GetMemberRequest(name="programs/no-such-program/members/m1")
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")


async def test_missing_request_id_is_rejected(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    request = scenario.purchase_request(member, 100, request_id="")
    request.request_id = ""

    code, reason, fields = await errors(scenario.client.points.RecordPurchase(request))

    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        ["request_id"],
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "loyalty_engine", *args]


async def _read_until(stream: asyncio.StreamReader, marker: str, seen: list[str]) -> str:
    while True:
        line = (await stream.readline()).decode()
        if not line:
            raise AssertionError(f"output ended before {marker!r}: {''.join(seen)}")
        seen.append(line)
        if marker in line:
            return line


async def _serve_and_check(tmp_path: Path, *extra: str) -> str:
    """Start `serve` as `make serve` does; check reflection, health and a keyed call; SIGTERM."""
    port = _free_port()
    env = {**os.environ, "LOYALTY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'loyalty.db'}"}
    process = await asyncio.create_subprocess_exec(
        *_cli(
            "serve",
            "--migrate",
            "--seed-demo",
            "--plaintext",
            "--listen-address",
            f"127.0.0.1:{port}",
            *extra,
        ),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        key_line = await asyncio.wait_for(
            _read_until(process.stdout, "demo admin key", seen), timeout=60
        )
        demo_key = key_line.rsplit(" ", 1)[1].strip()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
            assert await _list_services(channel) >= V1_SERVICES
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest()
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            points = points_service_pb2_grpc.PointsServiceStub(channel)
            request = ps.GetBalanceRequest(member="programs/demo/members/john")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await points.GetBalance(request)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            balance = await points.GetBalance(
                request, metadata=(("authorization", f"Bearer {demo_key}"),)
            )
            assert balance.balance.available_points > 0
        process.send_signal(signal.SIGTERM)
        raw, _ = await asyncio.wait_for(process.communicate(), timeout=30)
        output = "".join(seen) + raw.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    assert process.returncode == 0, output
    return output


async def test_serve_command_migrates_seeds_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """What `make serve` runs, on a fresh SQLite file: demo data and key, reflection, health."""
    output = await _serve_and_check(tmp_path)
    assert "grpcurl -plaintext" in output
    assert "shutting down" in output


async def test_serve_with_two_workers_shares_the_port(tmp_path: Path) -> None:
    await _serve_and_check(tmp_path, "--workers", "2")


def test_config_error_stops_start_with_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = {**os.environ, "LOYALTY_LISTEN_ADDRESS": "not-an-address"}
    result = subprocess.run(
        _cli("serve"), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "LOYALTY_LISTEN_ADDRESS" in lines[0]


def test_serve_refuses_plaintext_unless_asked(tmp_path: Path) -> None:
    env = {**os.environ, "LOYALTY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"}
    result = subprocess.run(
        _cli("serve"), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "LOYALTY_PLAINTEXT" in result.stderr
    assert "LOYALTY_TLS_CERT_FILE" in result.stderr


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    env = {**os.environ, "LOYALTY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"}
    result = subprocess.run(
        _cli("serve", "--plaintext", "--listen-address", f"127.0.0.1:{_free_port()}"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "loyalty-engine migrate" in result.stderr


async def test_sighup_reloads_rule_files_and_keeps_them_when_the_new_set_is_bad(
    tmp_path: Path,
) -> None:
    import shutil

    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    port = _free_port()
    env = {
        **os.environ,
        "LOYALTY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'loyalty.db'}",
        "LOYALTY_RULES_DIR": str(rules),
    }
    process = await asyncio.create_subprocess_exec(
        *_cli("serve", "--migrate", "--plaintext", "--listen-address", f"127.0.0.1:{port}"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        await asyncio.wait_for(_read_until(process.stdout, "is serving on", seen), timeout=60)
        (rules / "40-win-back.yaml").unlink()
        process.send_signal(signal.SIGHUP)
        line = await asyncio.wait_for(_read_until(process.stdout, "rules in force", seen), 30)
        assert "win-back" not in line and "loyalty15" in line
        (rules / "50-broken.yaml").write_text("id: broken\nwhen: 'tenure_years >'\n")
        process.send_signal(signal.SIGHUP)
        line = await asyncio.wait_for(_read_until(process.stdout, "refused", seen), 30)
        assert "50-broken.yaml" in line and "stay" in line
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    assert process.returncode == 0, "".join(seen)
