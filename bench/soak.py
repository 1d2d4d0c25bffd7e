"""Fault-injection soak of the loyalty-engine service (`make soak`).

Runs the real service (`python -m loyalty_engine serve --migrate`) on a private, throwaway
PostgreSQL cluster (initdb into a temp dir, trust auth, 127.0.0.1 on a free port, fsync
and synchronous_commit on; never the machine's shared cluster), and drives a steady
RecordPurchase and redemption load (RedeemReward; ReserveRedemption then Confirm or
Cancel) whose clients retry every error with the same request id and payload until a
definite answer. Meanwhile it injects faults:

- on a schedule, rotating: SIGKILL the service and start it again on the same port;
  restart PostgreSQL with `pg_ctl restart -m immediate` (a crash: acknowledged commits
  must survive recovery) or `-m fast`;
- all along, on a few percent of attempts: cancel the call 0-20 ms after it started, or
  give it a deadline of 1-10 ms so it expires while the server works.

Afterwards, with the service healthy, it re-sends a sample of acknowledged requests (the
replies must equal the first ones) and checks through SQL and the API that every
acknowledged purchase is stored exactly once with the points it was acknowledged with,
every logical request was applied at most once (acknowledged ones exactly once, refused
ones never), no balance is negative, every balance equals the sum of its ledger, and the
redemptions and holds match what was acknowledged. Any INTERNAL or UNKNOWN answer is a
discrepancy. The summary goes into BENCHMARKS.md between the soak markers; the exit
status is 1 on any discrepancy.

    .venv/bin/python bench/soak.py [--seconds S] [--members N] [--fault-interval S] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from backends import REPO, Service, free_port
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from load import RECORD_PURCHASE, ClientConfig, RequestFactory
from marked import write_marked
from population import (
    PROGRAM_ID,
    Metadata,
    bearer,
    configure_program,
    create_program,
    create_reward,
    enroll_members,
    fund_members,
    member_name,
)
from verify import members_to_check, verify_ledgers

from loyalty_engine.gen.loyalty.v1 import (
    points_service_pb2,
    reward_service_pb2,
)

BEGIN_MARK = "<!-- soak:begin (written by bench/soak.py; edit outside these marks) -->"
END_MARK = "<!-- soak:end -->"
DATABASE = "loyalty_soak"

REDEEM_REWARD = "/loyalty.v1.RewardService/RedeemReward"
RESERVE = "/loyalty.v1.RewardService/ReserveRedemption"
CONFIRM = "/loyalty.v1.RewardService/ConfirmRedemption"
CANCEL = "/loyalty.v1.RewardService/CancelRedemption"
RESPONSES: dict[str, type[Message]] = {
    RECORD_PURCHASE: points_service_pb2.RecordPurchaseResponse,
    REDEEM_REWARD: reward_service_pb2.RedeemRewardResponse,
    RESERVE: reward_service_pb2.ReserveRedemptionResponse,
    CONFIRM: reward_service_pb2.ConfirmRedemptionResponse,
    CANCEL: reward_service_pb2.CancelRedemptionResponse,
}

# Codes that are a definite answer: the request was refused and nothing was written.
REFUSALS = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
# The refusals the load expects: a redemption the member cannot afford (contention).
EXPECTED_REFUSALS = {("redeem", "FAILED_PRECONDITION"), ("reserve", "FAILED_PRECONDITION")}
SERVER_BUGS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
LOAD_KINDS = ("redeem", "reserve", "confirm", "cancel")  # request ids `{tag}-{kind}-{n}`

HOT_MEMBERS = 8  # members that get redemptions, and a share of the purchases: contention
HOT_PURCHASE_SHARE = 0.25
HOT_START_POINTS = 2_000
REWARD_COST = 400
HOLD_SECONDS = 3600  # no hold expires during a run
CALL_TIMEOUT = 10.0
CANCEL_RATE = 0.03  # of attempts (the first few of a request): cancelled after 0-20 ms
DEADLINE_RATE = 0.03  # of attempts: a deadline of 1-10 ms
FAULTY_ATTEMPTS = 3  # client-side faults only on a request's first attempts
MAX_ATTEMPTS = 500
DRAIN_SECONDS = 90.0  # after the load: how long requests may still retry to an answer
REPLAY_SAMPLE = 300
SERVER_FAULTS = (
    "service_sigkill",
    "postgres_restart_immediate",
    "service_sigkill",
    "postgres_restart_fast",
)
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    # Reconnect quickly after the service comes back (the default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


# --- a private PostgreSQL cluster ----------------------------------------------------------


def postgres_bindir() -> Path:
    """The newest Debian-layout PostgreSQL bin directory, else where initdb is on PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()],
    )
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError("no initdb found (install PostgreSQL: apt-get install postgresql)")


class PrivateCluster:
    """A throwaway PostgreSQL cluster in a temp dir, run as `postgres` when we are root."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="loyalty-soak-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            runuser = shutil.which("runuser")
            self.as_user = [runuser, "-u", "postgres", "--"] if runuser else []
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            if not runuser:
                self.as_user = ["su", "postgres", "-s", "/bin/sh", "-c"]
        self.started = False

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_user and self.as_user[0] == "su":
            command = [*self.as_user, shlex.join(command)]
        else:
            command = [*self.as_user, *command]
        # Output to a file, not a pipe: a postmaster started by pg_ctl inherits it, and a
        # pipe would stay open for as long as the server runs.
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run(command, stdout=out, stderr=out, timeout=timeout)
            out.seek(0)
            output = out.read()
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{output}")

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root}"
            " -c fsync=on -c synchronous_commit=on -c max_connections=100"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60",
            "-o", options, "start",
        )  # fmt: skip
        self.started = True

    def restart(self, mode: str) -> None:
        """`pg_ctl restart -m MODE` (immediate: a crash, recovery from the WAL at start)."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "120",
            "-m", mode, "restart",
        )  # fmt: skip

    def remove(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"soak: stopping the private cluster: {exc}", file=sys.stderr)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def service_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    async def version(self) -> str:
        conn = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    async def create_database(self) -> None:
        conn = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()


# --- logical requests and the retrying client ----------------------------------------------


@dataclass
class Logical:
    """One logical request: sent with one request id and payload until a definite answer."""

    kind: str  # purchase, redeem, reserve, confirm, cancel
    method: str
    request_id: str
    member_index: int
    payload: bytes
    order_id: str | None = None
    target: str = ""  # the redemption a confirm or cancel is for
    attempts: int = 0
    outcome: str = "UNDECIDED"  # OK, or the status code of a definite refusal
    reason: str = ""
    reply: bytes = b""

    def response(self) -> Any:
        return RESPONSES[self.method].FromString(self.reply)


@dataclass
class Tally:
    logical: list[Logical] = field(default_factory=list)
    attempt_codes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    server_bugs: list[str] = field(default_factory=list)  # INTERNAL / UNKNOWN answers
    notes: list[str] = field(default_factory=list)


def error_reason(exc: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a rich status, or ''."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""


class Client:
    """Sends logical requests over a few channels, retrying each until a definite answer."""

    def __init__(self, address: str, token: str | None, tally: Tally, seed: int) -> None:
        self.address = address
        self.metadata = bearer(token)
        self.tally = tally
        self.rng = random.Random(seed)
        self.channels: list[grpc.aio.Channel] = []
        self.handles: list[dict[str, Any]] = []
        self.inject = True
        self.hard_stop = float("inf")

    async def connect(self, channels: int) -> None:
        for _ in range(channels):
            channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
            self.channels.append(channel)
            self.handles.append({m: channel.unary_unary(m) for m in RESPONSES})

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def _attempt(self, request: Logical, slot: int) -> tuple[str, bytes, str]:
        """One attempt: (code name, reply, reason), with a client-side fault sometimes."""
        timeout, cancel_after = CALL_TIMEOUT, None
        if self.inject and request.attempts <= FAULTY_ATTEMPTS:
            draw = self.rng.random()
            if draw < CANCEL_RATE:
                cancel_after = self.rng.uniform(0.0, 0.020)
            elif draw < CANCEL_RATE + DEADLINE_RATE:
                timeout = self.rng.uniform(0.001, 0.010)
                self.tally.faults["short_deadline"] += 1
        handle = self.handles[slot % len(self.handles)][request.method]
        call = handle(request.payload, timeout=timeout, metadata=self.metadata)
        cancelled = False
        timer = None
        if cancel_after is not None:

            def cancel() -> None:
                nonlocal cancelled
                cancelled = call.cancel()
                if cancelled:
                    self.tally.faults["cancel_mid_flight"] += 1

            timer = asyncio.get_running_loop().call_later(cancel_after, cancel)
        try:
            reply = await call
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not cancelled or (task is not None and task.cancelling()):
                raise
            return "CANCELLED", b"", ""
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in SERVER_BUGS:
                self.tally.server_bugs.append(
                    f"{request.kind} {request.request_id} attempt {request.attempts}: "
                    f"{code.name} {exc.details()!r}"
                )
            return code.name, b"", error_reason(exc)
        finally:
            if timer is not None:
                timer.cancel()
        return "OK", bytes(reply), ""

    async def send(self, request: Logical, slot: int = 0) -> Logical:
        """Retry `request` (same id, same payload) until OK or a definite refusal."""
        self.tally.logical.append(request)
        backoff = 0.02
        while request.attempts < MAX_ATTEMPTS and time.monotonic() < self.hard_stop:
            request.attempts += 1
            code, reply, reason = await self._attempt(request, slot)
            self.tally.attempt_codes[code] += 1
            if code == "OK":
                request.outcome, request.reply = "OK", reply
                return request
            if grpc.StatusCode[code] in REFUSALS:
                request.outcome, request.reason = code, reason
                return request
            await asyncio.sleep(self.rng.uniform(0.5, 1.0) * backoff)
            backoff = min(backoff * 2, 1.0)
        return request  # UNDECIDED: ran out of time


# --- the run ------------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, cluster: PrivateCluster, log_root: Path) -> None:
        self.args = args
        self.cluster = cluster
        self.log_root = log_root
        self.port = free_port()
        self.incarnation = 0
        self.services: list[Service] = []
        self.service: Service | None = None
        self.tally = Tally()
        self.tag = f"s{secrets.token_hex(4)}"
        self.members = [member_name(i) for i in range(args.members)]
        self.hot = list(range(min(HOT_MEMBERS, args.members)))
        self.reward = f"programs/{PROGRAM_ID}/rewards/soak-voucher"
        self.serial = 0
        self.stop_load = asyncio.Event()
        self.killing = False
        self.replayed = 0
        self.api_members_checked = 0

    # service lifecycle

    async def start_service(self) -> None:
        for attempt in range(5):
            self.incarnation += 1
            log_dir = self.log_root / f"service-{self.incarnation}"
            log_dir.mkdir(parents=True, exist_ok=True)
            service = Service(self.cluster.service_url(), log_dir, port=self.port)
            self.services.append(service)
            try:
                await asyncio.to_thread(service.wait_serving, 90.0)
            except RuntimeError as exc:
                service.stop()
                if attempt == 4:
                    raise
                print(f"soak: the service did not start, trying again: {exc}", flush=True)
                await asyncio.sleep(1)
                continue
            self.service = service
            return

    async def kill_service(self) -> None:
        service = self.service
        assert service is not None
        self.killing = True
        service.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(service.process.wait)
        service.stop()  # closes its log
        self.service = None
        self.killing = False
        await asyncio.sleep(random.uniform(0.2, 1.0))  # clients meet a refused connection
        await self.start_service()

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
        for service in self.services:
            if service.process.poll() is None:
                service.process.kill()
                service.process.wait()

    # setup

    async def populate(self) -> tuple[str | None, float]:
        service = self.service
        assert service is not None
        operator = await asyncio.to_thread(
            service.create_key, "--operator", "--label", "soak operator"
        )

        def program_key(*scopes: str) -> str | None:
            if operator is None:
                return None
            flags = [f for scope in scopes for f in ("--scope", scope)]
            return service.create_key("--program", PROGRAM_ID, *flags, "--label", "soak")

        async with grpc.aio.insecure_channel(service.address) as channel:
            await create_program(channel, self.tag, bearer(operator))
            admin_key = await asyncio.to_thread(program_key, "admin")
            admin = bearer(admin_key)
            await configure_program(channel, self.tag, admin)
            seconds = await enroll_members(channel, self.args.members, self.tag, admin)
            await self._reward_and_points(channel, admin)
        return await asyncio.to_thread(program_key, "pos", "shop"), seconds

    async def _reward_and_points(self, channel: grpc.aio.Channel, admin: Metadata) -> None:
        await create_reward(
            channel,
            self.tag,
            admin,
            reward_id=self.reward.rsplit("/", 1)[1],
            points_cost=REWARD_COST,
        )
        hot = [self.members[i] for i in self.hot]
        await fund_members(channel, hot, HOT_START_POINTS, f"{self.tag}-start", admin)

    # load

    def _request_id(self, kind: str) -> str:
        self.serial += 1
        return f"{self.tag}-{kind}-{self.serial}"

    async def purchase_worker(self, client: Client, slot: int) -> None:
        base = ClientConfig(0, "", self.members, 1, 1, self.tag, self.args.seed + slot)
        everyone = RequestFactory(base, random.Random(self.args.seed + slot))
        hot_config = ClientConfig(
            1, "", [self.members[i] for i in self.hot], 1, 1, self.tag, self.args.seed
        )
        hot = RequestFactory(hot_config, random.Random(self.args.seed + 1000 + slot))
        rng = random.Random(self.args.seed + 2000 + slot)
        while not self.stop_load.is_set():
            to_hot = rng.random() < HOT_PURCHASE_SHARE
            factory = hot if to_hot else everyone
            # Unique order and request ids across workers: the scenario names the worker.
            call = factory.purchase(f"w{slot}", datetime.now(UTC))
            index = self.hot[call.member_index] if to_hot else call.member_index
            request = points_service_pb2.RecordPurchaseRequest.FromString(call.payload)
            await client.send(
                Logical(
                    "purchase",
                    RECORD_PURCHASE,
                    request.request_id,
                    index,
                    call.payload,
                    order_id=call.order_id,
                ),
                slot,
            )

    async def redemption_worker(self, client: Client, slot: int) -> None:
        rng = random.Random(self.args.seed + 3000 + slot)
        rp = reward_service_pb2
        while not self.stop_load.is_set():
            index = rng.choice(self.hot)
            member = self.members[index]
            if rng.random() < 0.5:
                rid = self._request_id("redeem")
                payload = rp.RedeemRewardRequest(
                    request_id=rid, member=member, reward=self.reward
                ).SerializeToString()
                await client.send(Logical("redeem", REDEEM_REWARD, rid, index, payload), slot)
                continue
            rid = self._request_id("reserve")
            payload = rp.ReserveRedemptionRequest(
                request_id=rid, member=member, reward=self.reward, hold_seconds=HOLD_SECONDS
            ).SerializeToString()
            held = await client.send(Logical("reserve", RESERVE, rid, index, payload), slot)
            if held.outcome != "OK":
                continue
            name = held.response().redemption.name
            await asyncio.sleep(rng.uniform(0, 0.05))  # the checkout takes a moment
            if rng.random() < 0.7:
                rid = self._request_id("confirm")
                payload = rp.ConfirmRedemptionRequest(request_id=rid, name=name).SerializeToString()
                step = Logical("confirm", CONFIRM, rid, index, payload, target=name)
            else:
                rid = self._request_id("cancel")
                payload = rp.CancelRedemptionRequest(request_id=rid, name=name).SerializeToString()
                step = Logical("cancel", CANCEL, rid, index, payload, target=name)
            await client.send(step, slot)

    async def fault_scheduler(self, started: float) -> None:
        interval = self.args.fault_interval
        turn = 0
        while True:
            try:
                await asyncio.wait_for(self.stop_load.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            kind = SERVER_FAULTS[turn % len(SERVER_FAULTS)]
            turn += 1
            t0 = time.monotonic()
            if kind == "service_sigkill":
                await self.kill_service()
            else:
                mode = kind.rsplit("_", 1)[1]
                await asyncio.to_thread(self.cluster.restart, mode)
            self.tally.faults[kind] += 1
            print(
                f"  [{time.monotonic() - started:5.0f}s] fault: {kind} "
                f"(back in {time.monotonic() - t0:.1f}s)",
                flush=True,
            )

    async def watchdog(self) -> None:
        """A service that exits on its own (not killed by us) is a finding: restart it."""
        while not self.stop_load.is_set():
            await asyncio.sleep(0.5)
            service = self.service
            if service is not None and not self.killing and service.process.poll() is not None:
                self.tally.notes.append(
                    f"the service exited on its own with {service.process.returncode}"
                )
                print(f"soak: the service exited on its own:\n{service.log_tail()}", flush=True)
                service.stop()
                self.service = None
                await self.start_service()

    async def progress(self, started: float) -> None:
        while not self.stop_load.is_set():
            try:
                await asyncio.wait_for(self.stop_load.wait(), timeout=15)
                return
            except TimeoutError:
                pass
            t = self.tally
            acked = sum(1 for r in t.logical if r.outcome == "OK")
            print(
                f"  [{time.monotonic() - started:5.0f}s] {len(t.logical)} requests, "
                f"{sum(t.attempt_codes.values())} attempts, {acked} acknowledged, "
                f"faults {dict(t.faults)}",
                flush=True,
            )

    async def run_load(self, token: str | None) -> float:
        client = Client(f"127.0.0.1:{self.port}", token, self.tally, self.args.seed)
        await client.connect(4)
        started = time.monotonic()
        try:
            workers = [
                asyncio.create_task(self.purchase_worker(client, i))
                for i in range(self.args.purchase_clients)
            ] + [
                asyncio.create_task(self.redemption_worker(client, 100 + i))
                for i in range(self.args.redemption_clients)
            ]
            helpers = [
                asyncio.create_task(self.fault_scheduler(started)),
                asyncio.create_task(self.watchdog()),
                asyncio.create_task(self.progress(started)),
            ]
            await asyncio.sleep(self.args.seconds)
            self.stop_load.set()
            # No new faults; requests in flight retry to a definite answer, within a bound.
            await asyncio.gather(*helpers)
            client.inject = False
            client.hard_stop = time.monotonic() + DRAIN_SECONDS
            await asyncio.gather(*workers)
            return time.monotonic() - started
        finally:
            await client.close()

    # checks

    async def replay(self, token: str | None, rng: random.Random) -> list[str]:
        """Re-send acknowledged requests: each must get its first reply again."""
        acked = [r for r in self.tally.logical if r.outcome == "OK"]
        sample = rng.sample(acked, min(REPLAY_SAMPLE, len(acked)))
        client = Client(f"127.0.0.1:{self.port}", token, Tally(), self.args.seed)
        client.inject = False
        client.hard_stop = time.monotonic() + 60
        await client.connect(1)
        problems = []
        try:
            for first in sample:
                again = Logical(
                    first.kind, first.method, first.request_id, first.member_index, first.payload
                )
                await client.send(again)
                if again.outcome != "OK":
                    problems.append(
                        f"replay of {first.kind} {first.request_id}: {again.outcome} "
                        f"{again.reason} instead of the first reply"
                    )
                elif again.response() != first.response():
                    problems.append(f"replay of {first.kind} {first.request_id}: a different reply")
        finally:
            await client.close()
        self.replayed = len(sample)
        return problems

    async def check_database(self) -> tuple[list[str], dict[str, int]]:
        """Check the stored state against what was acknowledged, through SQL."""
        conn = await asyncpg.connect(self.cluster.dsn(DATABASE), timeout=10)
        try:
            return await _check_database(conn, self)
        finally:
            await conn.close()

    async def check_api(self, token: str | None) -> list[str]:
        """bench/verify.py: balance against ledger, purchases against acknowledgements."""
        acked: dict[int, set[str]] = defaultdict(set)
        undecided: dict[int, set[str]] = defaultdict(set)
        for r in self.tally.logical:
            if r.kind == "purchase" and r.order_id:
                target = acked if r.outcome == "OK" else undecided
                target[r.member_index].add(r.order_id)
        touched = set(acked) | set(undecided) | set(self.hot)
        indexes = members_to_check(len(self.members), touched, random.Random(self.args.seed))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            # Redemptions, holds included, are checked against the tables in check_database.
            report = await verify_ledgers(
                channel,
                self.members,
                indexes,
                acked,
                undecided,
                bearer(token),
                check_redemptions=False,
            )
        self.api_members_checked = report.members_checked
        return report.discrepancies


async def _check_database(conn: asyncpg.Connection, soak: Soak) -> tuple[list[str], dict[str, int]]:
    logical = soak.tally.logical
    problems: list[str] = []
    counts: dict[str, int] = {}
    member_ids = {i: soak.members[i].rsplit("/", 1)[1] for i in range(len(soak.members))}

    # Purchases: every acknowledged one stored once, with the points acknowledged.
    stored: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for row in await conn.fetch(
        "SELECT member_id, order_id, points_awarded FROM purchases WHERE program_id = $1",
        PROGRAM_ID,
    ):
        stored[row["order_id"]].append((row["member_id"], int(row["points_awarded"])))
    entries: Counter[str] = Counter()
    for row in await conn.fetch(
        "SELECT order_id, count(*) AS n FROM ledger_entries WHERE program_id = $1 "
        "AND order_id IS NOT NULL AND kind IN ('EARN', 'PENDING') GROUP BY order_id",
        PROGRAM_ID,
    ):
        entries[row["order_id"]] = int(row["n"])
    purchases = [r for r in logical if r.kind == "purchase"]
    sent_orders = {r.order_id for r in purchases}
    for r in purchases:
        assert r.order_id is not None
        rows = stored.get(r.order_id, [])
        if len(rows) > 1 or entries[r.order_id] > 1:
            problems.append(
                f"order {r.order_id} stored {len(rows)} times, {entries[r.order_id]} entries"
            )
        if r.outcome == "OK":
            points = r.response().points_awarded
            if not rows:
                problems.append(f"acknowledged order {r.order_id} is not stored")
            elif rows[0] != (member_ids[r.member_index], points):
                problems.append(f"order {r.order_id}: stored {rows[0]}, acknowledged {points}")
            elif entries[r.order_id] != 1:
                problems.append(f"order {r.order_id}: {entries[r.order_id]} ledger entries")
        elif r.outcome != "UNDECIDED" and rows:
            problems.append(f"order {r.order_id} was refused ({r.outcome}) yet is stored")
    unknown = [o for o in stored if o not in sent_orders]
    if unknown:
        problems.append(f"{len(unknown)} stored purchases nobody sent, e.g. {unknown[:3]}")
    counts["purchases stored"] = sum(len(v) for v in stored.values())
    counts["purchases applied but never acknowledged (undecided)"] = sum(
        1 for r in purchases if r.outcome == "UNDECIDED" and r.order_id in stored
    )

    # Request ids: acknowledged ones claimed exactly once, refused ones never.
    claimed = Counter(
        row["request_id"]
        for row in await conn.fetch(
            "SELECT request_id FROM idempotency_keys WHERE program_id = $1 AND request_id LIKE $2",
            PROGRAM_ID,
            f"%{soak.tag}%",
        )
    )
    load_ids = {r.request_id for r in logical}
    for r in logical:
        n = claimed.get(r.request_id, 0)
        if r.outcome == "OK" and n != 1:
            problems.append(f"acknowledged {r.kind} {r.request_id} claimed {n} times")
        elif r.outcome not in ("OK", "UNDECIDED") and n:
            problems.append(f"{r.kind} {r.request_id} refused ({r.outcome}) yet applied")
    load_prefixes = (f"r-{soak.tag}-", *(f"{soak.tag}-{k}-" for k in LOAD_KINDS))
    strangers = [r for r in claimed if r.startswith(load_prefixes) and r not in load_ids]
    if strangers:
        problems.append(f"{len(strangers)} request ids applied that were never sent")

    # Redemptions: each acknowledged one exists in the state its last acknowledged step left.
    redemptions = {
        f"programs/{PROGRAM_ID}/members/{row['member_id']}/redemptions/{row['redemption_id']}": (
            row["state"],
            int(row["points"]),
        )
        for row in await conn.fetch(
            "SELECT member_id, redemption_id, state, points FROM redemptions WHERE program_id = $1",
            PROGRAM_ID,
        )
    }
    expected: dict[str, str | None] = {}
    for r in logical:
        if r.outcome != "OK" and r.kind in ("redeem", "reserve"):
            continue
        if r.kind == "redeem":
            expected[r.response().redemption.name] = "CONFIRMED"
        elif r.kind == "reserve":
            expected.setdefault(r.response().redemption.name, "RESERVED")
    for r in logical:
        if r.kind in ("confirm", "cancel"):
            # A step refused or undecided leaves the state open; an acknowledged one sets it.
            after = {"confirm": "CONFIRMED", "cancel": "CANCELLED"}[r.kind]
            expected[r.target] = after if r.outcome == "OK" else None
    for name, state in expected.items():
        if name not in redemptions:
            problems.append(f"acknowledged redemption {name} is not stored")
        elif state is not None and redemptions[name][0] != state:
            problems.append(f"redemption {name} is {redemptions[name][0]}, expected {state}")
    undecided_creates = sum(
        1 for r in logical if r.kind in ("redeem", "reserve") and r.outcome == "UNDECIDED"
    )
    extra = [n for n in redemptions if n not in expected]
    if len(extra) > undecided_creates:
        problems.append(
            f"{len(extra)} redemptions stored that no acknowledged request made "
            f"(only {undecided_creates} requests were left undecided)"
        )
    counts["redemptions stored"] = len(redemptions)

    # Accounts: never negative; balance = sum of ledger; holds and redemptions add up.
    ledger = {
        row["member_id"]: row
        for row in await conn.fetch(
            "SELECT member_id, sum(points) AS points, sum(pending_delta) AS pending, "
            "count(*) FILTER (WHERE kind = 'REDEEM') AS redeems, "
            "coalesce(-sum(points) FILTER (WHERE kind = 'REDEEM'), 0) AS redeemed "
            "FROM ledger_entries WHERE program_id = $1 GROUP BY member_id",
            PROGRAM_ID,
        )
    }
    last = {
        row["member_id"]: int(row["balance_after"])
        for row in await conn.fetch(
            "SELECT DISTINCT ON (member_id) member_id, balance_after FROM ledger_entries "
            "WHERE program_id = $1 ORDER BY member_id, entry_seq DESC",
            PROGRAM_ID,
        )
    }
    per_member: dict[str, Counter[str]] = defaultdict(Counter)
    for name, (state, points) in redemptions.items():
        member = name.split("/")[3]
        per_member[member][f"{state}:n"] += 1
        per_member[member][f"{state}:points"] += points
    accounts = await conn.fetch(
        "SELECT member_id, available, pending, reserved, redeemed FROM member_accounts "
        "WHERE program_id = $1",
        PROGRAM_ID,
    )
    negative = 0
    for a in accounts:
        m = a["member_id"]
        available, pending, reserved = int(a["available"]), int(a["pending"]), int(a["reserved"])
        if min(available, pending, reserved) < 0:
            negative += 1
            problems.append(f"{m}: negative balance ({available}, {pending}, {reserved})")
        row = ledger.get(m)
        sums = (int(row["points"]), int(row["pending"])) if row else (0, 0)
        if (available, pending) != sums:
            problems.append(f"{m}: balance {(available, pending)} != ledger sums {sums}")
        if m in last and last[m] != available:
            problems.append(f"{m}: newest entry's balance_after {last[m]} != {available}")
        mine = per_member.get(m, Counter())
        confirmed = mine["CONFIRMED:n"] + mine["FULFILLED:n"]
        confirmed_points = mine["CONFIRMED:points"] + mine["FULFILLED:points"]
        if row is not None and int(row["redeems"]) != confirmed:
            problems.append(f"{m}: {row['redeems']} REDEEM entries, {confirmed} confirmed")
        if row is not None and int(row["redeemed"]) != confirmed_points:
            problems.append(f"{m}: REDEEM entries {row['redeemed']} != {confirmed_points}")
        if int(a["redeemed"]) != confirmed_points:
            problems.append(f"{m}: redeemed {a['redeemed']} != confirmed {confirmed_points}")
        if reserved != mine["RESERVED:points"]:
            problems.append(f"{m}: reserved {reserved} != holds {mine['RESERVED:points']}")
    counts["accounts checked"] = len(accounts)
    counts["negative balances"] = negative
    return problems, counts


# --- the report ---------------------------------------------------------------------------


def summarize(soak: Soak, load_seconds: float) -> dict[str, Any]:
    logical = soak.tally.logical
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for r in logical:
        c = by_kind[r.kind]
        c["sent"] += 1
        c["attempts"] += r.attempts
        c["retried"] += r.attempts > 1
        c["acknowledged"] += r.outcome == "OK"
        c["refused"] += r.outcome not in ("OK", "UNDECIDED")
        c["undecided"] += r.outcome == "UNDECIDED"
    total: Counter[str] = Counter()
    for c in by_kind.values():
        total.update(c)
    return {
        "by_kind": {k: dict(v) for k, v in by_kind.items()},
        "total": dict(total),
        "faults": dict(soak.tally.faults),
        "attempt_codes": dict(soak.tally.attempt_codes.most_common()),
        "refusal_reasons": dict(
            Counter(
                f"{r.kind}: {r.outcome} {r.reason}".strip()
                for r in logical
                if r.outcome not in ("OK", "UNDECIDED")
            )
        ),
        "load_seconds": load_seconds,
    }


def render(run: dict[str, Any]) -> str:
    s = run["summary"]
    total = s["total"]
    lines = [
        f"Run {run['date']}, {run['code']}: `{run['command']}` "
        f"({run['elapsed_seconds']:.0f} s in all, {s['load_seconds']:.0f} s of load).",
        "",
        f"Machine: {run['machine']}.",
        "",
        f"Settings: {run['settings']}.",
        "",
        "| request | sent (logical) | attempts | acknowledged | refused | retried | undecided |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    kinds = ["purchase", "redeem", "reserve", "confirm", "cancel"]
    for kind in [*kinds, "total"]:
        c = total if kind == "total" else s["by_kind"].get(kind)
        if not c:
            continue
        label = "**total**" if kind == "total" else kind
        lines.append(
            f"| {label} | {c.get('sent', 0):,} | {c.get('attempts', 0):,} | "
            f"{c.get('acknowledged', 0):,} | {c.get('refused', 0):,} | "
            f"{c.get('retried', 0):,} | {c.get('undecided', 0):,} |"
        )
    faults = s["faults"]
    lines += [
        "",
        "| fault injected | count |",
        "| --- | ---: |",
        *(f"| {k} | {v:,} |" for k, v in sorted(faults.items())),
        f"| **total** | {sum(faults.values()):,} |",
        "",
        "Attempt outcomes: " + ", ".join(f"{k} {v:,}" for k, v in s["attempt_codes"].items()) + ".",
        "",
        "Refusals (definite answers, nothing written): "
        + (", ".join(f"{k} {v:,}" for k, v in s["refusal_reasons"].items()) or "none")
        + ".",
        "",
        "Checks: " + "; ".join(f"{k} {v:,}" for k, v in run["checks"].items()) + ".",
        "",
        f"**Discrepancies: {len(run['discrepancies'])}**"
        + (" (INTERNAL/UNKNOWN answers included)" if run["discrepancies"] else ""),
    ]
    for line in run["discrepancies"][:15]:
        lines.append(f"- {line}")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, block: str) -> None:
    section = "## Fault-injection soak\n\n" + textwrap.fill(
        "`make soak` (`bench/soak.py`) runs the service on a private PostgreSQL cluster under "
        "a steady purchase and redemption load whose clients retry every error with the same "
        "request id, while it SIGKILLs and restarts the service, restarts PostgreSQL "
        "(`pg_ctl restart -m immediate`, a crash, and `-m fast`), cancels calls mid-flight "
        "and lets 1-10 ms deadlines expire. Afterwards it replays a sample of acknowledged "
        "requests and checks through SQL and the API that every acknowledged purchase is "
        "stored exactly once, every request was applied at most once (acknowledged ones "
        "exactly once), no balance is negative and every balance equals the sum of its "
        "ledger. An INTERNAL or UNKNOWN answer counts as a discrepancy.",
        width=90,
    )
    write_marked(path, BEGIN_MARK, END_MARK, block, section)


def machine_summary(pg_version: str) -> str:
    from run import machine_facts

    facts = machine_facts(pg_version)
    return (
        f"{facts['cores']} cores ({facts['cpu']}), {facts['ram']}, Linux {facts['kernel']}, "
        f"Python {facts['python']}, grpcio {facts['grpcio']}, PostgreSQL {pg_version} "
        "(private cluster, fsync and synchronous_commit on)"
    )


def internal_errors_logged(services: list[Service]) -> Counter[str]:
    """The server's `internal error in ...` log lines, by method and exception chain."""
    found: Counter[str] = Counter()
    for service in services:
        for line in service.error_lines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            event = str(record.get("event", ""))
            if not event.startswith("internal error"):
                continue
            # The exception lines of the chain (module-qualified names), not the frames.
            chain = [
                text.split(":", 1)[0]
                for text in str(record.get("exception", "")).splitlines()
                if text and not text[0].isspace() and "Error" in text.split(":", 1)[0]
            ]
            found[f"{event.rsplit(' ', 1)[-1]}: {' <- '.join(reversed(chain))}"] += 1
    return found


def describe_code() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "the working tree"
    return f"the working tree at {head}" + (" with uncommitted changes" if dirty else "")


async def soak_main(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_root = REPO / "bench" / "results" / f"soak-{stamp}"
    log_root.mkdir(parents=True, exist_ok=True)
    cluster = PrivateCluster()
    soak: Soak | None = None
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        pg_version = await cluster.version()
        await cluster.create_database()
        print(f"private PostgreSQL {pg_version} on 127.0.0.1:{cluster.port} in {cluster.root}")
        soak = Soak(args, cluster, log_root)
        await soak.start_service()
        token, enroll_seconds = await soak.populate()
        print(
            f"service on 127.0.0.1:{soak.port}; {args.members} members enrolled in "
            f"{enroll_seconds:.1f}s; load for {args.seconds:g}s, a server fault every "
            f"{args.fault_interval:g}s",
            flush=True,
        )
        load_seconds = await soak.run_load(token)
        print(f"load done in {load_seconds:.0f}s (with the drain); checking", flush=True)
        if soak.service is None or soak.service.process.poll() is not None:
            await soak.start_service()
        discrepancies = await soak.replay(token, random.Random(args.seed))
        db_problems, checks = await soak.check_database()
        discrepancies += db_problems
        discrepancies += await soak.check_api(token)
        checks["replayed acknowledged requests"] = soak.replayed
        checks["members checked through the API"] = soak.api_members_checked
        server_bugs = soak.tally.server_bugs
        discrepancies += [f"server answered {line}" for line in server_bugs]
        internal_logged = internal_errors_logged(soak.services)
        checks["INTERNAL/UNKNOWN answers"] = len(server_bugs)
        checks["internal errors in the server logs"] = sum(internal_logged.values())
        if internal_logged and not server_bugs:
            discrepancies += [f"server log: {k} x{n}" for k, n in internal_logged.items()]
        discrepancies += soak.tally.notes
        summary = summarize(soak, load_seconds)
        for r in soak.tally.logical:
            if r.outcome not in ("OK", "UNDECIDED") and (r.kind, r.outcome) not in (
                EXPECTED_REFUSALS
            ):
                discrepancies.append(
                    f"{r.kind} {r.request_id} refused unexpectedly: {r.outcome} {r.reason}"
                )
        run = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", "bench/soak.py", *argv]),
            "code": describe_code(),
            "machine": machine_summary(pg_version),
            "settings": (
                f"{args.members} members ({len(soak.hot)} of them also redeem); "
                f"{args.purchase_clients} purchase and {args.redemption_clients} redemption "
                f"clients over 4 channels; a server fault every {args.fault_interval:g} s "
                f"rotating {' / '.join(SERVER_FAULTS)}; {CANCEL_RATE:.0%} of attempts "
                f"cancelled after 0-20 ms and {DEADLINE_RATE:.0%} given a 1-10 ms deadline "
                f"(first {FAULTY_ATTEMPTS} attempts of a request); service defaults"
            ),
            "summary": summary,
            "checks": checks,
            "discrepancies": discrepancies,
            "elapsed_seconds": time.monotonic() - started,
        }
        block = render(run)
        print("\n" + block)
        if internal_logged:
            print("internal errors in the server logs, by method and exception chain:")
            for key, n in internal_logged.most_common():
                print(f"  {n} x {key}")
        (log_root / "soak.json").write_text(json.dumps(run, indent=2))
        print(f"server logs and soak.json in {log_root}")
        if args.output is not None:
            write_markdown(args.output, block)
            print(f"updated {args.output}")
        if discrepancies:
            print(f"FAILED: {len(discrepancies)} discrepancies", file=sys.stderr)
            return 1
        print("discrepancies: 0")
        return 0
    finally:
        if soak is not None:
            soak.stop_service()
        await asyncio.to_thread(cluster.remove)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--fault-interval", type=float, default=20.0, help="seconds")
    parser.add_argument("--purchase-clients", type=int, default=10)
    parser.add_argument("--redemption-clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 300 members, 45 s, a fault every 8 s; leaves BENCHMARKS.md alone",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="markdown file to update (default: BENCHMARKS.md; none with --quick)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.seconds, args.fault_interval = 300, 45.0, 8.0
    elif args.output is None:
        args.output = REPO / "BENCHMARKS.md"
    return args


def main(argv: list[str]) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args = parse_args(argv)
    return asyncio.run(soak_main(args, argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
