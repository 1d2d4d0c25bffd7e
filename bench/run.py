"""End-to-end benchmark of the loyalty-engine gRPC service (`make bench`).

Starts the real service as a subprocess on a fresh database, loads a program and members
through the API, drives load from separate client processes, checks the ledger through
the API after every write scenario, and writes the results into BENCHMARKS.md (between
the `bench:begin`/`bench:end` markers; the prose around them is kept).

    .venv/bin/python bench/run.py [--backend sqlite|postgres|both] [--members N]
        [--processes P] [--concurrency C] [--seconds S] [--quick]

Every throughput is reported beside an empty-RPC baseline (grpc.health.v1.Health/Check
through the same server, same clients) measured in the same run, because absolute
numbers on a small shared machine mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
from load import ClientConfig, ScenarioResult, client_main
from population import (
    PROGRAM_ID,
    Metadata,
    bearer,
    configure_program,
    create_program,
    enroll_members,
    member_name,
)
from verify import Verification, members_to_check, verify_ledgers

SCENARIOS = (
    ("health", "empty RPC (Health/Check)", False),
    ("balance", "GetBalance", False),
    ("purchase", "RecordPurchase", True),
    ("mix", "mix: 35% GetBalance, 35% GetMember, 30% RecordPurchase", True),
)
CHANNELS_PER_PROCESS = 4
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

    def run(self, scenario: str, seconds: float) -> tuple[list[ScenarioResult], float]:
        for pipe in self.pipes:
            pipe.send(("prepare", (scenario, seconds)))
        self._expect_all("prepared")
        start_at = time.time() + 0.3
        for pipe in self.pipes:
            pipe.send(("run", (scenario, start_at, seconds)))
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
    seconds: float,
) -> tuple[ScenarioReport, list[ScenarioResult]]:
    # Snapshots bracket request building too (the service and the database are idle then),
    # so machine-wide busy time is divided by the snapshots' own interval.
    pg0 = _pg_cpu(database)
    server0, busy0, t0 = service.cpu_seconds(), machine_busy_seconds(), time.monotonic()
    results, start_at = pool.run(key, seconds)
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
    for r in results:
        calls.update(r.calls)
        errors.update(r.errors)
    by_method = {}
    for method, values in sorted(latencies.items()):
        values.sort()
        by_method[method] = {
            "calls": len(values),
            "throughput": len(values) / wall,
            "p50_ms": percentile(values, 50),
            "p95_ms": percentile(values, 95),
            "p99_ms": percentile(values, 99),
        }
    total = sum(calls.values())
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
) -> Verification:
    async with grpc.aio.insecure_channel(address) as channel:
        return await verify_ledgers(channel, members, indexes, acked, failed, metadata)


# --- one backend ----------------------------------------------------------------------------


def bench_backend(
    db: BenchDatabase,
    args: argparse.Namespace,
    log_dir: Path,
    pgbench: str | None,
    source: Path,
) -> BackendReport:
    tag = f"b{secrets.token_hex(4)}"
    members = [member_name(i) for i in range(args.members)]
    service = Service(db.url, log_dir, source=source, profile=args.profile_server)
    pool: ClientPool | None = None
    try:
        service.wait_serving()

        # Auth stays on, as in production: an operator key creates the program, an admin
        # key configures it and enrolls, and the load runs with a POS + shop key.
        operator = service.create_key("--operator", "--label", "bench operator")

        async def populate() -> float:
            async with grpc.aio.insecure_channel(service.address) as channel:
                await create_program(channel, tag, bearer(operator))
                admin = bearer(program_key("admin"))
                await configure_program(channel, tag, admin)
                return await enroll_members(channel, args.members, tag, admin)

        def program_key(*scopes: str) -> str | None:
            if operator is None:
                return None
            flags = [f for scope in scopes for f in ("--scope", scope)]
            return service.create_key("--program", PROGRAM_ID, *flags, "--label", "bench")

        enroll_seconds = asyncio.run(populate())
        load_token = program_key("pos", "shop")
        report = BackendReport(db.backend, args.members, enroll_seconds)
        print(f"[{db.backend}] {args.members} members enrolled in {enroll_seconds:.1f}s")
        pool = ClientPool(service.address, members, args, tag, load_token)
        rng = random.Random(args.seed)
        acked: dict[int, set[str]] = {}
        failed: dict[int, set[str]] = {}
        for key, title, writes in SCENARIOS:
            scenario, results = measure(pool, service, db, key, title, args.seconds)
            report.scenarios.append(scenario)
            print(
                f"[{db.backend}] {title}: {scenario.throughput:,.0f} calls/s, "
                f"p50 {scenario.p50_ms:.1f} ms, p99 {scenario.p99_ms:.1f} ms, "
                f"errors {sum(scenario.errors.values())}",
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
            indexes = members_to_check(len(members), touched, rng)
            verification = asyncio.run(
                _verify(service.address, members, indexes, acked, failed, bearer(load_token))
            )
            report.verifications.append({"after": title, **asdict(verification)})
            print(
                f"[{db.backend}] verified {verification.members_checked} members in "
                f"{verification.seconds:.1f}s: {verification.purchases_acknowledged} "
                f"acknowledged, {verification.purchases_stored} stored, "
                f"discrepancies: {len(verification.discrepancies)}",
                flush=True,
            )
            for line in verification.discrepancies[:10]:
                print(f"    {line}", flush=True)
        baseline = report.scenarios[0].throughput
        for scenario in report.scenarios:
            scenario.ratio_to_empty_rpc = scenario.throughput / baseline
        if db.backend == "postgres":
            if pgbench is None:
                report.pgbench_note = "pgbench not found; the pgbench baseline was skipped"
            elif db.pg_url is not None:
                clients = args.processes * args.concurrency
                result = run_pgbench(pgbench, db.pg_url, clients, int(args.seconds))
                report.pgbench = asdict(result)
                for scenario in report.scenarios:
                    if scenario.key == "purchase":
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


def render(run: dict[str, Any]) -> str:
    lines = [
        f"Run: {run['date']}, `{run['command']}`, on {run['code']}  ",
        f"Settings: {run['settings']}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in run["machine"].items()),
        "",
        "Baseline: the empty RPC, `grpc.health.v1.Health/Check` on the same server, measured "
        "by the same client processes in the same run; `x empty` is a scenario's throughput "
        "divided by it. On PostgreSQL, RecordPurchase is also compared with pgbench's "
        "TPC-B-like TPS on the same server with as many clients.",
        "",
        "| backend | scenario | calls/s | x empty RPC | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in run["backends"]:
        for s in b["scenarios"]:
            errors = sum(s["errors"].values())
            error_text = str(errors) + (f" ({s['errors']})" if errors else "")
            note = " (ran out of pre-built requests)" if s["exhausted"] else ""
            lines.append(
                f"| {b['backend']} | {s['title']}{note} | {s['throughput']:,.0f} | "
                f"{s['ratio_to_empty_rpc']:.3f} | {_ms(s['p50_ms'])} | {_ms(s['p95_ms'])} | "
                f"{_ms(s['p99_ms'])} | {error_text} |"
            )
        if b.get("pgbench"):
            pg = b["pgbench"]
            purchase = next(s for s in b["scenarios"] if s["key"] == "purchase")
            lines.append(
                f"| {b['backend']} | pgbench TPC-B-like, {pg['clients']} clients | "
                f"{pg['tps']:,.0f} TPS | | {pg['latency_ms']:.2f} (avg) | | | |"
            )
            lines.append(
                f"| {b['backend']} | RecordPurchase / pgbench TPS | "
                f"{purchase['ratio_to_pgbench']:.3f} | | | | | |"
            )
    lines += [
        "",
        "Per call type in the mix:",
        "",
        "| backend | call | calls/s | p50 ms | p95 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for b in run["backends"]:
        mix = next(s for s in b["scenarios"] if s["key"] == "mix")
        for method, m in mix["by_method"].items():
            lines.append(
                f"| {b['backend']} | {method} | {m['throughput']:,.0f} | {_ms(m['p50_ms'])} | "
                f"{_ms(m['p95_ms'])} | {_ms(m['p99_ms'])} |"
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
        "Correctness after each write scenario, through the API (GetBalance and "
        "ListLedgerEntries), for every member a purchase was sent for in the scenario plus "
        "200 others at random: balance = sum of ledger entries (available and pending), and "
        "the purchase entries are exactly the acknowledged purchases, each once. Counts are "
        "over the members checked, all purchases since the start:",
        "",
        "| backend | after | members checked | acknowledged | stored | failed but stored "
        "| discrepancies |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in run["backends"]:
        for v in b["verifications"]:
            lines.append(
                f"| {b['backend']} | {v['after'].split(':')[0]} | {v['members_checked']} | "
                f"{v['purchases_acknowledged']} | {v['purchases_stored']} | "
                f"{v['failed_but_stored']} | {len(v['discrepancies'])} |"
            )
    notes = [
        f"- {b['backend']}: {b['members']} members enrolled through EnrollMember "
        f"(32 in flight) in {b['enroll_seconds']:.1f} s "
        f"({b['members'] / b['enroll_seconds']:,.0f}/s)."
        for b in run["backends"]
    ]
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


DEFAULT_PROSE = """# Benchmarks

`make bench` (`bench/run.py`) measures the real service end to end over gRPC.

{block}
## Reading

(Not written yet: read the numbers above.)
"""


def write_markdown(path: Path, block: str) -> None:
    marked = f"{BEGIN_MARK}\n{block}{END_MARK}\n"
    if path.exists():
        text = path.read_text()
        if BEGIN_MARK in text and END_MARK in text:
            head, rest = text.split(BEGIN_MARK, 1)
            tail = rest.split(END_MARK, 1)[1].lstrip("\n")
            path.write_text(head + marked + tail)
            return
    path.write_text(DEFAULT_PROSE.format(block=marked))


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"))
    parser.add_argument("--members", type=int, default=2000)
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
