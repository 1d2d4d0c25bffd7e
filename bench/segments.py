"""Segmentation benchmark on PostgreSQL: bulk import, RFM refresh, top customers, export.

    .venv/bin/python bench/segments.py [--members M] [--purchases P] [--seed S]
        [--top-calls N] [--reimport-rows R] [--profile-import ROWS] [--output FILE | --no-output]

(also `.venv/bin/python bench/run.py --segments ...`). On a fresh `loyalty_bench_<hex>`
database, migrated with `python -m loyalty_engine migrate` and dropped afterwards:

1. writes a synthetic EUR purchase history (M members, P purchases over 3 years, skewed:
   every member buys once, half of them only once, and the rest of the purchases go to the
   other half by capped Pareto weights, so a few buy a lot) to a CSV file in a temp dir,
   untimed;
2. loads it with `python -m loyalty_engine import` as a subprocess (wall time, rows/s,
   the import's own CPU and its PostgreSQL backend's CPU);
3. checks that the purchases and members stored are the rows and members generated, and
   that re-importing (the first R rows of the same file) reports every row as a duplicate;
4. through the real server (`serve`, plaintext, an operator key from `keys create
   --operator`, then a program key): RefreshSegments (twice), ListTopCustomers top 100 by
   each metric over 12 months (sequential calls, p50/p99), and ListSegmentMembers of the
   largest segment in pages of 2,000 (streamed members/s);
5. optionally profiles the import (cProfile) of a further, fresh file of ROWS rows.

Results go to bench/results/<stamp>-segments.json and, unless --no-output, into
BENCHMARKS.md between the `segments:begin`/`segments:end` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import itertools
import json
import math
import os
import pstats
import random
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from backends import (
    REPO,
    BenchDatabase,
    Service,
    _dsn,
    code_under_test,
    fresh_database,
    machine_busy_seconds,
    postgres_backend_cpu,
    postgres_version,
)
from marked import write_marked
from population import PROGRAM_ID, bearer, create_program
from run import machine_facts, percentile

from loyalty_engine.gen.loyalty.v1 import segment_service_pb2 as sp
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2_grpc as sp_grpc

BEGIN_MARK = "<!-- segments:begin (written by bench/segments.py; edit outside these marks) -->"
END_MARK = "<!-- segments:end -->"
YEARS = 3
ONE_OFF_SHARE = 0.5
PARETO_ALPHA = 1.5
WEIGHT_CAP = 150.0
IMPORT_BATCH = 20000  # the CLI's default --batch
EXPORT_PAGE = 2000  # members per ListSegmentMembers message (its page_size)
TARGETS = {
    "import": ">= 100,000 purchases/s",
    "refresh": "< 10 s at 1M members",
    "top": "< 10 ms p99",
    "export": ">= 100,000 members/s",
}


@dataclass
class History:
    """What the generator wrote."""

    path: Path
    rows: int
    members: int
    seconds: float
    one_off_members: int
    top_1pct_share: float  # share of purchases made by the top 1% of members
    max_orders: int
    # Sum over the CLI's 2000-row batches of the members each batch touches: the import
    # updates each such member's statistics with its own UPDATE.
    member_batch_updates: int


@dataclass
class Import:
    """One run of `loyalty-engine import`."""

    command: str
    rows: int
    wall_seconds: float
    imported: int
    duplicates: int
    errors: int
    import_cpu_seconds: float
    postgres_cpu_seconds: float
    machine_busy_cores: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall_seconds


@dataclass
class Latency:
    title: str
    calls: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    returned: int


@dataclass
class Report:
    members: int
    purchases: int
    history: dict[str, Any] = field(default_factory=dict)
    imports: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    refresh: list[dict[str, float]] = field(default_factory=list)
    top: list[dict[str, Any]] = field(default_factory=list)
    export: dict[str, Any] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)


# --- the synthetic history ------------------------------------------------------------------


def external_id(prefix: str, member: int) -> str:
    return f"{prefix}ext-{member:07d}"


def write_history(
    path: Path, members: int, purchases: int, now: datetime, seed: int, prefix: str = ""
) -> History:
    """Write a purchase CSV in time order (as an export from a till system would be)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    span = YEARS * 365 * 86400.0
    # Each member is active over a part of the 3 years: they join at some point and buy
    # until they lapse (or until now), so recency varies as well as frequency.
    active = []
    for _ in range(members):
        start = rng.random() * span
        end = start + (span - start) * rng.random() ** 0.5
        active.append((start, end))
    # Half the members buy once; the others share the remaining purchases by Pareto
    # weights, capped so the heaviest buyer stays plausible (a few purchases a week).
    weights = [
        0.0 if rng.random() < ONE_OFF_SHARE else min(rng.paretovariate(PARETO_ALPHA), WEIGHT_CAP)
        for _ in range(members)
    ]
    cum = list(itertools.accumulate(weights))
    total = cum[-1]
    owners = list(range(min(members, purchases)))
    for _ in range(purchases - len(owners)):
        owners.append(min(bisect.bisect_left(cum, rng.random() * total), members - 1))
    events = []
    for order, member in enumerate(owners):
        start, end = active[member]
        events.append((start + (end - start) * rng.random(), member, order))
    events.sort()
    origin = now - timedelta(seconds=span + 3600)
    counts = [0] * members
    in_batch: set[int] = set()
    member_batch_updates = 0
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["member_external_id", "order_id", "purchase_time", "total_minor", "currency_code"]
        )
        for row, (offset, member, order) in enumerate(events):
            if row % IMPORT_BATCH == 0:
                member_batch_updates += len(in_batch)
                in_batch.clear()
            in_batch.add(member)
            counts[member] += 1
            when = origin + timedelta(seconds=offset)
            # Baskets: log-normal around 25 EUR, at least 0.50 EUR.
            amount = max(50, int(rng.lognormvariate(math.log(2500), 0.8)))
            writer.writerow([
                external_id(prefix, member), f"{prefix}o{order:09d}",
                when.strftime("%Y-%m-%dT%H:%M:%SZ"), amount, "EUR",
            ])  # fmt: skip
    counts.sort(reverse=True)
    top = counts[: max(1, members // 100)]
    return History(
        path=path,
        rows=purchases,
        members=len(set(owners)),
        seconds=time.perf_counter() - started,
        one_off_members=sum(1 for c in counts if c == 1),
        top_1pct_share=sum(top) / purchases,
        max_orders=counts[0],
        member_batch_updates=member_batch_updates + len(in_batch),
    )


def head_of(path: Path, rows: int, into: Path) -> Path:
    """The header and the first `rows` rows of a CSV file."""
    with path.open() as src, into.open("w") as dst:
        for line in itertools.islice(src, rows + 1):
            dst.write(line)
    return into


# --- the import -----------------------------------------------------------------------------


class BackendSampler:
    """Samples the CPU of the database's PostgreSQL backends while a client runs.

    A client's backend is gone (and its CPU with it) once the client disconnects, so the
    last sample of each backend is what it used up to then (within the sampling period).
    """

    def __init__(self, database: str, period: float = 1.0) -> None:
        self.database, self.period = database, period
        self.baseline: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for pid, cpu in postgres_backend_cpu(self.database).items():
            if cpu > 0:  # 0: the backend exited between listing and reading
                self.last[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> BackendSampler:
        self.baseline = postgres_backend_cpu(self.database)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def cpu_seconds(self) -> float:
        return sum(cpu - self.baseline.get(pid, 0.0) for pid, cpu in self.last.items())


_COUNTS = re.compile(
    r"([\d,]+) rows\s+([\d,]+) imported\s+([\d,]+) duplicates\s+([\d,]+) errors", re.M
)


def run_import(
    db: BenchDatabase, env: dict[str, str], source: Path, path: Path, log: Path, *wrap: str
) -> Import:
    """`python -m loyalty_engine import FILE --program bench`, timed."""
    command = [sys.executable, *wrap, "-m", "loyalty_engine", "import", str(path)]
    command += ["--program", PROGRAM_ID]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, t0 = machine_busy_seconds(), time.perf_counter()
    with BackendSampler(db.name) as sampler, log.open("w") as err:
        done = subprocess.run(command, cwd=source, env=env, stderr=err, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    busy1 = machine_busy_seconds()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = log.read_text(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"import failed ({done.returncode}):\n{text[-3000:]}")
    found = _COUNTS.findall(text.replace("\r", "\n"))
    if not found:
        raise RuntimeError(f"cannot read the import's summary:\n{text[-2000:]}")
    rows, imported, duplicates, errors = (int(v.replace(",", "")) for v in found[-1])
    return Import(
        command=shlex.join(["python", *command[1:]]).replace(str(path.parent) + "/", ""),
        rows=rows,
        wall_seconds=wall,
        imported=imported,
        duplicates=duplicates,
        errors=errors,
        import_cpu_seconds=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        postgres_cpu_seconds=sampler.cpu_seconds(),
        machine_busy_cores=(busy1 - busy0) / wall,
    )


# --- database checks ------------------------------------------------------------------------


async def _query(db: BenchDatabase, sql: str, *args: Any) -> list[asyncpg.Record]:
    assert db.pg_url is not None
    conn = await asyncpg.connect(_dsn(db.pg_url), timeout=10)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def stored_counts(db: BenchDatabase) -> dict[str, int]:
    rows = asyncio.run(
        _query(
            db,
            "SELECT (SELECT count(*) FROM purchases WHERE program_id = $1) AS purchases, "
            "(SELECT count(*) FROM members WHERE program_id = $1) AS members, "
            "(SELECT count(*) FROM order_claims WHERE program_id = $1) AS claims, "
            "(SELECT coalesce(sum(order_count), 0) FROM member_accounts WHERE program_id = $1) "
            "AS order_count_sum, "
            "pg_total_relation_size('purchases') AS purchases_bytes",
            PROGRAM_ID,
        )
    )
    return {k: int(v) for k, v in rows[0].items()}


BASELINE_TABLE = """
CREATE TABLE copy_baseline (
    member_external_id varchar(200) NOT NULL, order_id varchar(200) NOT NULL,
    purchase_time timestamptz NOT NULL, total_minor bigint NOT NULL,
    currency_code varchar(3) NOT NULL,
    PRIMARY KEY (member_external_id, order_id)
);
CREATE UNIQUE INDEX copy_baseline_order ON copy_baseline (order_id);
CREATE INDEX copy_baseline_time ON copy_baseline (member_external_id, purchase_time)
"""


def copy_baseline(db: BenchDatabase, path: Path) -> dict[str, float]:
    """PostgreSQL alone: COPY the same file into a bare table with the same kind of keys.

    No validation, no members, no statistics, no lines: the floor of storing these rows with
    a per-member primary key, a unique order id and a per-member time index on this machine.
    """

    async def run() -> float:
        assert db.pg_url is not None
        conn = await asyncpg.connect(_dsn(db.pg_url), timeout=10)
        try:
            await conn.execute(BASELINE_TABLE)
            started = time.perf_counter()
            async with conn.transaction():
                with path.open("rb") as source:
                    await conn.copy_to_table(
                        "copy_baseline", source=source, format="csv", header=True
                    )
            seconds = time.perf_counter() - started
            await conn.execute("DROP TABLE copy_baseline")
            return seconds
        finally:
            await conn.close()

    seconds = asyncio.run(run())
    rows = sum(1 for _ in path.open()) - 1
    return {"rows": rows, "seconds": seconds, "rows_per_second": rows / seconds}


def explain(db: BenchDatabase, column: str) -> str:
    """The plan of the top-N cut query for a metric column, with timings."""
    rows = asyncio.run(
        _query(
            db,
            f"EXPLAIN (ANALYZE, COSTS OFF, TIMING ON) SELECT {column} FROM member_scores "
            f"WHERE program_id = $1 AND {column} > 0 ORDER BY {column} DESC OFFSET 99 LIMIT 1",
            PROGRAM_ID,
        )
    )
    return "\n".join(r[0] for r in rows)


# --- the gRPC part --------------------------------------------------------------------------


async def refresh(address: str, metadata: Any, tag: str) -> tuple[float, int]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sp_grpc.SegmentServiceStub(channel)
        started = time.perf_counter()
        reply = await stub.RefreshSegments(
            sp.RefreshSegmentsRequest(request_id=tag, program=f"programs/{PROGRAM_ID}"),
            metadata=metadata,
            timeout=3600,
        )
        return time.perf_counter() - started, reply.members_scored


async def top_latencies(address: str, metadata: Any, metric: int, calls: int) -> Latency:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sp_grpc.SegmentServiceStub(channel)
        request = sp.ListTopCustomersRequest(
            parent=f"programs/{PROGRAM_ID}",
            metric=metric,  # type: ignore[arg-type]
            window=sp.TOP_CUSTOMER_WINDOW_12_MONTHS,
            top_n=100,
        )
        returned = 0
        for _ in range(10):  # warm the connection pool, plan caches and buffers
            returned = len((await stub.ListTopCustomers(request, metadata=metadata)).customers)
        values = []
        for _ in range(calls):
            started = time.perf_counter()
            await stub.ListTopCustomers(request, metadata=metadata, timeout=60)
            values.append((time.perf_counter() - started) * 1000)
    values.sort()
    return Latency(
        title=f"top 100 by {sp.TopCustomerMetric.Name(metric)}, 12 months",  # type: ignore[arg-type]
        calls=calls,
        p50_ms=percentile(values, 50),
        p99_ms=percentile(values, 99),
        max_ms=values[-1],
        returned=returned,
    )


async def segment_sizes(address: str, metadata: Any) -> dict[str, int]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await sp_grpc.SegmentServiceStub(channel).ListSegments(
            sp.ListSegmentsRequest(parent=f"programs/{PROGRAM_ID}"), metadata=metadata
        )
    return {s.name.rsplit("/", 1)[1]: s.member_count for s in reply.segments}


async def export(address: str, metadata: Any, segment: str) -> tuple[int, float, float]:
    """Stream a segment; returns (members, seconds, client CPU seconds)."""
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = sp_grpc.SegmentServiceStub(channel)
        cpu0, started = time.process_time(), time.perf_counter()
        count = 0
        async for reply in stub.ListSegmentMembers(
            sp.ListSegmentMembersRequest(
                segment=f"programs/{PROGRAM_ID}/segments/{segment}", page_size=EXPORT_PAGE
            ),
            metadata=metadata,
            timeout=3600,
        ):
            count += len(reply.members)
        return count, time.perf_counter() - started, time.process_time() - cpu0


# --- the run --------------------------------------------------------------------------------


def step(message: str) -> None:
    print(f"[segments {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def bench(db: BenchDatabase, args: argparse.Namespace, source: Path, log_dir: Path) -> Report:
    report = Report(args.members, args.purchases)
    env = dict(os.environ, LOYALTY_DATABASE_URL=db.url, LOYALTY_LOG_LEVEL="WARNING")
    subprocess.run(
        [sys.executable, "-m", "loyalty_engine", "migrate"],
        cwd=source,
        env=env,
        check=True,
        capture_output=True,
    )
    tag = f"s{os.urandom(4).hex()}"
    with tempfile.TemporaryDirectory(prefix="loyalty-bench-seg-") as tmp:
        now = datetime.now(UTC)
        step(f"writing {args.purchases:,} purchases of {args.members:,} members (untimed)")
        history = write_history(Path(tmp) / "purchases.csv", args.members, args.purchases, now, 1)
        report.history = {**asdict(history), "path": history.path.name}
        report.history["bytes"] = history.path.stat().st_size
        step(
            f"written in {history.seconds:.0f} s: {history.one_off_members:,} one-off buyers, "
            f"top 1% of members made {history.top_1pct_share:.0%} of purchases, "
            f"the heaviest {history.max_orders:,}"
        )
        service = Service(db.url, log_dir, source=source)
        try:
            service.wait_serving()
            operator = service.create_key("--operator", "--label", "bench operator")

            async def make_program() -> None:
                async with grpc.aio.insecure_channel(service.address) as channel:
                    await create_program(channel, tag, bearer(operator))

            asyncio.run(make_program())
            key = service.create_key(
                "--program", PROGRAM_ID, "--scope", "marketing", "--label", "bench"
            )
            metadata = bearer(key)
            # The service is idle (maintenance off) while the CLI imports.
            step("importing with `loyalty-engine import`")
            full = run_import(db, env, source, history.path, log_dir / "import.log")
            report.imports["full"] = {**asdict(full), "rows_per_second": full.rows_per_second}
            step(
                f"imported {full.imported:,} rows in {full.wall_seconds:.1f} s "
                f"({full.rows_per_second:,.0f} rows/s; import CPU {full.import_cpu_seconds:.0f} s, "
                f"postgres backend CPU {full.postgres_cpu_seconds:.0f} s)"
            )
            counts = stored_counts(db)
            report.checks = {"stored": counts}
            step("PostgreSQL alone: COPY of the same file into a bare table")
            report.imports["copy_baseline"] = copy_baseline(db, history.path)
            step(f"COPY baseline: {report.imports['copy_baseline']['rows_per_second']:,.0f} rows/s")
            sample = history.path
            if args.reimport_rows and args.reimport_rows < history.rows:
                sample = head_of(history.path, args.reimport_rows, Path(tmp) / "sample.csv")
            again = run_import(db, env, source, sample, log_dir / "reimport.log")
            report.imports["again"] = {**asdict(again), "rows_per_second": again.rows_per_second}
            report.checks.update(
                purchases_ok=counts["purchases"] == full.imported == args.purchases,
                members_ok=counts["members"] == history.members,
                reimport_rows=again.rows,
                reimport_all_duplicates=again.duplicates == again.rows and again.imported == 0,
                stored_after_reimport=stored_counts(db)["purchases"],
            )
            step(f"checks: {report.checks}")

            for i in range(2):
                seconds, scored = asyncio.run(refresh(service.address, metadata, f"{tag}-r{i}"))
                report.refresh.append({"seconds": seconds, "members_scored": scored})
                step(f"RefreshSegments {i + 1}: {seconds:.1f} s, {scored:,} members scored")
            for metric in (
                sp.TOP_CUSTOMER_METRIC_SPEND,
                sp.TOP_CUSTOMER_METRIC_ORDERS,
                sp.TOP_CUSTOMER_METRIC_POINTS_EARNED,
                sp.TOP_CUSTOMER_METRIC_AVERAGE_ORDER_VALUE,
            ):
                latency = asyncio.run(top_latencies(service.address, metadata, metric, args.calls))
                report.top.append(asdict(latency))
                step(f"{latency.title}: p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms")
            report.top.append({"explain_spend_12m": explain(db, "spend_12m")})
            report.top.append({"explain_orders_12m": explain(db, "orders_12m")})
            report.segments = asyncio.run(segment_sizes(service.address, metadata))
            largest = max(report.segments, key=lambda s: report.segments[s])
            server0 = service.cpu_seconds()
            members, seconds, client_cpu = asyncio.run(export(service.address, metadata, largest))
            report.export = {
                "segment": largest,
                "members": members,
                "expected": report.segments[largest],
                "seconds": seconds,
                "members_per_second": members / seconds,
                "client_cpu_seconds": client_cpu,
                "server_cpu_seconds": service.cpu_seconds() - server0,
            }
            step(
                f"exported {members:,} members of {largest} in {seconds:.1f} s "
                f"({members / seconds:,.0f}/s)"
            )
            if args.profile_import:
                report.profile = profile_import(db, env, source, args, Path(tmp), log_dir, now)
            report.server_errors = service.error_lines()[:20]
        finally:
            code = service.stop()
            if code not in (0, None):
                step(f"the service exited with {code}:\n{service.log_tail()}")
    return report


def profile_import(
    db: BenchDatabase,
    env: dict[str, str],
    source: Path,
    args: argparse.Namespace,
    tmp: Path,
    log_dir: Path,
    now: datetime,
) -> dict[str, Any]:
    """Import a further fresh file (new members, new orders) under cProfile."""
    rows = args.profile_import
    members = max(1, rows * args.members // args.purchases)
    path = tmp / "profiled.csv"
    write_history(path, members, rows, now, 2, prefix="p")
    prof = log_dir / "import.prof"
    step(f"profiling the import of {rows:,} fresh rows ({members:,} new members)")
    result = run_import(
        db, env, source, path, log_dir / "import-profiled.log", "-m", "cProfile", "-o", str(prof)
    )
    summary = log_dir / "import-profile.txt"
    with summary.open("w") as out:
        stats = pstats.Stats(str(prof), stream=out)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(60)
    return {
        **asdict(result),
        "rows_per_second": result.rows_per_second,
        "members": members,
        "summary": str(summary.relative_to(REPO)),
    }


# --- the report -----------------------------------------------------------------------------


def render(run: dict[str, Any]) -> str:
    r = run["report"]
    full, again = r["imports"]["full"], r["imports"]["again"]
    refresh_s = min(x["seconds"] for x in r["refresh"])
    refresh_all = ", ".join(f"{x['seconds']:.1f}" for x in r["refresh"])
    tops = [x for x in r["top"] if "p99_ms" in x]
    worst = max(tops, key=lambda x: x["p99_ms"])
    exp = r["export"]
    baseline = r["imports"].get("copy_baseline")
    h = r["history"]
    met = {
        "import": full["rows_per_second"] >= 100_000,
        "refresh": refresh_s < 10 and r["members"] >= 1_000_000,
        "top": worst["p99_ms"] < 10,
        "export": exp["members_per_second"] >= 100_000,
    }

    def verdict(key: str) -> str:
        if key == "refresh" and r["members"] < 1_000_000:
            return "not measured at 1M" + (" (met at this scale)" if refresh_s < 10 else "")
        return "met" if met[key] else "**not met**"

    c = r["checks"]
    lines = [
        f"Run: {run['date']}, `{run['command']}`, on {run['code']}  ",
        f"Scale: {r['members']:,} members, {r['purchases']:,} purchases over {YEARS} years "
        f"(CSV {h['bytes'] / 1e6:,.0f} MB, no line items; {h['one_off_members']:,} members "
        f"bought once, the top 1% of members made {h['top_1pct_share']:.0%} of the purchases, "
        f"the heaviest buyer {h['max_orders']:,}); run took {run['elapsed_seconds'] / 60:.1f} "
        "min in all  ",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in run["machine"].items()),
        "",
        "| measure | result | target | |",
        "| --- | ---: | --- | --- |",
        f"| import (`loyalty-engine import`, batch {IMPORT_BATCH:,}) | "
        f"{full['rows_per_second']:,.0f} purchases/s ({full['wall_seconds']:.0f} s) | "
        f"{TARGETS['import']} | {verdict('import')} |",
        f"| RefreshSegments, whole program (best of {len(r['refresh'])}) | {refresh_s:.1f} s "
        f"({refresh_all}) | {TARGETS['refresh']} | "
        f"{verdict('refresh')} |",
        *(
            f"| ListTopCustomers top 100, {x['title'].split(' by ')[1]} ({x['calls']} calls) | "
            f"p50 {x['p50_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms | {TARGETS['top']} | "
            + ("met" if x["p99_ms"] < 10 else "**not met**")
            + " |"
            for x in tops
        ),
        f"| ListSegmentMembers, largest segment ({exp['segment']}, {exp['members']:,} "
        f"members, page_size {EXPORT_PAGE:,}) | {exp['members_per_second']:,.0f} members/s "
        f"({exp['seconds']:.1f} s) | {TARGETS['export']} | {verdict('export')} |",
        "",
        f"- Import CPU: the import process {full['import_cpu_seconds']:.0f} s, its PostgreSQL "
        f"backend {full['postgres_cpu_seconds']:.0f} s, over {full['wall_seconds']:.0f} s of "
        f"wall time (machine busy {full['machine_busy_cores']:.2f} of "
        f"{run['machine']['cores']} cores, other tenants included)."
        + (
            f" PostgreSQL alone, COPYing the same file into a bare table with a per-member key, "
            f"a unique order id and a per-member time index (no validation, members, "
            f"statistics or lines), took {baseline['seconds']:.0f} s: "
            f"{baseline['rows_per_second']:,.0f} rows/s, so the import runs at "
            f"{full['rows_per_second'] / baseline['rows_per_second']:.2f}x the bare COPY."
            if baseline
            else ""
        ),
        f"- Export CPU: server {exp['server_cpu_seconds']:.1f} s, client "
        f"{exp['client_cpu_seconds']:.1f} s for {exp['members']:,} members.",
        f"- Correctness: {c['stored']['purchases']:,} purchases stored for "
        f"{full['imported']:,} rows imported ({'equal' if c['purchases_ok'] else 'NOT EQUAL'}); "
        f"{c['stored']['members']:,} members enrolled for {h['members']:,} generated "
        f"({'equal' if c['members_ok'] else 'NOT EQUAL'}); re-importing "
        + (
            "the whole file"
            if c["reimport_rows"] == full["rows"]
            else f"its first {c['reimport_rows']:,} rows"
        )
        + f" reported {again['duplicates']:,} duplicates, {again['imported']} imported, "
        f"{again['errors']} errors in {again['wall_seconds']:.1f} s "
        f"({'all duplicates' if c['reimport_all_duplicates'] else 'NOT all duplicates'}); "
        f"{c['stored_after_reimport']:,} purchases stored afterwards.",
    ]
    if r["profile"]:
        p = r["profile"]
        lines.append(
            f"- Profiled import (cProfile, a further {p['rows']:,} rows of {p['members']:,} new "
            f"members): {p['rows_per_second']:,.0f} rows/s under the profiler; "
            f"summary in `{p['summary']}`."
        )
    if r["server_errors"]:
        lines.append(f"- The server logged errors: {r['server_errors'][:3]}")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, block: str) -> None:
    """Replace the marked block, or append a Segmentation section with it."""
    write_marked(path, BEGIN_MARK, END_MARK, block, "## Segmentation")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=30_000)
    parser.add_argument("--purchases", type=int, default=300_000)
    parser.add_argument("--calls", type=int, default=200, help="ListTopCustomers calls per metric")
    parser.add_argument(
        "--reimport-rows",
        type=int,
        default=20_000,
        help="re-import the first N rows of the file (0: the whole file)",
    )
    parser.add_argument(
        "--profile-import",
        type=int,
        default=0,
        metavar="ROWS",
        help="also import a further fresh file of ROWS rows under cProfile",
    )
    parser.add_argument("--ref", help="benchmark this git commit (exported clean)")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-output", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if not 1 <= args.members <= args.purchases:
        parser.error("need 1 <= --members <= --purchases")
    return args


def main(argv: list[str]) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args = parse_args(argv)
    pg_version = postgres_version()
    if pg_version is None:
        print("PostgreSQL is not reachable (LOYALTY_BENCH_DATABASE_URL)", file=sys.stderr)
        return 2
    results_dir = REPO / "bench" / "results"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = results_dir / f"{stamp}-segments"
    log_dir.mkdir(parents=True, exist_ok=True)
    run: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "bench/segments.py", *argv]),
        "machine": machine_facts(pg_version),
    }
    started = time.monotonic()
    with code_under_test(args.ref) as (source, described):
        run["code"] = described
        step(f"benchmarking {described}")
        with fresh_database("postgres") as db:
            step(f"database {db.name}")
            report = bench(db, args, source, log_dir)
    run["report"] = asdict(report)
    run["elapsed_seconds"] = time.monotonic() - started
    (results_dir / f"{stamp}-segments.json").write_text(json.dumps(run, indent=2, default=str))
    block = render(run)
    print("\n" + block)
    print(f"raw results in bench/results/{stamp}-segments.json and {log_dir.name}/")
    if not args.no_output:
        write_markdown(args.output, block)
        print(f"updated {args.output}")
    c = report.checks
    ok = c["purchases_ok"] and c["members_ok"] and c["reimport_all_duplicates"]
    ok = ok and report.export["members"] == report.export["expected"]
    if not ok:
        print("FAILED: a correctness check did not hold", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
