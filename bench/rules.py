"""Benchmark of the rule module: every default rule over N members, in members per second.

    .venv/bin/python -m bench.rules --members 2000 [--database-url URL]

Builds a program of N members (birthdays spread over the year, joined 0-6 years ago, one
to three purchases each) on a fresh SQLite file (or the given database), refreshes the
scores, then times a dry run and a real run of all rules in `rules/` over the program.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from loyalty_engine.bootstrap import build_app
from loyalty_engine.config import load_settings
from loyalty_engine.domain.rules import Trigger
from loyalty_engine.gen.loyalty.v1 import (
    common_pb2,
    member_service_pb2,
    member_service_pb2_grpc,
    points_service_pb2_grpc,
    program_service_pb2,
    program_service_pb2_grpc,
)
from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps
from loyalty_engine.services.offers import run_rules
from loyalty_engine.services.segments import refresh_segments
from loyalty_engine.storage.migrate import upgrade

NOW = datetime(2026, 6, 15, 12, tzinfo=UTC)


async def main(members: int, database_url: str) -> None:
    import grpc

    from loyalty_engine.api.server import start_server

    settings = load_settings(
        database_url=database_url, plaintext=True, auth_required=False, rules_dir="rules"
    )
    app = build_app(settings, clock=lambda: NOW)
    await upgrade(app.db)
    running = await start_server(app, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    program = f"bench-rules-{int(time.time())}"
    try:
        await program_service_pb2_grpc.ProgramServiceStub(channel).CreateProgram(
            program_service_pb2.CreateProgramRequest(
                request_id=f"{program}-p",
                program_id=program,
                program=program_service_pb2.Program(
                    display_name="Rules bench", currency_code="EUR", late_purchase_window_days=3650
                ),
            )
        )
        members_stub = member_service_pb2_grpc.MemberServiceStub(channel)
        points_stub = points_service_pb2_grpc.PointsServiceStub(channel)
        started = time.monotonic()

        async def enroll(i: int) -> None:
            born = date(1980, 1, 1) + timedelta(days=i * 37 % 365)
            joined = NOW - timedelta(days=(i * 101) % (6 * 365))
            m = member_service_pb2.Member(
                external_id=f"x{i}",
                given_name=f"M{i}",
                birth_date=common_pb2.Date(year=born.year, month=born.month, day=born.day),
            )
            m.join_time.FromDatetime(joined.replace(tzinfo=None))
            reply = await members_stub.EnrollMember(
                member_service_pb2.EnrollMemberRequest(
                    request_id=f"{program}-m{i}", parent=f"programs/{program}", member=m
                )
            )
            for k in range(1 + i % 3):
                when = NOW - timedelta(days=(i * 13 + k * 97) % 700)
                req = ps.RecordPurchaseRequest(
                    request_id=f"{program}-o{i}-{k}",
                    member=reply.member.name,
                    purchase=ps.Purchase(
                        order_id=f"o{i}-{k}",
                        total=common_pb2.Money(
                            amount_minor=1000 + (i * 7919) % 50_000, currency_code="EUR"
                        ),
                    ),
                )
                req.purchase.purchase_time.FromDatetime(when.replace(tzinfo=None))
                await points_stub.RecordPurchase(req)

        for batch in range(0, members, 50):
            await asyncio.gather(*(enroll(i) for i in range(batch, min(batch + 50, members))))
        print(f"set up {members:,} members in {time.monotonic() - started:.1f}s")
        async with app.db.unit_of_work() as uow:
            await refresh_segments(uow, program, NOW)
            await uow.commit()
        for dry_run in (True, False):
            started = time.monotonic()
            async with app.db.unit_of_work() as uow:
                report = await run_rules(
                    uow, app.rules.rules, program, NOW, dry_run=dry_run, trigger=Trigger.DAILY
                )
                if not dry_run:
                    await uow.commit()
            seconds = time.monotonic() - started
            print(
                f"{'dry run' if dry_run else 'real run'}: {report.members_evaluated:,} members, "
                f"{len(report.outcomes or []):,} actions in {seconds:.2f}s = "
                f"{report.members_evaluated / seconds:,.0f} members/s"
            )
    finally:
        await channel.close()
        await running.stop(0)
        await app.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    url = args.database_url or f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'rules.db'}"
    asyncio.run(main(args.members, url))
