"""Fresh databases, the service as a subprocess, pgbench, and CPU accounting from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import URL, make_url

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PGBENCH_CANDIDATES = ("/usr/lib/postgresql/15/bin/pgbench",)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- databases ------------------------------------------------------------------------------


def admin_url() -> URL:
    """The PostgreSQL admin URL (LOYALTY_BENCH_DATABASE_URL or the local default)."""
    url = make_url(os.environ.get("LOYALTY_BENCH_DATABASE_URL") or DEFAULT_ADMIN_URL)
    return url.set(drivername="postgresql")


def _dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(_dsn(admin_url()), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _server_version() -> str:
    conn = await asyncpg.connect(_dsn(admin_url()), timeout=5)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def postgres_version() -> str | None:
    """The server version, or None when PostgreSQL is unreachable."""
    try:
        return asyncio.run(_server_version())
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return None


@dataclass
class BenchDatabase:
    """A database made for one benchmark run."""

    backend: str
    url: str  # the SQLAlchemy URL the service uses
    name: str
    pg_url: URL | None = None  # libpq-style URL, PostgreSQL only


@contextlib.contextmanager
def fresh_database(backend: str) -> Iterator[BenchDatabase]:
    """A new, empty database of the backend, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="loyalty-bench-") as tmp:
            path = Path(tmp) / "loyalty.db"
            yield BenchDatabase("sqlite", f"sqlite+aiosqlite:///{path}", str(path))
        return
    name = f"loyalty_bench_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        pg_url = admin_url().set(database=name)
        yield BenchDatabase(
            "postgres",
            pg_url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False),
            name,
            pg_url,
        )
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- the code under test -------------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


@contextlib.contextmanager
def code_under_test(ref: str | None) -> Iterator[tuple[Path, str]]:
    """The directory to run the service from, and a description of that code.

    Without a ref, the working tree as it is; with one, a clean export of that commit, so
    a run measures exactly one revision even while the working tree is being edited.
    """
    if ref is None:
        try:
            head = _git("rev-parse", "--short", "HEAD")
            dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "."))
        except (OSError, subprocess.CalledProcessError):
            yield REPO, "the working tree (not a git checkout)"
            return
        yield REPO, f"the working tree at {head}" + (" with uncommitted changes" if dirty else "")
        return
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="loyalty-bench-src-") as tmp:
        archive = subprocess.run(
            ["git", "archive", sha], cwd=REPO, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp), f"commit {sha[:12]} ({ref}), exported clean"


# --- the service ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """`python -m loyalty_engine serve --migrate` on a free port, stopped with SIGTERM.

    `port` pins the port instead (a restarted service comes back where clients expect it).
    """

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        *,
        source: Path = REPO,
        profile: bool = False,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_dir / "server.log"
        env = dict(os.environ)
        env.update(
            LOYALTY_DATABASE_URL=database_url,
            LOYALTY_MAINTENANCE_INTERVAL_SECONDS="0",
            LOYALTY_LOG_LEVEL="INFO",
            # Plaintext on loopback, as the bench measures the service, not TLS (versions
            # without TLS settings ignore this).
            LOYALTY_PLAINTEXT="true",
            PYTHONUNBUFFERED="1",
        )
        # Production defaults otherwise: pool size 10, grace period 10 s.
        env.pop("LOYALTY_DB_POOL_SIZE", None)
        self.env = env
        self.source = source
        self._log = self.log_path.open("wb")
        self.profile_path = log_dir / "server.prof" if profile else None
        # cProfile writes its stats when serve returns after SIGTERM.
        wrapper = ["-m", "cProfile", "-o", str(self.profile_path)] if profile else []
        self.process = subprocess.Popen(
            [
                sys.executable,
                *wrapper,
                "-m",
                "loyalty_engine",
                "serve",
                "--migrate",
                "--listen-address",
                self.address,
            ],
            # `-m` puts the working directory first on sys.path, so `source` is what runs.
            cwd=source,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_serving(self, timeout: float = 60.0) -> None:
        async def check() -> bool:
            async with grpc.aio.insecure_channel(self.address) as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1
                    )
                except grpc.aio.AioRpcError:
                    return False
                return reply.status == health_pb2.HealthCheckResponse.SERVING

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited at start:\n{self.log_tail()}")
            if asyncio.run(check()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the service did not become SERVING in {timeout}s:\n{self.log_tail()}")

    def create_key(self, *owner: str) -> str | None:
        """`loyalty-engine keys create ...`; None when this version has no API keys."""
        done = subprocess.run(
            [sys.executable, "-m", "loyalty_engine", "keys", "create", *owner],
            cwd=self.source,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            if "invalid choice: 'keys'" in done.stderr:
                return None
            raise RuntimeError(f"keys create {' '.join(owner)} failed:\n{done.stderr}")
        return done.stdout.split()[0]

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def error_lines(self) -> list[str]:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in text if "ERROR" in line or "Traceback" in line]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


# --- CPU accounting -------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def _backend_pids(database: str) -> list[int]:
    conn = await asyncpg.connect(_dsn(admin_url()), timeout=5)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
        return [int(r["pid"]) for r in rows]
    finally:
        await conn.close()


def postgres_backend_cpu(database: str) -> dict[int, float]:
    """CPU seconds of each server backend connected to `database` (the service's pool).

    Only the bench database's backends count: other tenants share this server. Work done
    by backends that disconnect mid-scenario and by the WAL writer is not included.
    """
    pids = asyncio.run(_backend_pids(database))
    return {pid: process_cpu_seconds(pid) for pid in pids}


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores, all users)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


# --- pgbench --------------------------------------------------------------------------------


def find_pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    return next((p for p in PGBENCH_CANDIDATES if os.access(p, os.X_OK)), None)


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float
    clients: int
    command: str


def run_pgbench(pgbench: str, url: URL, clients: int, seconds: int) -> PgbenchResult:
    """`pgbench -i -s 1`, then the TPC-B-like run with `clients` connections."""
    conn_args = [
        "-h",
        url.host or "127.0.0.1",
        "-p",
        str(url.port or 5432),
        "-U",
        url.username or "postgres",
    ]
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    database = str(url.database)
    subprocess.run(
        [pgbench, *conn_args, "-i", "-s", "1", "-q", database],
        check=True,
        capture_output=True,
        env=env,
    )
    run_args = ["-c", str(clients), "-j", "2", "-T", str(seconds), "-M", "prepared"]
    done = subprocess.run(
        [pgbench, *conn_args, *run_args, database],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    if tps is None:
        raise RuntimeError(f"cannot read pgbench's output:\n{done.stdout}\n{done.stderr}")
    return PgbenchResult(
        tps=float(tps.group(1)),
        latency_ms=float(latency.group(1)) if latency else float("nan"),
        clients=clients,
        command=f"pgbench -i -s 1; pgbench {' '.join(run_args)}",
    )
