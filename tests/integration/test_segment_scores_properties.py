"""Property: a refresh scores every member by the quintile formula, on either database.

SQLite ranks with RANK(); PostgreSQL gets the same scores from four cuts per measure
(`storage/segments.py` says why). Whatever the statistics, ties included, both must give
each member with purchases `quintile(1 + members with a lower value, members)` for recency
(last purchase time), frequency (orders) and monetary value (net spend), and the segment
the one map in `domain.segments` gives; members without purchases get no scores.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loyalty_engine.bootstrap import build_app
from loyalty_engine.config import load_settings
from loyalty_engine.domain.segments import quintile, segment_for
from loyalty_engine.services.segments import refresh_segments
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.migrate import upgrade
from tests.conftest import FakeClock
from tests.integration.buyers import program_with_buyers

_migrated: set[str] = set()

# Small ranges, so that ties are common; None is a member who never bought.
stats = st.lists(
    st.one_of(
        st.none(),
        st.tuples(st.integers(0, 6), st.integers(1, 4), st.integers(0, 5).map(lambda v: v * 500)),
    ),
    min_size=1,
    max_size=17,
)


def lower(values: list[Any], value: Any) -> int:
    return sum(1 for v in values if v < value)


async def _run(url: str, rows: list[tuple[int, int, int] | None]) -> None:
    clock = FakeClock()
    app = build_app(load_settings(database_url=url, plaintext=True), clock=clock)
    try:
        if url not in _migrated:
            await upgrade(app.db)
            _migrated.add(url)
        program_id, members = await program_with_buyers(
            app,
            [
                None if row is None else (clock.now - timedelta(days=row[0]), row[1], row[2])
                for row in rows
            ],
        )
        async with app.db.unit_of_work() as uow:
            scored = await refresh_segments(uow, program_id, clock.now)
            await uow.commit()

        buyers = [(m, r) for m, r in zip(members, rows, strict=True) if r is not None]
        assert scored == len(buyers)
        recency = [-r[0] for _, r in buyers]  # later is better: fewer days ago
        frequency = [r[1] for _, r in buyers]
        monetary = [r[2] for _, r in buyers]
        expected = {}
        for i, (member_id, _) in enumerate(buyers):
            r = quintile(1 + lower(recency, recency[i]), len(buyers))
            f = quintile(1 + lower(frequency, frequency[i]), len(buyers))
            m = quintile(1 + lower(monetary, monetary[i]), len(buyers))
            expected[member_id] = (r, f, m, segment_for(r, f).segment_id)
        s = t.member_scores
        async with app.db.unit_of_work(read_only=True) as uow:
            stored = {
                row.member_id: (row.recency, row.frequency, row.monetary, row.segment_id)
                for row in await uow.connection.execute(
                    sa.select(
                        s.c.member_id, s.c.recency, s.c.frequency, s.c.monetary, s.c.segment_id
                    ).where(s.c.program_id == program_id)
                )
            }
        assert stored == expected
    finally:
        await app.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=stats)
def test_every_member_is_scored_by_the_quintile_formula(database_url: str, rows: Any) -> None:
    asyncio.run(_run(database_url, rows))
