"""End-to-end benchmark of the loyalty-engine gRPC service (`make bench`).

Starts the real service as a subprocess on a fresh database, loads a program, a reward and
members through the API, drives load from separate client processes, checks the ledger
through the API after every write scenario, and writes the results into BENCHMARKS.md
(between the `bench:begin`/`bench:end` markers; the prose around them is kept).

Scenarios: the empty RPC, GetBalance, RecordPurchase, RecordPurchase open loop at half the
RecordPurchase throughput just measured (latency from each call's scheduled start), a
realistic mix (70% reads, 25% purchases, 5% redemptions), and RedeemReward from every
client against a few members until their points run out.

    .venv/bin/python bench/run.py [--backend sqlite|postgres|both] [--members N]
        [--processes P] [--concurrency C] [--seconds S] [--quick] [--ref REF]
        [--output FILE]

The program has 100,000 members by default (`--members`), enrolled through EnrollMember
(ENROLL_CONCURRENCY in flight), which ran at about 580 members/s on PostgreSQL and 320/s
on SQLite here: about 3 and 5 minutes of the run.

Every throughput is reported beside an empty-RPC baseline (grpc.health.v1.Health/Check
through the same server, same clients) measured in the same run, because absolute
numbers on a small shared machine mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import pstats
import random
import secrets
import shlex
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from backends import (
    REPO,
    BenchDatabase,
    Service,
    code_under_test,
    find_pgbench,
    fresh_database,
    machine_busy_seconds,
    postgres_backend_cpu,
    postgres_version,
    run_pgbench,
)
from load import MIX, ClientConfig, LoadPlan, ScenarioResult, client_main
from marked import write_marked
from population import (
    ENROLL_CONCURRENCY,
    PROGRAM_ID,
    REWARD_COST,
    REWARD_ID,
    Metadata,
    bearer,
    configure_program,
    create_program,
    create_reward,
    enroll_members,
    fund_members,
    member_name,
)
from verify import Verification, members_to_check, verify_ledgers

# (key, title, writes); titles of `openloop`, `mix` and `redeem` are completed at run time.
SCENARIOS = (
    ("health", "empty RPC (Health/Check)", False),
    ("balance", "GetBalance", False),
    ("purchase", "RecordPurchase", True),
    ("openloop", "RecordPurchase open loop at 50% of its peak", True),
    ("mix", "mix", True),
    ("redeem", "RedeemReward, contended", True),
)
# Write scenarios compared with pgbench's TPS (the open loop's rate is set by the bench).
PGBENCH_COMPARED = ("purchase", "mix", "redeem")
CHANNELS_PER_PROCESS = 4
# The open loop's offered rate, as a share of the RecordPurchase throughput of the run, and
# the target for its p99.
HALF_PEAK_SHARE = 0.5
HALF_PEAK_P99_TARGET_MS = 20.0
# The mix's redemptions go to RICH_MEMBERS members funded with RICH_POINTS (they never run
# out); the redemption scenario hammers CONTENDED_MEMBERS members funded to run out about
# CONTENDED_RUN_OUT of the way through it (at the RecordPurchase rate).
RICH_MEMBERS = 50
RICH_POINTS = 1_000_000
CONTENDED_MEMBERS = 10
CONTENDED_RUN_OUT = 0.5
CONTENDED_MIN_REDEMPTIONS = 3
BEGIN_MARK = "<!-- bench:begin (written by bench/run.py; edit outside these marks) -->"
END_MARK = "<!-- bench:end -->"


# --- measurement ----------------------------------------------------------------------------


@dataclass
class ScenarioReport:
    key: str
    title: str
    wall_seconds: float
    calls: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: dict[str, int]
    by_method: dict[str, dict[str, float]]
    client_cpu_seconds: float
    server_cpu_seconds: float
    postgres_cpu_seconds: float | None
    machine_busy_cores: float
    exhausted: bool
    refused: dict[str, int] = field(default_factory=dict)
    redeemed: int = 0
    offered_rate: float | None = None  # open loop only
    ratio_to_empty_rpc: float | None = None
    ratio_to_pgbench: float | None = None


@dataclass
class BackendReport:
    backend: str
    members: int
    enroll_seconds: float
    scenarios: list[ScenarioReport] = field(default_factory=list)
    verifications: list[dict[str, Any]] = field(default_factory=list)
    pgbench: dict[str, Any] | None = None
    pgbench_note: str = ""
    server_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class ClientPool:
    """The client processes, commanded over pipes."""

    def __init__(
        self,
        address: str,
        members: list[str],
        args: argparse.Namespace,
        tag: str,
        token: str | None,
        reward: str | None = None,
        rich: list[int] | None = None,
        contended: list[int] | None = None,
    ):
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for i in range(args.processes):
            parent_end, child_end = ctx.Pipe()
            config = ClientConfig(
                index=i,
                address=address,
                members=members,
                channels=CHANNELS_PER_PROCESS,
                concurrency=args.concurrency,
                run_tag=tag,
                seed=args.seed * 1000 + i,
                token=token,
                processes=args.processes,
                reward=reward,
                rich_members=rich or [],
                contended_members=contended or [],
            )
            process = ctx.Process(target=client_main, args=(config, child_end), daemon=True)
            process.start()
            self.pipes.append(parent_end)
            self.processes.append(process)
        self._expect_all("ready")

    def _expect_all(self, what: str) -> list[Any]:
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(300):
                raise RuntimeError(f"a client process did not answer {what!r} in time")
            kind, payload = pipe.recv()
            if kind != what:
                raise RuntimeError(f"a client process failed: {payload}")
            replies.append(payload)
        return replies

    def run(self, scenario: str, plan: LoadPlan) -> tuple[list[ScenarioResult], float]:
        for pipe in self.pipes:
            pipe.send(("prepare", (scenario, plan)))
        self._expect_all("prepared")
        start_at = time.time() + 0.3
        for pipe in self.pipes:
            pipe.send(("run", (scenario, start_at, plan)))
        return self._expect_all("result"), start_at

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", None))
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join()


def measure(
    pool: ClientPool,
    service: Service,
    database: BenchDatabase,
    key: str,
    title: str,
    plan: LoadPlan,
) -> tuple[ScenarioReport, list[ScenarioResult]]:
    # Snapshots bracket request building too (the service and the database are idle then),
    # so machine-wide busy time is divided by the snapshots' own interval.
    pg0 = _pg_cpu(database)
    server0, busy0, t0 = service.cpu_seconds(), machine_busy_seconds(), time.monotonic()
    results, start_at = pool.run(key, plan)
    server1, busy1, t1 = service.cpu_seconds(), machine_busy_seconds(), time.monotonic()
    pg1 = _pg_cpu(database)
    wall = max(r.end for r in results) - start_at
    latencies: dict[str, list[float]] = {}
    for r in results:
        for method, values in r.latencies_ms.items():
            latencies.setdefault(method, []).extend(values)
    everything = sorted(v for values in latencies.values() for v in values)
    calls = Counter[str]()
    errors = Counter[str]()
    refused = Counter[str]()
    for r in results:
        calls.update(r.calls)
        errors.update(r.errors)
        refused.update(r.refused)
    by_method = {}
    for method, unsorted in sorted(latencies.items()):
        ordered = sorted(unsorted)
        by_method[method] = {
            "calls": len(ordered),
            "throughput": len(ordered) / wall,
            "p50_ms": percentile(ordered, 50),
            "p95_ms": percentile(ordered, 95),
            "p99_ms": percentile(ordered, 99),
        }
    # Refused redemptions are definite answers: calls, timed, but not errors.
    total = sum(calls.values()) + sum(refused.values())
    report = ScenarioReport(
        key=key,
        title=title,
        wall_seconds=wall,
        calls=total,
        throughput=total / wall,
        p50_ms=percentile(everything, 50),
        p95_ms=percentile(everything, 95),
        p99_ms=percentile(everything, 99),
        errors=dict(errors),
        by_method=by_method,
        client_cpu_seconds=sum(r.cpu_seconds for r in results),
        server_cpu_seconds=server1 - server0,
        postgres_cpu_seconds=(
            None
            if pg0 is None or pg1 is None
            else sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items())
        ),
        machine_busy_cores=(busy1 - busy0) / (t1 - t0),
        exhausted=any(r.exhausted for r in results),
        refused=dict(refused),
        redeemed=sum(len(r.redeemed) for r in results),
        offered_rate=plan.rate if key == "openloop" else None,
    )
    return report, results


def _pg_cpu(database: BenchDatabase) -> dict[int, float] | None:
    return postgres_backend_cpu(database.name) if database.backend == "postgres" else None


async def _verify(
    address: str,
    members: list[str],
    indexes: list[int],
    acked: dict[int, set[str]],
    failed: dict[int, set[str]],
    metadata: Metadata,
    redeemed: dict[int, set[str]],
    redeem_failed: dict[int, int],
) -> Verification:
    async with grpc.aio.insecure_channel(address) as channel:
        return await verify_ledgers(
            channel, members, indexes, acked, failed, metadata, redeemed, redeem_failed
        )


# --- one backend ----------------------------------------------------------------------------


def mix_title(rewards: bool) -> str:
    names = {
        "balance": "GetBalance",
        "member": "GetMember",
        "purchase": "RecordPurchase",
        "redeem": "RedeemReward",
    }
    shares = {name: share for share, name in MIX}
    if not rewards:  # the redemptions' share goes to purchases
        shares["purchase"] += shares.pop("redeem")
    text = ", ".join(f"{round(100 * share)}% {names[name]}" for name, share in shares.items())
    return "mix: " + text + ("" if rewards else " (no RewardService in this version)")


def bench_backend(
    db: BenchDatabase,
    args: argparse.Namespace,
    log_dir: Path,
    pgbench: str | None,
    source: Path,
) -> BackendReport:
    tag = f"b{secrets.token_hex(4)}"
    members = [member_name(i) for i in range(args.members)]
    rng = random.Random(args.seed)
    # The members the redemptions go to: a few contended ones, and the mix's funded ones.
    n_contended = min(CONTENDED_MEMBERS, max(1, args.members // 4))
    n_rich = min(RICH_MEMBERS, max(1, args.members // 4))
    chosen = rng.sample(range(args.members), min(args.members, n_contended + n_rich))
    contended, rich = chosen[:n_contended], chosen[n_contended:] or chosen[:1]
    service = Service(db.url, log_dir, source=source, profile=args.profile_server)
    pool: ClientPool | None = None
    try:
        service.wait_serving()

        # Auth stays on, as in production: an operator key creates the program, an admin
        # key configures it, enrolls and funds members, and the load runs with a POS + shop
        # key.
        operator = service.create_key("--operator", "--label", "bench operator")

        def program_key(*scopes: str) -> str | None:
            if operator is None:
                return None
            flags = [f for scope in scopes for f in ("--scope", scope)]
            return service.create_key("--program", PROGRAM_ID, *flags, "--label", "bench")

        admin: Metadata = ()

        async def populate() -> tuple[float, str | None, float]:
            nonlocal admin
            async with grpc.aio.insecure_channel(service.address) as channel:
                await create_program(channel, tag, bearer(operator))
                admin = bearer(program_key("admin"))
                await configure_program(channel, tag, admin)
                enrolled = await enroll_members(channel, args.members, tag, admin)
                reward = await create_reward(channel, tag, admin)
                funded = 0.0
                if reward is not None:
                    rich_names = [members[i] for i in rich]
                    funded = await fund_members(
                        channel, rich_names, RICH_POINTS, f"{tag}-fund-rich", admin
                    )
                return enrolled, reward, funded

        enroll_seconds, reward, fund_seconds = asyncio.run(populate())
        load_token = program_key("pos", "shop")
        report = BackendReport(db.backend, args.members, enroll_seconds)
        print(
            f"[{db.backend}] {args.members} members enrolled in {enroll_seconds:.1f}s "
            f"({args.members / enroll_seconds:,.0f}/s)"
        )
        if reward is None:
            report.notes.append(
                "this version has no RewardService (CreateReward is UNIMPLEMENTED): the "
                "redemption scenario was skipped and the mix's redemptions are purchases"
            )
        else:
            report.notes.append(
                f"reward `{REWARD_ID}` ({REWARD_COST} points, unlimited stock); the mix's "
                f"redemptions go to {len(rich)} members credited {RICH_POINTS:,} points each "
                f"(AdjustPoints, {fund_seconds:.1f} s)"
            )
        pool = ClientPool(service.address, members, args, tag, load_token, reward, rich, contended)
        acked: dict[int, set[str]] = {}
        failed: dict[int, set[str]] = {}
        redeemed: dict[int, set[str]] = {}
        redeem_failed: dict[int, int] = {}
        for key, title, writes in SCENARIOS:
            plan = LoadPlan(args.seconds)
            if key == "openloop":
                peak = next(s.throughput for s in report.scenarios if s.key == "purchase")
                plan = LoadPlan(args.seconds, rate=HALF_PEAK_SHARE * peak)
                if plan.rate <= 0:
                    report.notes.append("no RecordPurchase throughput: open loop skipped")
                    continue
                title = f"RecordPurchase open loop, {plan.rate:,.1f}/s (50% of peak)"
            elif key == "mix":
                title = mix_title(reward is not None)
            elif key == "redeem":
                if reward is None:
                    continue
                title, note = fund_contended(
                    service.address, report, members, contended, tag, admin, args
                )
                report.notes.append(note)
            scenario, results = measure(pool, service, db, key, title, plan)
            report.scenarios.append(scenario)
            refused = sum(scenario.refused.values())
            print(
                f"[{db.backend}] {title}: {scenario.throughput:,.1f} calls/s, "
                f"p50 {scenario.p50_ms:.1f} ms, p99 {scenario.p99_ms:.1f} ms, "
                f"errors {sum(scenario.errors.values())}"
                + (f", redeemed {scenario.redeemed}, refused {refused}" if key == "redeem" else ""),
                flush=True,
            )
            if not writes:
                continue
            touched: set[int] = set()
            for r in results:
                for index, order_id in r.acked:
                    acked.setdefault(index, set()).add(order_id)
                    touched.add(index)
                for index, order_id in r.failed:
                    failed.setdefault(index, set()).add(order_id)
                    touched.add(index)
                for index, name in r.redeemed:
                    redeemed.setdefault(index, set()).add(name)
                    touched.add(index)
                for index in r.redeem_failed:
                    redeem_failed[index] = redeem_failed.get(index, 0) + 1
                    touched.add(index)
            if key == "redeem":
                touched.update(contended)  # refusals too: their balances must be whole
            indexes = members_to_check(len(members), touched, rng)
            verification = asyncio.run(
                _verify(
                    service.address,
                    members,
                    indexes,
                    acked,
                    failed,
                    bearer(load_token),
                    redeemed,
                    redeem_failed,
                )
            )
            report.verifications.append({"after": key, "title": title, **asdict(verification)})
            print(
                f"[{db.backend}] verified {verification.members_checked} members in "
                f"{verification.seconds:.1f}s: purchases {verification.purchases_acknowledged} "
                f"acknowledged, {verification.purchases_stored} stored; redemptions "
                f"{verification.redemptions_acknowledged} acknowledged, "
                f"{verification.redemptions_stored} stored, "
                f"{verification.redemption_entries} REDEEM entries; lowest balance "
                f"{verification.lowest_balance}; "
                f"discrepancies: {len(verification.discrepancies)}",
                flush=True,
            )
            for line in verification.discrepancies[:10]:
                print(f"    {line}", flush=True)
        baseline = report.scenarios[0].throughput
        for scenario in report.scenarios:
            if scenario.key != "openloop":  # its rate is the bench's choice
                scenario.ratio_to_empty_rpc = scenario.throughput / baseline
        if db.backend == "postgres":
            if pgbench is None:
                report.pgbench_note = "pgbench not found; the pgbench baseline was skipped"
            elif db.pg_url is not None:
                clients = args.processes * args.concurrency
                result = run_pgbench(pgbench, db.pg_url, clients, int(args.seconds))
                report.pgbench = asdict(result)
                for scenario in report.scenarios:
                    if scenario.key in PGBENCH_COMPARED:
                        scenario.ratio_to_pgbench = scenario.throughput / result.tps
                print(f"[postgres] pgbench: {result.tps:,.0f} TPS", flush=True)
        report.server_errors = service.error_lines()[:20]
        return report
    finally:
        if pool is not None:
            pool.close()
        code = service.stop()
        if code not in (0, None):
            print(f"[{db.backend}] the service exited with {code}:\n{service.log_tail()}")
        if service.profile_path is not None and service.profile_path.exists():
            summary = log_dir / "server-profile.txt"
            with summary.open("w") as out:
                stats = pstats.Stats(str(service.profile_path), stream=out)
                stats.sort_stats("tottime").print_stats(40)
                stats.sort_stats("cumulative").print_stats(60)
            print(f"[{db.backend}] server profile: {summary}")


def fund_contended(
    address: str,
    report: BackendReport,
    members: list[str],
    contended: list[int],
    tag: str,
    admin: Metadata,
    args: argparse.Namespace,
) -> tuple[str, str]:
    """Credit the contended members so they run out part way; the title and a note.

    Sized from the run's RecordPurchase throughput (a redemption is a similar write): all
    of them together can afford CONTENDED_RUN_OUT of what that rate would redeem in the
    scenario's time, so later redemptions are refused with INSUFFICIENT_POINTS.
    """
    peak = next(s.throughput for s in report.scenarios if s.key == "purchase")
    each = max(
        CONTENDED_MIN_REDEMPTIONS,
        math.ceil(CONTENDED_RUN_OUT * peak * args.seconds / len(contended)),
    )

    async def fund() -> float:
        async with grpc.aio.insecure_channel(address) as channel:
            names = [members[i] for i in contended]
            return await fund_members(channel, names, each * REWARD_COST, f"{tag}-fund", admin)

    seconds = asyncio.run(fund())
    in_flight = args.processes * args.concurrency
    title = f"RedeemReward, {in_flight} in flight on {len(contended)} members"
    note = (
        f"redemption scenario: {len(contended)} members credited {each * REWARD_COST:,} points "
        f"each ({each} redemptions; AdjustPoints, {seconds:.1f} s), sized so that they run out "
        f"about {CONTENDED_RUN_OUT:.0%} of the way through at the RecordPurchase rate; later "
        "redemptions are refused with INSUFFICIENT_POINTS (counted as refusals, not errors)"
    )
    return title, note


# --- the report -----------------------------------------------------------------------------


def machine_facts(pg_version: str | None) -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": metadata.version("grpcio"),
        "sqlalchemy": metadata.version("sqlalchemy"),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg_version or "not reachable",
    }


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def render(run: dict[str, Any]) -> str:
    lines = [
        f"Run: {run['date']}, `{run['command']}`, on {run['code']}  ",
        f"Settings: {run['settings']}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in run["machine"].items()),
        "",
        "Baselines: the empty RPC, `grpc.health.v1.Health/Check` on the same server, measured "
        "by the same client processes in the same run; `x empty` is a scenario's throughput "
        "divided by it. On PostgreSQL, the write scenarios (RecordPurchase, the mix and the "
        "redemptions) are also divided by pgbench's TPC-B-like TPS on the same server with as "
        "many clients (`x pgbench`). The open loop starts RecordPurchase calls on a fixed "
        f"schedule at {HALF_PEAK_SHARE:.0%} of the RecordPurchase throughput measured just "
        "before, and times each call from its scheduled start, so queueing counts. Refused "
        "redemptions (INSUFFICIENT_POINTS once the contended members run out) are definite "
        "answers: they count as calls, not errors.",
        "",
        "| backend | scenario | calls/s | x empty RPC | x pgbench | p50 ms | p95 ms | p99 ms "
        "| errors | refused |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in run["backends"]:
        for s in b["scenarios"]:
            errors = sum(s["errors"].values())
            error_text = str(errors) + (f" ({s['errors']})" if errors else "")
            refused = sum(s["refused"].values())
            refused_text = (
                f"{refused} of {s['calls']} ({', '.join(s['refused'])})"
                if refused
                else ("0" if s["key"] == "redeem" else "")
            )
            note = " (ran out of pre-built requests)" if s["exhausted"] else ""
            rate = f"{s['throughput']:,.0f}" if s["throughput"] >= 100 else f"{s['throughput']:.1f}"
            lines.append(
                f"| {b['backend']} | {s['title']}{note} | {rate} | "
                f"{_ratio(s['ratio_to_empty_rpc'])} | {_ratio(s['ratio_to_pgbench'])} | "
                f"{_ms(s['p50_ms'])} | {_ms(s['p95_ms'])} | {_ms(s['p99_ms'])} | "
                f"{error_text} | {refused_text} |"
            )
        if b.get("pgbench"):
            pg = b["pgbench"]
            lines.append(
                f"| {b['backend']} | pgbench TPC-B-like, {pg['clients']} clients | "
                f"{pg['tps']:,.0f} TPS | | 1.000 | {pg['latency_ms']:.2f} (avg) | | | | |"
            )
    half_peak = [
        (b["backend"], s) for b in run["backends"] for s in b["scenarios"] if s["key"] == "openloop"
    ]
    if half_peak:
        lines += [
            "",
            f"Half-peak latency (target: RecordPurchase p99 under "
            f"{HALF_PEAK_P99_TARGET_MS:g} ms at half of the peak throughput):",
            "",
        ]
        for backend, s in half_peak:
            met = "met" if s["p99_ms"] < HALF_PEAK_P99_TARGET_MS else "**not met**"
            lines.append(
                f"- {backend}: offered {s['offered_rate']:,.1f}/s, completed "
                f"{s['throughput']:,.1f}/s; p50 {_ms(s['p50_ms'])} ms, p95 {_ms(s['p95_ms'])} ms, "
                f"p99 {_ms(s['p99_ms'])} ms: {met}"
            )
    lines += [
        "",
        "Per call type in the mix and the redemption scenario:",
        "",
        "| backend | scenario | call | calls/s | p50 ms | p95 ms | p99 ms |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for b in run["backends"]:
        for s in b["scenarios"]:
            if s["key"] not in ("mix", "redeem"):
                continue
            for method, m in s["by_method"].items():
                lines.append(
                    f"| {b['backend']} | {s['key']} | {method} | {m['throughput']:,.1f} | "
                    f"{_ms(m['p50_ms'])} | {_ms(m['p95_ms'])} | {_ms(m['p99_ms'])} |"
                )
    lines += [
        "",
        "Where the CPU went (seconds of CPU over the scenario's wall time; `cores` = CPU "
        "seconds / wall seconds; the machine has "
        f"{run['machine']['cores']} cores and is shared, so `machine busy` includes "
        "other tenants):",
        "",
        "| backend | scenario | wall s | clients CPU s (cores) | server CPU s (cores) "
        "| server CPU ms/call | postgres backends CPU s | machine busy cores |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in run["backends"]:
        for s in b["scenarios"]:
            wall = s["wall_seconds"]
            pg = s["postgres_cpu_seconds"]
            per_call = 1000 * s["server_cpu_seconds"] / max(1, s["calls"])
            lines.append(
                f"| {b['backend']} | {s['key']} | {wall:.1f} | "
                f"{s['client_cpu_seconds']:.1f} ({s['client_cpu_seconds'] / wall:.2f}) | "
                f"{s['server_cpu_seconds']:.1f} ({s['server_cpu_seconds'] / wall:.2f}) | "
                f"{per_call:.2f} | {'' if pg is None else f'{pg:.1f}'} | "
                f"{s['machine_busy_cores']:.2f} |"
            )
    lines += [
        "",
        "Correctness after each write scenario, through the API (GetBalance, "
        "ListLedgerEntries, ListRedemptions), for every member a purchase or redemption was "
        "sent for in the scenario plus 200 others at random: balance = sum of ledger entries "
        "(available and pending); the purchase entries are exactly the acknowledged "
        "purchases, each once; every acknowledged redemption is listed once and confirmed, "
        "with as many REDEEM entries as redemptions and `redeemed_points` equal to their "
        "sum; no balance below zero, now or after any entry (`lowest balance`). Counts are "
        "over the members checked, everything since the start:",
        "",
        "| backend | after | members checked | purchases acknowledged | stored "
        "| failed calls stored | redemptions acknowledged | stored | REDEEM entries "
        "| lowest balance | discrepancies |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in run["backends"]:
        for v in b["verifications"]:
            lines.append(
                f"| {b['backend']} | {v['after']} | {v['members_checked']} | "
                f"{v['purchases_acknowledged']} | {v['purchases_stored']} | "
                f"{v['failed_but_stored'] + v['redemptions_failed_but_stored']} | "
                f"{v['redemptions_acknowledged']} | {v['redemptions_stored']} | "
                f"{v['redemption_entries']} | {v['lowest_balance']} | "
                f"{len(v['discrepancies'])} |"
            )
    notes = [
        f"- {b['backend']}: {b['members']:,} members enrolled through EnrollMember "
        f"({ENROLL_CONCURRENCY} in flight) in {b['enroll_seconds']:.1f} s "
        f"({b['members'] / b['enroll_seconds']:,.0f}/s)."
        for b in run["backends"]
    ]
    notes += [f"- {b['backend']}: {note}." for b in run["backends"] for note in b["notes"]]
    notes += [
        f"- {b['backend']}: {b['pgbench_note']}" for b in run["backends"] if b["pgbench_note"]
    ]
    notes += [
        f"- {b['backend']}: the server logged errors: {b['server_errors'][:3]}"
        for b in run["backends"]
        if b["server_errors"]
    ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, block: str) -> None:
    write_marked(
        path,
        BEGIN_MARK,
        END_MARK,
        block,
        "## Throughput and latency\n\n"
        "`make bench` (`bench/run.py`) measures the real service end to end over gRPC.",
    )


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"))
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight per process")
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 200 members, 2 s, SQLite only"
    )
    parser.add_argument(
        "--ref",
        help="benchmark this git commit (exported clean) instead of the working tree",
    )
    parser.add_argument(
        "--profile-server",
        action="store_true",
        help="run the service under cProfile (slower); stats in bench/results/",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="markdown file to update (default: BENCHMARKS.md; none with --quick)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.seconds, args.backend = 200, 2.0, "sqlite"
    elif args.output is None:
        args.output = REPO / "BENCHMARKS.md"
    return args


def main(argv: list[str]) -> int:
    if "--segments" in argv:
        # The segmentation benchmark (bench/segments.py) takes the other arguments.
        import segments

        return segments.main([a for a in argv if a != "--segments"])
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args = parse_args(argv)
    pg_version = postgres_version() if args.backend != "sqlite" else None
    if args.backend is None:
        args.backend = "both" if pg_version else "sqlite"
        if not pg_version:
            print("PostgreSQL is not reachable: benchmarking SQLite only", flush=True)
    if args.backend in ("postgres", "both") and not pg_version:
        print("PostgreSQL is not reachable (LOYALTY_BENCH_DATABASE_URL)", file=sys.stderr)
        return 2
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    pgbench = find_pgbench()
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "bench/run.py", *argv]),
        "settings": (
            f"{args.members} members; {args.processes} client processes x "
            f"{CHANNELS_PER_PROCESS} channels, {args.concurrency} calls in flight each "
            f"({args.processes * args.concurrency} in total); {args.seconds:g} s per scenario; "
            "service defaults (DB pool 10, log level INFO, API keys required), plaintext on "
            "loopback, maintenance off"
        ),
        "machine": machine_facts(pg_version),
        "backends": [],
    }
    started = time.monotonic()
    with code_under_test(args.ref) as (source, described):
        run["code"] = described
        print(f"benchmarking {described}")
        for backend in backends:
            log_dir = results_dir / f"{stamp}-{backend}"
            log_dir.mkdir(parents=True, exist_ok=True)
            with fresh_database(backend) as db:
                run["backends"].append(asdict(bench_backend(db, args, log_dir, pgbench, source)))
    run["elapsed_seconds"] = time.monotonic() - started
    (results_dir / f"{stamp}.json").write_text(json.dumps(run, indent=2))
    block = render(run)
    print("\n" + block)
    print(f"total {run['elapsed_seconds']:.0f} s; raw results in bench/results/{stamp}.json")
    if args.output is not None:
        write_markdown(args.output, block)
        print(f"updated {args.output}")
    bad = [
        (b["backend"], v["after"], d)
        for b in run["backends"]
        for v in b["verifications"]
        for d in v["discrepancies"]
    ]
    if bad:
        print(f"FAILED: {len(bad)} ledger discrepancies", file=sys.stderr)
        for line in bad[:20]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("discrepancies: 0")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
