"""Who may call what, over which transport, and what the service tells its operators."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from loyalty_engine.api.auth import METHOD_SCOPES
from loyalty_engine.bootstrap import App, build_app
from loyalty_engine.config import load_settings
from loyalty_engine.gen.loyalty.v1 import (
    member_service_pb2,
    offer_service_pb2,
    points_service_pb2,
    program_service_pb2,
    reward_service_pb2,
    segment_service_pb2,
)
from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp

MODULES = (
    program_service_pb2,
    member_service_pb2,
    points_service_pb2,
    reward_service_pb2,
    offer_service_pb2,
    segment_service_pb2,
)
RESOURCE_FIELDS = ("parent", "name", "member", "program", "reward", "segment")
SCOPE_ENUM = {
    "pos": pp.API_KEY_SCOPE_POS,
    "shop": pp.API_KEY_SCOPE_SHOP,
    "marketing": pp.API_KEY_SCOPE_MARKETING,
    "admin": pp.API_KEY_SCOPE_ADMIN,
}


def every_method() -> list[tuple[str, Any]]:
    methods = []
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods.append((f"{service.name}/{method.name}", method))
    return methods


METHODS = every_method()


def test_every_method_has_a_scope_rule() -> None:
    assert {name for name, _ in METHODS} == set(METHOD_SCOPES)


def _request_in(method: Any, program_id: str) -> Any:
    request = message_factory.GetMessageClass(method.input_type)()
    for field in RESOURCE_FIELDS:
        if field in request.DESCRIPTOR.fields_by_name:
            fd = request.DESCRIPTOR.fields_by_name[field]
            if fd.type == fd.TYPE_STRING and not fd.is_repeated:
                setattr(request, field, f"programs/{program_id}/members/m-1")
    for nested in ("program", "member", "tier", "earning_rule", "reward"):
        fd = request.DESCRIPTOR.fields_by_name.get(nested)
        if fd is not None and fd.type == fd.TYPE_MESSAGE:
            getattr(request, nested).name = f"programs/{program_id}/x/y"
    if "request_id" in request.DESCRIPTOR.fields_by_name:
        request.request_id = "auth-test"
    return request


async def _call(
    channel: grpc.aio.Channel, full_name: str, method: Any, request: Any, token: str | None
) -> grpc.StatusCode:
    service, name = full_name.split("/")
    path = f"/loyalty.v1.{service}/{name}"
    response_cls = message_factory.GetMessageClass(method.output_type)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        if method.client_streaming:
            call = channel.stream_unary(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_cls.FromString,
            )
            await call(iter([request]), metadata=metadata, timeout=10)
        elif method.server_streaming:
            call = channel.unary_stream(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_cls.FromString,
            )
            async for _ in call(request, metadata=metadata, timeout=10):
                pass
        else:
            call = channel.unary_unary(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_cls.FromString,
            )
            await call(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _key(scenario: Any, program: str, *scopes: str, **fields: Any) -> tuple[str, str]:
    reply = await scenario.client.programs.CreateApiKey(
        pp.CreateApiKeyRequest(
            request_id=f"key-{program}-{'-'.join(scopes)}-{len(fields)}",
            parent=f"programs/{program}",
            api_key=pp.ApiKey(label="test", scopes=[SCOPE_ENUM[s] for s in scopes], **fields),
        )
    )
    return reply.secret, reply.api_key.name


async def test_every_rpc_refuses_missing_revoked_wrong_scope_and_foreign_keys(scenario) -> None:
    mine = await scenario.program()
    other = await scenario.program()
    admin_of_other, _ = await _key(scenario, other, "admin")
    revoked, revoked_name = await _key(scenario, mine, "admin", "pos", "shop", "marketing")
    await scenario.client.programs.RevokeApiKey(
        pp.RevokeApiKeyRequest(request_id="revoke-1", name=revoked_name)
    )
    single_scope = {s: (await _key(scenario, mine, s))[0] for s in SCOPE_ENUM}
    channel = grpc.aio.insecure_channel(scenario.client.address)
    try:
        for full_name, method in METHODS:
            request = _request_in(method, mine)
            assert (
                await _call(channel, full_name, method, request, None)
                == grpc.StatusCode.UNAUTHENTICATED
            ), full_name
            assert (
                await _call(channel, full_name, method, request, "lk_nonsense")
                == grpc.StatusCode.UNAUTHENTICATED
            )
            assert (
                await _call(channel, full_name, method, request, revoked)
                == grpc.StatusCode.UNAUTHENTICATED
            ), full_name
            allowed = METHOD_SCOPES[full_name]
            for scope, token in single_scope.items():
                if scope not in allowed:
                    code = await _call(channel, full_name, method, request, token)
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (full_name, scope, code)
            if "admin" in allowed:
                # A key of another program never reaches this one: it does not even exist for it.
                code = await _call(channel, full_name, method, request, admin_of_other)
                assert code == grpc.StatusCode.NOT_FOUND, (full_name, code)
    finally:
        await channel.close()


async def test_scopes_fit_the_callers(scenario) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    pos, _ = await _key(scenario, program, "pos")
    shop, _ = await _key(scenario, program, "shop")
    channel = grpc.aio.insecure_channel(scenario.client.address)
    from loyalty_engine.gen.loyalty.v1 import points_service_pb2_grpc

    points = points_service_pb2_grpc.PointsServiceStub(channel)
    try:
        request = scenario.purchase_request(member, 1_000)
        reply = await points.RecordPurchase(request, metadata=(("authorization", f"Bearer {pos}"),))
        assert reply.points_awarded == 10
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await points.RecordPurchase(
                scenario.purchase_request(member, 1_000),
                metadata=(("authorization", f"Bearer {shop}"),),
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        balance = await points.GetBalance(
            points_service_pb2.GetBalanceRequest(member=member),
            metadata=(("authorization", f"Bearer {shop}"),),
        )
        assert balance.balance.available_points == 10
    finally:
        await channel.close()


async def test_keys_are_shown_once_stored_hashed_listed_and_expire(scenario, app, clock) -> None:
    import sqlalchemy as sa

    from loyalty_engine.storage import schema

    program = await scenario.program()
    future = clock.now + dt.timedelta(days=1)
    from google.protobuf import timestamp_pb2

    expire = timestamp_pb2.Timestamp()
    expire.FromDatetime(future.replace(tzinfo=None))
    secret, name = await _key(scenario, program, "shop", expire_time=expire)
    assert secret.startswith("lk_") and len(secret) > 50

    listed = await scenario.client.programs.ListApiKeys(
        pp.ListApiKeysRequest(parent=f"programs/{program}")
    )
    assert [k.name for k in listed.api_keys] == [name]
    assert secret not in str(listed)
    async with app.db.engine.connect() as conn:
        rows = (await conn.execute(sa.select(schema.api_keys))).all()
    assert all(secret not in str(tuple(row)) for row in rows)
    # The secret part is everything after the key id; it may itself contain underscores.
    assert all(secret.split("_", 2)[2] not in str(tuple(row)) for row in rows)

    channel = grpc.aio.insecure_channel(scenario.client.address)
    try:
        request = pp.ListTiersRequest(parent=f"programs/{program}")
        assert (
            await _call(
                channel,
                "ProgramService/ListTiers",
                program_service_pb2.DESCRIPTOR.services_by_name["ProgramService"].methods_by_name[
                    "ListTiers"
                ],
                request,
                secret,
            )
            == grpc.StatusCode.OK
        )
        clock.advance(days=2)
        assert (
            await _call(
                channel,
                "ProgramService/ListTiers",
                program_service_pb2.DESCRIPTOR.services_by_name["ProgramService"].methods_by_name[
                    "ListTiers"
                ],
                request,
                secret,
            )
            == grpc.StatusCode.UNAUTHENTICATED
        )
    finally:
        await channel.close()


async def test_concurrency_limit_answers_resource_exhausted(database_url: str, clock: Any) -> None:
    from loyalty_engine.api.server import start_server
    from loyalty_engine.storage.migrate import upgrade

    app = build_app(
        load_settings(
            database_url=database_url, plaintext=True, auth_required=False, max_concurrent_rpcs=1
        ),
        clock=clock,
    )
    await upgrade(app.db)
    running = await start_server(app, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = program_service_pb2.DESCRIPTOR.services_by_name["ProgramService"]
            method = stub.methods_by_name["ListPrograms"]
            codes = await asyncio.gather(
                *(
                    _call(
                        channel,
                        "ProgramService/ListPrograms",
                        method,
                        pp.ListProgramsRequest(),
                        None,
                    )
                    for _ in range(40)
                )
            )
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        await running.stop(1)
        await app.close()


async def test_oversize_message_is_refused(client) -> None:
    huge = pp.CreateProgramRequest(
        request_id="big", program_id="big", program=pp.Program(display_name="x" * (5 * 1024 * 1024))
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.programs.CreateProgram(huge)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_deadline_that_passes_leaves_the_request_retryable_once(scenario) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    request = scenario.purchase_request(member, 5_000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scenario.client.points.RecordPurchase(request, timeout=0.0005)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.2)

    reply = await scenario.client.points.RecordPurchase(request)

    assert reply.points_awarded == 50
    assert len(await scenario.ledger(member)) == 1
    await scenario.assert_balance_matches_ledger(member)


# --- TLS and mutual TLS -----------------------------------------------------------------------


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made for the test."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)

    files = {"ca": directory / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, server in (("server", True), ("client", False)):
        cert, key = leaf(who, server)
        files[f"{who}_cert"] = directory / f"{who}.pem"
        files[f"{who}_key"] = directory / f"{who}.key"
        files[f"{who}_cert"].write_bytes(cert)
        files[f"{who}_key"].write_bytes(key)
    return files


@pytest.fixture
async def tls_server(
    tmp_path: Path, sqlite_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[dict[str, Path], int]]:
    from loyalty_engine.api.server import start_server
    from loyalty_engine.storage.migrate import upgrade

    files = _certificates(tmp_path)
    mutual = getattr(request, "param", False)
    settings = load_settings(
        database_url=sqlite_url,
        tls_cert_file=str(files["server_cert"]),
        tls_key_file=str(files["server_key"]),
        tls_client_ca_file=str(files["ca"]) if mutual else "",
        auth_required=False,
    )
    app: App = build_app(settings)
    await upgrade(app.db)
    running = await start_server(app, "127.0.0.1:0")
    try:
        yield files, running.port
    finally:
        await running.stop(1)
        await app.close()


async def _health_over(port: int, credentials: grpc.ChannelCredentials) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_tls_end_to_end(tls_server) -> None:
    files, port = tls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=files["ca"].read_bytes())
    assert await _health_over(port, credentials) == "SERVING"
    with pytest.raises(grpc.aio.AioRpcError):  # plaintext to a TLS port fails
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )


@pytest.mark.parametrize("tls_server", [True], indirect=True)
async def test_mutual_tls_refuses_a_client_without_a_certificate(tls_server) -> None:
    files, port = tls_server
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=files["ca"].read_bytes(),
        private_key=files["client_key"].read_bytes(),
        certificate_chain=files["client_cert"].read_bytes(),
    )
    assert await _health_over(port, with_cert) == "SERVING"
    without_cert = grpc.ssl_channel_credentials(root_certificates=files["ca"].read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health_over(port, without_cert)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# --- metrics and logs -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_metrics_count_rpcs_and_business_events(scenario, app, clock) -> None:
    server = app.telemetry.serve(f"127.0.0.1:{_free_port()}")
    try:
        program = await scenario.program()
        joined = (clock.now - dt.timedelta(days=4 * 366)).isoformat().replace("+00:00", "Z")
        member = await scenario.member(program, joinTime=joined)
        # A member of four years who buys gets the LOYALTY15 thank-you offer (rules/).
        await scenario.purchase(member, 12_300)
        port = server.server_port
        text = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
    finally:
        server.shutdown()
    assert (
        'loyalty_rpcs_total{code="OK",method="loyalty.v1.PointsService/RecordPurchase"} 1.0' in text
    )
    assert "loyalty_points_awarded_total 123.0" in text
    assert "loyalty_offers_issued_total 1.0" in text
    assert "loyalty_rpc_duration_seconds_bucket" in text
    assert "loyalty_db_pool_in_use" in text
    # The enrollment and the purchase went through group commit, each in one batch or more.
    writes = re.search(r"^loyalty_group_commit_writes (\S+)$", text, re.MULTILINE)
    batches = re.search(r"^loyalty_group_commit_batches (\S+)$", text, re.MULTILINE)
    assert writes and batches
    assert float(writes[1]) >= 2 and 1 <= float(batches[1]) <= float(writes[1])


async def test_logs_carry_no_personal_data_and_no_keys(scenario, operator_key, capsys) -> None:
    from loyalty_engine.api.telemetry import configure_logging

    configure_logging("INFO")
    try:
        await _log_personal_data(scenario, operator_key, capsys)
    finally:
        configure_logging("WARNING")  # back to the suite's quiet default (tests/conftest.py)


async def _log_personal_data(scenario, operator_key, capsys) -> None:
    program = await scenario.program()
    personal = {
        "givenName": "Zebulon",
        "familyName": "Quimby",
        "email": "zebulon.quimby@example.org",
        "phone": "+4915112345678",
        "birthDate": {"year": 1979, "month": 2, "day": 28},
    }
    member = await scenario.member(program, **personal)
    await scenario.purchase(member, 4_200)
    from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as mp

    await scenario.client.members.LookupMember(
        mp.LookupMemberRequest(parent=f"programs/{program}", email="zebulon.quimby@example.org")
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await scenario.member(program, email="not an email Zebulon")
    captured = capsys.readouterr()
    logs = captured.err + captured.out
    assert '"event": "rpc"' in logs and "RecordPurchase" in logs
    for secret in ("Zebulon", "Quimby", "zebulon.quimby", "+4915112345678", "1979", operator_key):
        assert secret not in logs, secret


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_work_stops_and_rolls_back_when_the_deadline_passes(scenario, app) -> None:
    """The member's row is held by another transaction, so the purchase waits past its deadline."""
    import sqlalchemy as sa

    program = await scenario.program()
    member = await scenario.member(program)
    member_id = member.rsplit("/", 1)[1]
    request = scenario.purchase_request(member, 5_000)
    async with app.db.engine.connect() as blocker:
        await blocker.execute(
            sa.text(
                "SELECT 1 FROM member_accounts WHERE program_id = :p AND member_id = :m FOR UPDATE"
            ),
            {"p": program, "m": member_id},
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scenario.client.points.RecordPurchase(request, timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.3)  # the server has given up on the call by now
        await blocker.rollback()
    await asyncio.sleep(0.3)
    assert await scenario.ledger(member) == []  # nothing was written

    reply = await scenario.client.points.RecordPurchase(request)  # the retry runs afresh

    assert reply.points_awarded == 50
    assert len(await scenario.ledger(member)) == 1
