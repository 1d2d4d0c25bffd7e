"""What the service tells its operators: Prometheus metrics and one JSON log line per RPC.

Log lines carry the method, the status code, the duration, the request id and the
program; never request bodies, personal data (names, e-mails, phones, birth dates) or keys.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from loyalty_engine.storage.database import Database

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str, json_logs: bool = True) -> None:
    """Structured logs on stderr, for structlog and the standard library alike.

    JSON lines in production, readable text when asked; every record, ours or a library's,
    goes through the same renderer.
    """
    numeric = logging.getLevelName(level)
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    # Alembic narrates every plugin it loads at INFO; only its warnings matter to an operator.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, numeric))


def _stat(stats: object, name: str) -> float:
    return float(getattr(stats, name))


class Telemetry:
    """Prometheus metrics of one process, in a registry of its own."""

    def __init__(self, db: Database | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = Counter(
            "loyalty_rpcs", "RPCs by method and status code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "loyalty_rpc_duration_seconds",
            "RPC latency",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.points_awarded = Counter(
            "loyalty_points_awarded", "Points awarded for purchases", registry=r
        )
        self.points_redeemed = Counter("loyalty_points_redeemed", "Points redeemed", registry=r)
        self.points_expired = Counter("loyalty_points_expired", "Points expired", registry=r)
        self.redemptions = Counter(
            "loyalty_redemptions", "Redemptions by kind", ["kind"], registry=r
        )
        self.offers_issued = Counter("loyalty_offers_issued", "Offers issued", registry=r)
        self.offers_redeemed = Counter(
            "loyalty_offers_redeemed", "Offer codes redeemed", registry=r
        )
        if db is not None:
            pool: Any = db.engine.sync_engine.pool
            in_use = Gauge("loyalty_db_pool_in_use", "Database connections checked out", registry=r)
            in_use.set_function(lambda: float(getattr(pool, "checkedout", lambda: 0)()))
            size = Gauge("loyalty_db_pool_size", "Database connections in the pool", registry=r)
            size.set_function(lambda: float(getattr(pool, "size", lambda: 0)()))
            group = db.group_commit
            if group is not None:
                for name, doc in (
                    ("batches", "Group-commit batches committed or tried"),
                    ("writes", "Writes that joined a group-commit batch"),
                    ("run_alone", "Writes a batch handed back to run in their own transaction"),
                    ("skipped", "Queued writes skipped because their caller gave up"),
                    ("failed_batches", "Batches whose COMMIT or connection failed"),
                    ("largest_batch", "The largest group-commit batch"),
                ):
                    gauge = Gauge(f"loyalty_group_commit_{name}", doc, registry=r)
                    gauge.set_function(functools.partial(_stat, group.stats, name))
        self.log = structlog.get_logger("loyalty_engine.rpc")

    def observe(
        self,
        method: str,
        code: str,
        seconds: float,
        request_id: str,
        program: str,
        reason: str = "",
    ) -> None:
        """Count and log one finished RPC."""
        self.rpcs.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)
        fields: dict[str, Any] = {
            "method": method,
            "code": code,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": request_id,
            "program": program,
        }
        if reason:
            fields["reason"] = reason
        self.log.info("rpc", **fields)

    def serve(self, address: str) -> Any:
        """Expose /metrics on a separate HTTP port; returns the server (call .shutdown())."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(
            int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.registry
        )
        return server
