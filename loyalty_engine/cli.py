"""The `loyalty-engine` command: serve, migrate, demo, expire, health."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from loyalty_engine.bootstrap import App, build_app
from loyalty_engine.config import ConfigError, Settings, load_settings

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

    health = sub.add_parser("health", help="check a running server's health (exit 0 when SERVING)")
    health.add_argument("--address", default="127.0.0.1:50051")
    health.add_argument("--timeout", type=float, default=3.0)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    keys = ("database_url", "log_level", "listen_address", "grace_period_seconds")
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

    interval = app.settings.maintenance_interval_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            async with app.db.unit_of_work() as uow:
                program_ids = [p.program_id for p in await uow.programs.list_after("", 10_000)]
            for program_id in program_ids:
                report = await run_maintenance(app.db.unit_of_work, program_id, app.clock())
                if report.members_changed:
                    log.info("maintenance %s: %s", program_id, report)
        except Exception:
            log.exception("maintenance pass failed; it runs again in %.0fs", interval)


async def _serve(args: argparse.Namespace, settings: Settings) -> None:
    from loyalty_engine.api.server import serve_until_signalled, start_server
    from loyalty_engine.demo import how_to_call, seed_demo

    app = build_app(settings)
    try:
        await _ensure_schema(app, args.migrate)
        if args.seed_demo and await seed_demo(app):
            log.info("created the demo program")
        running = await start_server(app)
        host = settings.listen_address.rsplit(":", 1)[0]
        print(how_to_call(f"{host}:{running.port}"), flush=True)
        background = []
        if settings.maintenance_interval_seconds > 0:
            background.append(asyncio.create_task(_maintenance_loop(app)))
        await serve_until_signalled(app, running, background)
    finally:
        await app.close()


async def _migrate(settings: Settings) -> None:
    app = build_app(settings)
    try:
        await _ensure_schema(app, migrate=True)
        print(f"database at {app.db.url.render_as_string(hide_password=True)} is up to date")
    finally:
        await app.close()


async def _demo(settings: Settings) -> None:
    from loyalty_engine.demo import how_to_call, seed_demo

    app = build_app(settings)
    try:
        await _ensure_schema(app, migrate=True)
        created = await seed_demo(app)
        print("created the demo program" if created else "the demo program exists already")
        print(how_to_call(settings.listen_address))
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
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic narrates every plugin it loads at INFO; only its warnings matter to an operator.
    logging.getLogger("alembic").setLevel(
        max(logging.WARNING, logging.getLevelName(settings.log_level))
    )
    try:
        if args.command == "serve":
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_serve(args, settings))
        elif args.command == "migrate":
            asyncio.run(_migrate(settings))
        elif args.command == "demo":
            asyncio.run(_demo(settings))
        elif args.command == "expire":
            asyncio.run(_expire(settings, args.program))
    except ConfigError as exc:
        print(f"loyalty-engine: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"loyalty-engine: {exc}", file=sys.stderr)
        return 1
    return 0
