"""The plans the segment path takes at scale, on PostgreSQL, from index-only scans.

After RefreshSegments an export page is read from the segment index alone: the refresh
rewrites score rows and the servicer then vacuums them, so that the index-only scan of an
export page reads no rows from the table, also where autovacuum is off (as on this
project's own PostgreSQL). Likewise the refresh itself sums purchases from their index.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from loyalty_engine.api.servicers.segments import SegmentServicer
from loyalty_engine.bootstrap import App
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2 as sp
from loyalty_engine.services.imports import ImportRow, import_batch
from loyalty_engine.services.programs import load_program
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.segments import _REFRESH_MERGE, _TIMES, REFRESH_SETTINGS, _compiled_for
from tests.conftest import FakeClock, uid
from tests.integration.buyers import call, program_with_buyers

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


async def test_an_export_page_after_a_refresh_reads_no_table_rows(
    app: App, clock: FakeClock
) -> None:
    program_id, _ = await program_with_buyers(
        app,
        [(clock.now - timedelta(days=i), 1 + i % 7, 1_000 * (1 + i % 5)) for i in range(40)],
    )
    servicer = SegmentServicer(app)
    for _ in range(2):  # the first refresh inserts the scores, the second rewrites some
        await call(
            SegmentServicer.RefreshSegments,
            servicer,
            sp.RefreshSegmentsRequest(request_id=uid("r"), program=f"programs/{program_id}"),
        )
        clock.now += timedelta(days=30)

    async with app.db.engine.connect() as conn:
        segment = (
            await conn.execute(
                sa.select(t.member_scores.c.segment_id)
                .where(t.member_scores.c.program_id == program_id)
                .limit(1)
            )
        ).scalar_one()
        sql, names = _compiled_for(conn.dialect)
        params = {"program_id": program_id, "segment_id": segment, "after": "", "limit": 2000}
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        # Small tables: make the planner show the plan it takes at scale.
        await driver.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        plan = "\n".join(
            r[0]
            for r in await driver.fetch(
                "EXPLAIN (ANALYZE, COSTS OFF) " + sql, *(params[n] for n in names)
            )
        )
        await driver.execute("RESET enable_seqscan; RESET enable_bitmapscan")
    assert "Index Only Scan using ix_member_scores_segment" in plan, plan
    assert "Heap Fetches: 0" in plan, plan


async def test_a_refresh_sums_purchases_from_the_member_index_alone(
    app: App, clock: FakeClock
) -> None:
    """The 12-month sums come from an index-only scan in member order, grouped as they come.

    At scale this is what keeps a refresh of 1M members under 10 s (BENCHMARKS.md): the
    purchases-by-member index carries the amounts, the refresh's settings rule out a hash
    table, and the refresh vacuums the purchases first so that the scan reads no table rows.
    """
    program_id, _ = await program_with_buyers(app, [])
    rows = [
        ImportRow(i, f"m{i % 20}", uid("o"), clock.now - timedelta(days=7 * i), 900, "EUR")
        for i in range(1, 80)
    ]
    async with app.db.unit_of_work() as uow:
        program = await load_program(uow, program_id)
        report = await import_batch(uow, program, rows, clock.now)
        await uow.commit()
    assert report.imported == len(rows), report
    await call(
        SegmentServicer.RefreshSegments,
        SegmentServicer(app),
        sp.RefreshSegmentsRequest(request_id=uid("r"), program=f"programs/{program_id}"),
    )
    now = clock.now
    params = {"program_id": program_id, "now": now, "t90": now - timedelta(days=90)}
    params["t12m"] = now - timedelta(days=365)
    async with app.db.engine.connect() as conn:
        for setting in REFRESH_SETTINGS:
            await conn.execute(sa.text(setting))
        # Small tables: make the planner show the plan it takes at scale.
        await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        await conn.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
        statement = sa.text("EXPLAIN (ANALYZE, COSTS OFF) " + _REFRESH_MERGE)
        explained = await conn.execute(statement.bindparams(*_TIMES), params)
        plan = "\n".join(r[0] for r in explained)
        await conn.rollback()
    assert "Index Only Scan using ix_purchases_member_time on purchases" in plan, plan
    assert "Heap Fetches: 0" in plan, plan
    assert "GroupAggregate" in plan, plan
    assert "HashAggregate" not in plan, plan
    assert "Sort" not in plan.split("GroupAggregate", 1)[1].split("Scan", 1)[0], plan
