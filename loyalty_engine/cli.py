"""The `loyalty-engine` command: serve, migrate, demo, expire, health."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from loyalty_engine.api.telemetry import configure_logging
from loyalty_engine.bootstrap import App, build_app
from loyalty_engine.config import ConfigError, Settings, check_transport, load_settings
from loyalty_engine.domain.errors import DomainError

log = logging.getLogger("loyalty_engine")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (env LOYALTY_DATABASE_URL)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (env LOYALTY_LOG_LEVEL)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loyalty-engine", description="A loyalty-program engine served over gRPC."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC service")
    _common(serve)
    serve.add_argument("--listen-address", help="host:port (env LOYALTY_LISTEN_ADDRESS)")
    serve.add_argument(
        "--grace-period",
        type=float,
        dest="grace_period_seconds",
        help="seconds in-flight calls get at shutdown (env LOYALTY_GRACE_PERIOD_SECONDS)",
    )
    serve.add_argument("--migrate", action="store_true", help="apply pending migrations first")
    serve.add_argument(
        "--seed-demo", action="store_true", help="create the demo program if it is missing"
    )
    serve.add_argument(
        "--plaintext",
        action="store_true",
        default=None,
        help="serve without TLS (env LOYALTY_PLAINTEXT); otherwise TLS files are required",
    )
    serve.add_argument(
        "--metrics-address", help="host:port for Prometheus /metrics (env LOYALTY_METRICS_ADDRESS)"
    )
    serve.add_argument(
        "--workers", type=int, help="processes sharing the port (env LOYALTY_WORKERS)"
    )

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key and print it (shown only once)")
    _common(create)
    owner = create.add_mutually_exclusive_group(required=True)
    owner.add_argument("--program", help="the program the key belongs to")
    owner.add_argument("--operator", action="store_true", help="a platform key (creates programs)")
    create.add_argument(
        "--scope",
        action="append",
        choices=["pos", "shop", "marketing", "admin"],
        default=[],
        help="repeatable; required with --program",
    )
    create.add_argument("--label", default="created by the CLI")

    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    _common(migrate)

    demo = sub.add_parser(
        "demo", help="create the demo program (migrating first) and print how to call it"
    )
    _common(demo)

    expire = sub.add_parser(
        "expire", help="release pending points, expire points and review tiers now"
    )
    _common(expire)
    expire.add_argument("--program", required=True, help="program id")

    imports = sub.add_parser("import", help="load historical purchases from a CSV file")
    _common(imports)
    imports.add_argument("file", help="CSV file (see loyalty_engine/csv_io.py for the columns)")
    imports.add_argument("--program", required=True, help="program id")
    imports.add_argument("--award-points", action="store_true", help="award points retroactively")
    imports.add_argument("--batch", type=int, default=20000, help="rows per transaction")

    segments = sub.add_parser("segments", help="RFM segments")
    segments_sub = segments.add_subparsers(dest="segments_command", required=True)
    refresh = segments_sub.add_parser("refresh", help="recompute a program's RFM scores now")
    _common(refresh)
    refresh.add_argument("--program", required=True)
    export = segments_sub.add_parser("export", help="write a segment's members as CSV")
    _common(export)
    export.add_argument("--program", required=True)
    export.add_argument("--segment", required=True, help="segment id, such as champions or at-risk")
    export.add_argument("--output", default="-", help="file to write (default: standard output)")

    rules = sub.add_parser("rules", help="the rule module")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    run = rules_sub.add_parser("run", help="run the rules for a program (or one member) now")
    _common(run)
    run.add_argument("--program", required=True)
    run.add_argument("--member", help="only this member id")
    run.add_argument(
        "--dry-run", action="store_true", help="report who would get what, change nothing"
    )

    health = sub.add_parser("health", help="check a running server's health (exit 0 when SERVING)")
    health.add_argument("--address", default="127.0.0.1:50051")
    health.add_argument("--timeout", type=float, default=3.0)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    keys = (
        "database_url",
        "log_level",
        "listen_address",
        "grace_period_seconds",
        "plaintext",
        "metrics_address",
        "workers",
    )
    return load_settings(**{k: getattr(args, k, None) for k in keys})


async def _ensure_schema(app: App, migrate: bool) -> None:
    from loyalty_engine.storage.migrate import pending_revisions, upgrade

    if migrate:
        await upgrade(app.db)
        return
    pending = await pending_revisions(app.db)
    if pending:
        raise ConfigError(
            f"the database schema is {len(pending)} migration(s) behind: "
            "run `loyalty-engine migrate` or start with --migrate"
        )


async def _maintenance_loop(app: App) -> None:
    """Periodically release pending points, expire points and review tiers for every program."""
    from loyalty_engine.services.maintenance import run_maintenance
    from loyalty_engine.services.segments import refresh_segments
    from loyalty_engine.storage.segments import vacuumed_around

    interval = app.settings.maintenance_interval_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            async with app.db.unit_of_work() as uow:
                program_ids = [p.program_id for p in await uow.programs.list_after("", 10_000)]
            for program_id in program_ids:
                report = await run_maintenance(app.db.unit_of_work, program_id, app.clock())
                app.telemetry.points_expired.inc(report.points_expired)
                async with vacuumed_around(app.db), app.db.unit_of_work() as uow:
                    await refresh_segments(uow, program_id, app.clock())
                    await uow.commit()
                await _daily_rules(app, program_id)
                if report.members_changed:
                    log.info("maintenance %s: %s", program_id, report)
        except Exception:
            log.exception("maintenance pass failed; it runs again in %.0fs", interval)


async def _daily_rules(app: App, program_id: str) -> None:
    """The daily rule pass (birthdays, time-based conditions), after scores are refreshed."""
    from loyalty_engine.domain.rules import Trigger
    from loyalty_engine.services.offers import run_rules

    if not app.rules.rules:
        return
    report = await run_rules(
        app.db.unit_of_work, app.rules.rules, program_id, app.clock(), trigger=Trigger.DAILY
    )
    app.telemetry.offers_issued.inc(report.offers_issued)
    log.info(
        "rules %s: %d members, %d actions (%s)",
        program_id,
        report.members_evaluated,
        report.actions,
        ", ".join(f"{label}: {n}" for label, n in sorted(report.action_counts.items())),
    )


def _reload_rules(app: App) -> None:
    """SIGHUP: reload the rule files; a bad set is logged and the rules in force stay."""
    try:
        app.rules.reload()
    except DomainError as exc:
        log.error("%s; the rules in force stay", exc.message)


async def _prepare(args: argparse.Namespace, settings: Settings) -> str | None:
    """Migrate and seed once, before any worker starts; returns a demo admin key if seeded."""
    from loyalty_engine.demo import DEMO_PROGRAM, seed_demo
    from loyalty_engine.domain.keys import Scope
    from loyalty_engine.services.keys import create_key

    app = build_app(settings)
    try:
        await _ensure_schema(app, args.migrate)
        if not args.seed_demo:
            return None
        if await seed_demo(app):
            log.info("created the demo program")
        async with app.db.unit_of_work() as uow:
            created = await create_key(
                uow,
                DEMO_PROGRAM,
                "demo admin key (serve --seed-demo)",
                frozenset({Scope.ADMIN}),
                app.clock(),
            )
            await uow.commit()
        return created.token
    finally:
        await app.close()


async def _serve_worker(settings: Settings, reuse_port: bool, banner: str | None) -> None:
    from loyalty_engine.api.server import serve_until_signalled, start_server

    app = build_app(settings)
    metrics = None
    try:
        running = await start_server(app, reuse_port=reuse_port)
        if settings.metrics_address and not reuse_port:
            metrics = app.telemetry.serve(settings.metrics_address)
        import signal

        # Before the banner: whoever reads "is serving" may send SIGHUP at once, and
        # SIGHUP's default action ends the process.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload_rules, app)
        if banner is not None:
            print(banner.replace("{port}", str(running.port)), flush=True)
        background = []
        if settings.maintenance_interval_seconds > 0:
            background.append(asyncio.create_task(_maintenance_loop(app)))
        await serve_until_signalled(app, running, background)
    finally:
        if metrics is not None:
            metrics.shutdown()
        await app.close()


def _worker_main(settings_json: str) -> None:
    """Entry of a worker process (multiprocessing spawn): serve on the shared port."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level, settings.log_format == "json")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_worker(settings, True, None))


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    from loyalty_engine.demo import how_to_call

    check_transport(settings)
    demo_key = asyncio.run(_prepare(args, settings))
    host = settings.listen_address.rsplit(":", 1)[0]
    banner = how_to_call(f"{host}:{{port}}", demo_key, tls=not settings.plaintext)
    if settings.workers == 1:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_worker(settings, False, banner))
        return
    _serve_workers(settings, banner)


def _serve_workers(settings: Settings, banner: str) -> None:
    """N processes bound to one port with SO_REUSEPORT; the kernel spreads connections."""
    import multiprocessing
    import signal

    if settings.listen_address.endswith(":0"):
        raise ConfigError("invalid setting LOYALTY_WORKERS: workers need a fixed port, not :0")
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker_main, args=(settings.model_dump_json(),), name=f"worker-{i}")
        for i in range(settings.workers)
    ]
    for worker in workers:
        worker.start()
    print(banner.replace("{port}", settings.listen_address.rsplit(":", 1)[1]), flush=True)
    log.info("serving with %d worker processes", len(workers))

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its own rules
    if settings.metrics_address:
        log.warning("metrics are per process; with --workers the /metrics port is not served")
    for worker in workers:
        worker.join()


async def _migrate(settings: Settings) -> None:
    app = build_app(settings)
    try:
        await _ensure_schema(app, migrate=True)
        print(f"database at {app.db.url.render_as_string(hide_password=True)} is up to date")
    finally:
        await app.close()


async def _demo(settings: Settings) -> None:
    from loyalty_engine.demo import DEMO_PROGRAM, how_to_call, seed_demo
    from loyalty_engine.domain.keys import Scope
    from loyalty_engine.services.keys import create_key

    app = build_app(settings)
    try:
        await _ensure_schema(app, migrate=True)
        created = await seed_demo(app)
        print("created the demo program" if created else "the demo program exists already")
        async with app.db.unit_of_work() as uow:
            key = await create_key(
                uow, DEMO_PROGRAM, "demo admin key", frozenset({Scope.ADMIN}), app.clock()
            )
            await uow.commit()
        print(how_to_call(settings.listen_address, key.token, tls=not settings.plaintext))
    finally:
        await app.close()


async def _keys_create(settings: Settings, args: argparse.Namespace) -> None:
    from loyalty_engine.domain.keys import OPERATOR_PROGRAM, Scope
    from loyalty_engine.services.keys import create_key

    if args.operator:
        program_id, scopes = OPERATOR_PROGRAM, frozenset({Scope.OPERATOR})
    else:
        if not args.scope:
            raise ConfigError("keys create --program needs at least one --scope")
        program_id, scopes = args.program, frozenset(Scope(s) for s in args.scope)
    app = build_app(settings)
    try:
        await _ensure_schema(app, migrate=False)
        async with app.db.unit_of_work() as uow:
            created = await create_key(uow, program_id, args.label, scopes, app.clock())
            await uow.commit()
        print(created.token)
        print(
            f"key id {created.key.key_id}; this is the only time the key is shown", file=sys.stderr
        )
    finally:
        await app.close()


async def _expire(settings: Settings, program_id: str) -> None:
    from loyalty_engine.services.maintenance import run_maintenance

    app = build_app(settings)
    try:
        await _ensure_schema(app, migrate=False)
        report = await run_maintenance(app.db.unit_of_work, program_id, app.clock())
        print(
            f"members changed: {report.members_changed}, points expired: {report.points_expired}, "
            f"points released: {report.points_released}, tier changes: {report.tier_changes}"
        )
    finally:
        await app.close()


async def _import(settings: Settings, args: argparse.Namespace, handle: TextIO) -> None:
    import time

    from loyalty_engine.csv_io import read_purchases
    from loyalty_engine.services.imports import ImportReport, ImportRow, import_batch
    from loyalty_engine.services.programs import load_program

    app = build_app(settings)
    report = ImportReport()
    started = time.monotonic()
    rows = 0

    def progress(final: bool = False) -> None:
        rate = rows / max(time.monotonic() - started, 1e-9)
        end = "\n" if final else ""
        print(
            f"\r{rows:,} rows  {report.imported:,} imported  {report.duplicates:,} duplicates  "
            f"{report.error_count:,} errors  {rate:,.0f} rows/s",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    batches = 0

    async def flush(batch: list[ImportRow]) -> None:
        nonlocal batches
        batches += 1
        async with app.db.unit_of_work() as uow:
            program = await load_program(uow, args.program)
            report.merge(await import_batch(uow, program, batch, app.clock(), batch_number=batches))
            await uow.commit()

    items = read_purchases(handle, args.award_points)
    size = max(1, args.batch)

    def next_batch() -> tuple[list[ImportRow], list[tuple[int, str, str]]]:
        """Up to `size` good rows, and the bad rows read on the way."""
        nonlocal rows
        batch: list[ImportRow] = []
        bad: list[tuple[int, str, str]] = []
        for item in items:
            rows += 1
            if not isinstance(item, ImportRow):  # (line, reason, message)
                bad.append(item)
                continue
            batch.append(item)
            if len(batch) >= size:
                break
        return batch, bad

    try:
        await _ensure_schema(app, migrate=False)
        # The file is read in a thread while the database stores the batch before: the
        # reading is Python's work, the storing mostly the database's.
        loop = asyncio.get_running_loop()
        batch, bad = await loop.run_in_executor(None, next_batch)
        while batch or bad:
            for error in bad:
                report.add_error(*error)
            reading = loop.run_in_executor(None, next_batch)
            try:
                await flush(batch)
            finally:
                batch, bad = await reading
            progress()
        progress(final=True)
        for row, reason, message in report.errors:
            print(f"line {row}: {reason}: {message}", file=sys.stderr)
    finally:
        await app.close()


async def _segments(settings: Settings, args: argparse.Namespace, out: TextIO) -> None:
    import csv

    from loyalty_engine.services.segments import refresh_segments, segment_members
    from loyalty_engine.storage.segments import vacuumed_around

    app = build_app(settings)
    try:
        await _ensure_schema(app, migrate=False)
        if args.segments_command == "refresh":
            async with vacuumed_around(app.db), app.db.unit_of_work() as uow:
                count = await refresh_segments(uow, args.program, app.clock())
                await uow.commit()
            print(f"scored {count:,} members")
            return
        writer = csv.writer(out)
        writer.writerow(["member", "external_id", "recency", "frequency", "monetary", "segment"])
        after = ""
        while True:
            async with app.db.unit_of_work() as uow:
                page = await segment_members(uow, args.program, args.segment, after, 5000)
            batch = page.members
            for m in batch:
                writer.writerow([
                    f"programs/{args.program}/members/{m.member_id}", m.external_id,
                    m.recency, m.frequency, m.monetary, page.segment_id,
                ])  # fmt: skip
            if len(batch) < 5000:
                break
            after = batch[-1].member_id
    finally:
        await app.close()


async def _rules_run(settings: Settings, args: argparse.Namespace) -> None:
    from loyalty_engine.services.offers import run_rules, run_rules_for_member

    app = build_app(settings)
    try:
        await _ensure_schema(app, migrate=False)
        if args.member:
            async with app.db.unit_of_work() as uow:
                report = await run_rules_for_member(
                    uow,
                    app.rules.rules,
                    args.program,
                    args.member,
                    app.clock(),
                    dry_run=args.dry_run,
                )
                if not args.dry_run:
                    await uow.commit()
        else:
            report = await run_rules(
                app.db.unit_of_work,
                app.rules.rules,
                args.program,
                app.clock(),
                dry_run=args.dry_run,
            )
        for outcome in report.outcomes:
            print(f"{outcome.member_id}\t{outcome.rule_id}\t{outcome.label}\t{outcome.offer_id}")
        verb = "would take" if args.dry_run else "took"
        print(
            f"evaluated {report.members_evaluated:,} members; {verb} {report.actions:,} actions",
            file=sys.stderr,
        )
        for label, n in sorted(report.action_counts.items()):
            print(f"  {label}: {n:,}", file=sys.stderr)
        if report.sampled:
            print(f"(listed the first {len(report.outcomes):,} actions)", file=sys.stderr)
    finally:
        await app.close()


async def _health(address: str, deadline_seconds: float) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=deadline_seconds
            )
        except grpc.aio.AioRpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    if args.command == "health":
        return asyncio.run(_health(args.address, args.timeout))
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"loyalty-engine: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format == "json")
    try:
        if args.command == "serve":
            _serve(args, settings)
        elif args.command == "keys":
            asyncio.run(_keys_create(settings, args))
        elif args.command == "import":
            with open(args.file, newline="", encoding="utf-8") as handle:
                asyncio.run(_import(settings, args, handle))
        elif args.command == "segments":
            if getattr(args, "output", "-") == "-":
                asyncio.run(_segments(settings, args, sys.stdout))
            else:
                with open(args.output, "w", newline="", encoding="utf-8") as out:
                    asyncio.run(_segments(settings, args, out))
        elif args.command == "rules":
            asyncio.run(_rules_run(settings, args))
        elif args.command == "migrate":
            asyncio.run(_migrate(settings))
        elif args.command == "demo":
            asyncio.run(_demo(settings))
        elif args.command == "expire":
            asyncio.run(_expire(settings, args.program))
    except ConfigError as exc:
        print(f"loyalty-engine: {exc}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"loyalty-engine: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"loyalty-engine: {exc}", file=sys.stderr)
        return 1
    return 0
