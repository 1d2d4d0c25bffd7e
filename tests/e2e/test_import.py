"""Bulk import of historical purchases: the streaming RPC and the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

from google.protobuf import timestamp_pb2

from loyalty_engine.gen.loyalty.v1 import common_pb2, segment_service_pb2_grpc
from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as mp
from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2 as sp


def _row(
    program: str,
    external_id: str,
    order_id: str,
    when,
    total: int,
    currency: str = "EUR",
    award: bool = False,
) -> ps.ImportPurchasesRequest:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.replace(tzinfo=None))
    return ps.ImportPurchasesRequest(
        program=f"programs/{program}",
        member_external_id=external_id,
        award_points=award,
        purchase=ps.Purchase(
            order_id=order_id,
            purchase_time=ts,
            total=common_pb2.Money(amount_minor=total, currency_code=currency),
        ),
    )


async def test_import_stream_is_idempotent_reports_bad_rows_and_builds_statistics(
    scenario, clock
) -> None:
    program = await scenario.program(
        expiryPolicy={"mode": "EXPIRY_MODE_AFTER_EARNING", "months": 24}
    )
    long_ago = clock.now - timedelta(days=3 * 365)
    recent = clock.now - timedelta(days=30)
    rows = [
        _row(program, "C-1", "h-1", long_ago, 10_000, award=True),  # points expired by now
        _row(program, "C-1", "h-2", recent, 5_000, award=True),
        _row(program, "C-2", "h-3", recent, 2_000),
        _row(program, "C-2", "h-4", recent, 2_000, currency="USD"),  # wrong currency
        _row(program, "", "h-5", recent, 2_000),  # no member
        _row(program, "C-2", "h-3", recent, 2_000),  # same order twice
    ]

    first = await scenario.client.points.ImportPurchases(iter(rows))
    again = await scenario.client.points.ImportPurchases(iter(rows[:3]))

    assert (first.imported, first.duplicates) == (3, 1)
    assert sorted((e.row, e.reason) for e in first.errors) == [
        (4, "CURRENCY_MISMATCH"),
        (5, "INVALID_FIELD"),
    ]
    assert (again.imported, again.duplicates, list(again.errors)) == (0, 3, [])
    member = (
        await scenario.client.members.LookupMember(
            mp.LookupMemberRequest(parent=f"programs/{program}", external_id="C-1")
        )
    ).member.name
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.expired_points, balance.lifetime_earned_points) == (
        50,
        100,
        150,
    )
    insights = await segment_service_pb2_grpc.SegmentServiceStub(
        scenario.client.channel
    ).GetMemberInsights(sp.GetMemberInsightsRequest(member=member))
    assert insights.statistics.order_count == 2
    assert insights.statistics.total_spend.amount_minor == 15_000


async def test_cli_import_of_a_csv_file_with_bad_rows(tmp_path: Path, sqlite_url: str) -> None:
    env = {**os.environ, "LOYALTY_DATABASE_URL": sqlite_url}

    async def run(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loyalty_engine",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        return process.returncode or 0, out.decode(), err.decode()

    assert (await run("demo"))[0] == 0
    data = tmp_path / "history.csv"
    data.write_text(
        "member_external_id,order_id,purchase_time,total_minor,currency_code,lines\n"
        'C-1001,old-1,2024-01-05T10:00:00Z,1200,EUR,"[{""sku"": ""A"", ""category"": ""coffee"", '
        '""quantity"": 2, ""unit_price_minor"": 600}]"\n'
        "C-9999,old-2,2024-02-05T10:00:00Z,800,EUR,\n"
        "C-1001,old-3,not-a-time,800,EUR,\n"
        "C-1001,old-4,2024-03-05T10:00:00Z,700,JPY,\n",
        encoding="utf-8",
    )
    code, _, err = await run("import", str(data), "--program", "demo")
    assert code == 0, err
    assert "2 imported" in err and "2 errors" in err
    assert "line 4: INVALID_ROW" in err and "line 5: CURRENCY_MISMATCH" in err
    code, _, err = await run("import", str(data), "--program", "demo")
    assert "0 imported" in err and "2 duplicates" in err

    assert (await run("segments", "refresh", "--program", "demo"))[0] == 0
    code, out, err = await run("segments", "export", "--program", "demo", "--segment", "lost")
    assert code == 0, err
    assert out.splitlines()[0] == "member,external_id,recency,frequency,monetary,segment"
