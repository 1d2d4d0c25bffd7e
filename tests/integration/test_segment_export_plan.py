"""After RefreshSegments, an export page is read from the segment index alone (PostgreSQL).

The refresh rewrites score rows; the servicer then vacuums them, so that the index-only
scan of an export page reads no rows from the table, also where autovacuum is off (as on
this project's own PostgreSQL).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from loyalty_engine.api.servicers.members import MemberServicer
from loyalty_engine.api.servicers.programs import ProgramServicer
from loyalty_engine.api.servicers.segments import SegmentServicer
from loyalty_engine.bootstrap import build_app
from loyalty_engine.config import load_settings
from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as mp
from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2 as sp
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.migrate import upgrade
from loyalty_engine.storage.segments import _compiled_for
from tests.conftest import FakeClock, uid


def call(method: Any, servicer: Any, request: Any) -> Any:
    """A servicer method below the transport (no context, no auth)."""
    return method.__wrapped__(servicer, request, None)


async def test_an_export_page_after_a_refresh_reads_no_table_rows(postgres_url: str) -> None:
    clock = FakeClock()
    app = build_app(load_settings(database_url=postgres_url, plaintext=True), clock=clock)
    try:
        await upgrade(app.db)
        program_id = uid("p")
        await call(
            ProgramServicer.CreateProgram,
            ProgramServicer(app),
            pp.CreateProgramRequest(
                request_id=uid("r"),
                program_id=program_id,
                program=pp.Program(display_name="Export", currency_code="EUR"),
            ),
        )
        a = t.member_accounts
        for i in range(40):
            reply = await call(
                MemberServicer.EnrollMember,
                MemberServicer(app),
                mp.EnrollMemberRequest(
                    request_id=uid("r"),
                    parent=f"programs/{program_id}",
                    member=mp.Member(external_id=uid("ext")),
                ),
            )
            member_id = reply.member.name.rsplit("/", 1)[1]
            async with app.db.unit_of_work() as uow:
                await uow.connection.execute(
                    a.update()
                    .where(a.c.program_id == program_id, a.c.member_id == member_id)
                    .values(
                        last_purchase_time=clock.now - timedelta(days=i),
                        order_count=1 + i % 7,
                        total_spend_minor=1_000 * (1 + i % 5),
                    )
                )
                await uow.commit()
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
    finally:
        await app.close()
