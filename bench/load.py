"""The load generator: client processes that replay pre-built, pre-serialized calls.

Each client process owns a few channels and `concurrency` coroutines that keep one call
in flight each. Requests are built and serialized before the clock starts, and calls go
through raw byte-in/byte-out method handles, so the measured time is the server's plus
the transport's, not protobuf work in the client. A process runs scenarios on command
from the parent (over a Pipe) and sends back counts, latencies, errors, the order ids and
redemptions it got acknowledged, and the CPU seconds it spent.

Scenarios are closed-loop (each coroutine starts its next call when the last one ends),
except `openloop`: calls start on a fixed schedule at a given rate whatever the server
does, and each call's latency runs from its scheduled start, so queueing counts.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from loyalty_engine.gen.loyalty.v1 import (
    common_pb2,
    member_service_pb2,
    points_service_pb2,
    reward_service_pb2,
)

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
GET_BALANCE = "/loyalty.v1.PointsService/GetBalance"
GET_MEMBER = "/loyalty.v1.MemberService/GetMember"
RECORD_PURCHASE = "/loyalty.v1.PointsService/RecordPurchase"
REDEEM_REWARD = "/loyalty.v1.RewardService/RedeemReward"

SHORT_NAMES = {
    HEALTH_CHECK: "Health/Check",
    GET_BALANCE: "GetBalance",
    GET_MEMBER: "GetMember",
    RECORD_PURCHASE: "RecordPurchase",
    REDEEM_REWARD: "RedeemReward",
}
# Redemptions the service refused for a business reason (a definite answer, nothing written):
# counted and timed apart from both successes and errors.
REFUSED_SUFFIX = " refused"
BUSINESS_REFUSALS = frozenset({"INSUFFICIENT_POINTS"})
# The realistic mix: 70% reads (half balances, half members), 25% purchases, 5% redemptions.
MIX = ((0.35, "balance"), (0.35, "member"), (0.25, "purchase"), (0.05, "redeem"))
# Open-loop calls one process may have in flight before its schedule waits.
OPEN_LOOP_MAX_IN_FLIGHT = 512

# Categories a bench purchase's lines come from; "coffee" earns 2x under the bench program.
CATEGORIES = ("grocery", "coffee", "homeware")
# Calls per second one client process is planned for when pre-building unique requests;
# a process that runs out stops early and says so (`exhausted`).
PLANNED_RATE_PER_PROCESS = 2500
CALL_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Call:
    """One pre-serialized call; `order_id` is set for purchases."""

    method: str
    payload: bytes
    member_index: int
    order_id: str | None = None


@dataclass(frozen=True)
class LoadPlan:
    """What a scenario needs beyond its name: the offered rate of an open-loop run."""

    seconds: float
    rate: float = 0.0  # calls per second across all processes (open loop only)


@dataclass
class ClientConfig:
    """What a client process needs to know, sent once at its start."""

    index: int
    address: str
    members: list[str]
    channels: int
    concurrency: int
    run_tag: str
    seed: int
    token: str | None = None
    processes: int = 1
    # The reward the redemption calls redeem (None: this version has no RewardService),
    # the members the mix's redemptions go to (funded to never run out), and the few the
    # contended redemption scenario hammers (funded to run out).
    reward: str | None = None
    rich_members: list[int] = field(default_factory=list)
    contended_members: list[int] = field(default_factory=list)


@dataclass
class ScenarioResult:
    """What one client process measured in one scenario."""

    calls: Counter[str] = field(default_factory=Counter)
    latencies_ms: dict[str, array] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    acked: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    # Redemptions: (member index, redemption name) acknowledged; refusals by reason; the
    # member indexes of redemption calls that failed otherwise (they may have been stored).
    redeemed: list[tuple[int, str]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    redeem_failed: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0
    start: float = 0.0
    end: float = 0.0
    exhausted: bool = False


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(UTC).replace(tzinfo=None))
    return ts


class RequestFactory:
    """Builds a process's requests: unique request and order ids, random members."""

    def __init__(self, config: ClientConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.serial = 0
        self.health = health_pb2.HealthCheckRequest(service="").SerializeToString()

    def _member(self) -> int:
        return self.rng.randrange(len(self.config.members))

    def balance(self) -> Call:
        i = self._member()
        req = points_service_pb2.GetBalanceRequest(member=self.config.members[i])
        return Call(GET_BALANCE, req.SerializeToString(), i)

    def member(self) -> Call:
        i = self._member()
        req = member_service_pb2.GetMemberRequest(name=self.config.members[i])
        return Call(GET_MEMBER, req.SerializeToString(), i)

    def purchase(self, scenario: str, when: datetime) -> Call:
        i = self._member()
        self.serial += 1
        suffix = f"{self.config.run_tag}-{scenario}-p{self.config.index}-{self.serial}"
        lines = []
        for n in range(self.rng.randint(1, 3)):
            lines.append(
                common_pb2.LineItem(
                    sku=f"SKU-{self.rng.randrange(500):03d}",
                    category=self.rng.choice(CATEGORIES),
                    quantity=self.rng.randint(1, 3),
                    # At least 1.00 per unit, so every purchase earns at least one point.
                    unit_price_minor=self.rng.randrange(100, 5000) + n,
                )
            )
        total = sum(line.quantity * line.unit_price_minor for line in lines)
        order_id = f"o-{suffix}"
        req = points_service_pb2.RecordPurchaseRequest(
            request_id=f"r-{suffix}",
            member=self.config.members[i],
            purchase=points_service_pb2.Purchase(
                order_id=order_id,
                purchase_time=_timestamp(when),
                store_id=f"store-{self.rng.randrange(20)}",
                total=common_pb2.Money(amount_minor=total, currency_code="EUR"),
                line_items=lines,
            ),
        )
        return Call(RECORD_PURCHASE, req.SerializeToString(), i, order_id)

    def redeem(self, scenario: str, among: list[int]) -> Call:
        i = self.rng.choice(among)
        self.serial += 1
        req = reward_service_pb2.RedeemRewardRequest(
            request_id=f"r-{self.config.run_tag}-{scenario}-p{self.config.index}-{self.serial}",
            member=self.config.members[i],
            reward=self.config.reward or "",
        )
        return Call(REDEEM_REWARD, req.SerializeToString(), i)

    def build(self, scenario: str, plan: LoadPlan) -> tuple[list[Call], bool]:
        """The calls of a scenario, and whether they are unique (used once) or cycled."""
        now = datetime.now(UTC)
        if scenario == "health":
            return [Call(HEALTH_CHECK, self.health, -1)], False
        if scenario == "balance":
            return [self.balance() for _ in range(4096)], False
        planned = max(2000, int(plan.seconds * PLANNED_RATE_PER_PROCESS))
        if scenario == "purchase":
            return [self.purchase(scenario, now) for _ in range(planned)], True
        if scenario == "openloop":
            mine = plan.rate / self.config.processes
            return [self.purchase(scenario, now) for _ in range(int(mine * plan.seconds) + 2)], True
        if scenario == "redeem":
            among = self.config.contended_members
            return [self.redeem(scenario, among) for _ in range(planned)], True
        if scenario == "mix":
            calls = []
            for _ in range(planned):
                draw = self.rng.random()
                kind = MIX[-1][1]
                for share, name in MIX:
                    if draw < share:
                        kind = name
                        break
                    draw -= share
                if kind == "balance":
                    calls.append(self.balance())
                elif kind == "member":
                    calls.append(self.member())
                elif kind == "redeem" and self.config.reward and self.config.rich_members:
                    calls.append(self.redeem(scenario, self.config.rich_members))
                else:  # purchases, and redemptions on a version without rewards
                    calls.append(self.purchase(scenario, now))
            return calls, True
        raise ValueError(f"unknown scenario {scenario!r}")


def refusal_reason(exc: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call ("" if none)."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return str(info.reason)
    return ""


class ClientProcess:
    """The state of one client process: its loop, channels and method handles."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.factory = RequestFactory(config, random.Random(config.seed))
        self.loop = asyncio.new_event_loop()
        self.channels: list[grpc.aio.Channel] = []
        self.handles: list[dict[str, Any]] = []
        self.prepared: tuple[list[Call], bool] = ([], False)

    async def connect(self) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
        for _ in range(self.config.channels):
            channel = grpc.aio.insecure_channel(self.config.address, options=options)
            await asyncio.wait_for(channel.channel_ready(), 20)
            self.channels.append(channel)
            # No serializers: the payloads are bytes already and responses stay bytes.
            self.handles.append({m: channel.unary_unary(m) for m in SHORT_NAMES})
        for handle in self.handles:
            await handle[HEALTH_CHECK](self.factory.health, timeout=10)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def run(self, scenario: str, start_at: float, plan: LoadPlan) -> ScenarioResult:
        calls, unique = self.prepared
        result = ScenarioResult()
        deadline = start_at + plan.seconds
        lat: dict[str, array] = {m: array("d") for m in SHORT_NAMES}
        refused_lat = array("d")
        metadata = (("authorization", f"Bearer {self.config.token}"),) if self.config.token else ()

        async def one(call: Call, handles: dict[str, Any], t0: float) -> None:
            """Make one call and record it; latency from `t0` (perf_counter seconds)."""
            try:
                reply = await handles[call.method](
                    call.payload, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                if call.method == REDEEM_REWARD:
                    reason = refusal_reason(exc)
                    if (
                        exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                        and reason in BUSINESS_REFUSALS
                    ):
                        refused_lat.append((time.perf_counter() - t0) * 1000.0)
                        result.refused[reason] += 1
                        return
                    result.redeem_failed.append(call.member_index)
                name = f"{SHORT_NAMES[call.method]}:{exc.code().name}"
                result.errors[name] += 1
                if call.order_id is not None:
                    result.failed.append((call.member_index, call.order_id))
                return
            lat[call.method].append((time.perf_counter() - t0) * 1000.0)
            result.calls[call.method] += 1
            if call.order_id is not None:
                result.acked.append((call.member_index, call.order_id))
            elif call.method == REDEEM_REWARD:
                redemption = reward_service_pb2.RedeemRewardResponse.FromString(reply).redemption
                result.redeemed.append((call.member_index, redemption.name))

        cursor = 0

        async def worker(slot: int) -> None:
            nonlocal cursor
            handles = self.handles[slot % len(self.handles)]
            while time.time() < deadline:
                if unique and cursor >= len(calls):
                    result.exhausted = True
                    return
                call = calls[cursor % len(calls)]
                cursor += 1
                await one(call, handles, time.perf_counter())

        async def open_loop() -> None:
            # This process takes every `processes`-th slot of the whole schedule, so the
            # processes' calls interleave evenly at `rate` in total.
            interval = 1.0 / plan.rate
            processes, index = self.config.processes, self.config.index
            perf_start = time.perf_counter() + (start_at - time.time())
            in_flight: set[asyncio.Task[None]] = set()
            room = asyncio.Semaphore(OPEN_LOOP_MAX_IN_FLIGHT)

            async def timed(call: Call, handles: dict[str, Any], scheduled: float) -> None:
                try:
                    await one(call, handles, scheduled)
                finally:
                    room.release()

            for k, call in enumerate(calls):
                scheduled = perf_start + (k * processes + index) * interval
                if scheduled >= perf_start + plan.seconds:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await room.acquire()
                task = asyncio.create_task(
                    timed(call, self.handles[k % len(self.handles)], scheduled)
                )
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.gather(*in_flight)

        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = time.process_time()
        result.start = time.time()
        if scenario == "openloop":
            await open_loop()
        else:
            await asyncio.gather(*(worker(i) for i in range(self.config.concurrency)))
        result.end = time.time()
        result.cpu_seconds = time.process_time() - cpu0
        result.latencies_ms = {SHORT_NAMES[m]: a for m, a in lat.items() if a}
        if refused_lat:
            result.latencies_ms[SHORT_NAMES[REDEEM_REWARD] + REFUSED_SUFFIX] = refused_lat
        result.calls = Counter({SHORT_NAMES[m]: n for m, n in result.calls.items()})
        self.prepared = ([], False)
        return result


def client_main(config: ClientConfig, conn: Connection) -> None:
    """Entry point of a client process: connect, then obey the parent's commands."""
    client = ClientProcess(config)
    try:
        client.loop.run_until_complete(client.connect())
        conn.send(("ready", None))
        while True:
            command, args = conn.recv()
            if command == "prepare":
                scenario, plan = args
                client.prepared = client.factory.build(scenario, plan)
                conn.send(("prepared", None))
            elif command == "run":
                conn.send(("result", client.loop.run_until_complete(client.run(*args))))
            elif command == "stop":
                break
    except (EOFError, KeyboardInterrupt):
        pass
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        client.loop.run_until_complete(client.close())
        client.loop.close()
