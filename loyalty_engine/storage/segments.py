"""Buying statistics, RFM scores, top customers and program metrics, as set-based SQL."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

from loyalty_engine.domain.segments import SEGMENTS, segment_for
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.offers import span, spanning
from loyalty_engine.storage.repositories import _Repository
from loyalty_engine.storage.schema import RANKS, UtcDateTime

if TYPE_CHECKING:
    from loyalty_engine.storage.database import Database


_SCORES = range(1, 6)


def _segment_of(dialect: str) -> str:
    """The segment of scores `r` and `f`, generated from the one map in `domain.segments`.

    PostgreSQL looks it up in an array of the 25 cells: the refresh evaluates it for every
    member, once per use of the column, and at 1M members the lookup took 0.6 s off the
    refresh's 7.6 s with the CASE. SQLite has no arrays and gets the CASE.
    """
    if dialect == "postgresql":
        cells = ", ".join(f"'{segment_for(r, f).segment_id}'" for r in _SCORES for f in _SCORES)
        return f"(ARRAY[{cells}])[(r - 1) * 5 + f]"
    whens = " ".join(
        f"WHEN r IN ({','.join(map(str, sorted(s.recency)))}) "
        f"AND f IN ({','.join(map(str, sorted(s.frequency)))}) THEN '{s.segment_id}'"
        for s in SEGMENTS
    )
    return f"CASE {whens} END"


# What a refresh computes per member; a row whose values did not change is not rewritten.
_SCORED = (
    "recency", "frequency", "monetary", "segment_id",
    "spend_90d", "orders_90d", "points_90d", "spend_12m", "orders_12m", "points_12m",
    "spend_all", "orders_all", "points_all", "aov_90d", "aov_12m", "aov_all",
)  # fmt: skip

# One set-based pass. Recency, frequency, monetary value and the all-time sums come from
# the statistics every purchase and return keeps current on the member's account row (one
# row per member, not one per purchase); only the 90-day and 12-month sums read purchases.
# Then the quintiles (ties share a score), then the segment.
#
# On PostgreSQL the 12-month sums read the purchases-by-member index, which carries the
# amounts (migration 0008), in member order: an index-only scan into a GroupAggregate, one
# member's sums in memory at a time. Hash-aggregating the same rows (what the planner picks
# by its costs) builds a table of some 700,000 members at 500 bytes each: at 10M purchases
# the refresh's statement took 11.1 s with it and 7.6 s without. The index scan reads the
# program's purchases of all time, though only the last 12 months pass its filter.
#
# Orders count net of orders returned in full, spend net of returns, points net of
# reversals.
#
# A score is 1 + 5 * (rank - 1) // n (`domain.segments.quintile`), where rank - 1 is how
# many members have a lower value. SQLite computes it as written, with RANK(). PostgreSQL
# gets the same numbers without sorting a million wide rows three times: rank - 1 >= m
# exactly when the value is above the m-th lowest value, so the score is 1 plus the number
# of the four cuts, the ceil(k * n / 5)-th lowest values for k = 1..4, that the value is
# above. The cuts come from one sorted array per measure, of the account rows alone.
#
# The result is merged in, and only rows whose values changed are written: from one refresh to
# the next most members' scores stay the same, and each row written costs an entry in every
# ranking index. A member's row never goes away (nothing deletes purchases), so a refresh
# deletes nothing. `member_scores.compute_time` is when the member's scores last changed;
# readers report the refresh's own time (`segment_refreshes`).

# What each of R, F and M ranks: the account's last purchase time, orders and net spend.
_MEASURES = (("r", "last_purchase_time"), ("f", "order_count"), ("m", "total_spend_minor"))
_BUYERS = "FROM member_accounts WHERE program_id = :program_id AND last_purchase_time IS NOT NULL"

_SCORED_BY_RANK = f"""ranked AS (
    SELECT stats.*,
        COUNT(*) OVER () AS n,
        {", ".join(f"RANK() OVER (ORDER BY a_{m}) AS {s}_rank" for s, m in _MEASURES)}
    FROM stats
), scored AS (
    SELECT ranked.*, {", ".join(f"1 + (5 * ({s}_rank - 1)) / n AS {s}" for s, _ in _MEASURES)}
    FROM ranked
)"""

_SCORED_BY_CUTS = f"""sorted AS MATERIALIZED (
    SELECT COUNT(*) AS n,
        {", ".join(f"array_agg({m} ORDER BY {m}) AS {s}_sorted" for s, m in _MEASURES)}
    {_BUYERS}
), cuts AS MATERIALIZED (
    SELECT {
    ", ".join(
        f"{s}_sorted[(({k} * n + 4) / 5)::int] AS {s}{k}" for s, _ in _MEASURES for k in range(1, 5)
    )
}
    FROM sorted
), scored AS (
    SELECT stats.*, {
    ", ".join(
        "1 + " + " + ".join(f"(a_{m} > {s}{k})::int" for k in range(1, 5)) + f" AS {s}"
        for s, m in _MEASURES
    )
}
    FROM stats CROSS JOIN cuts
)"""


# An order counts unless it was returned in full (an order of 0 counts as bought); the
# same condition as SQL text, for the refresh's statement.
_kept = sa.or_(
    t.purchases.c.returned_minor < t.purchases.c.total_minor, t.purchases.c.total_minor == 0
)
_KEPT = f"({_kept.compile(compile_kwargs={'literal_binds': True})})"


def _scores_sql(dialect: str) -> str:
    scored = _SCORED_BY_CUTS if dialect == "postgresql" else _SCORED_BY_RANK
    return f"""
WITH recent AS (
    -- SUM of BIGINT is NUMERIC on PostgreSQL: cast back, so that averages divide as integers.
    SELECT member_id,
        CAST(SUM(total_minor - returned_minor) FILTER (WHERE purchase_time > :t90) AS BIGINT)
            AS spend_90d,
        COUNT(*) FILTER (WHERE purchase_time > :t90 AND {_KEPT}) AS orders_90d,
        CAST(SUM(points_awarded - points_reversed) FILTER (WHERE purchase_time > :t90)
            AS BIGINT) AS points_90d,
        CAST(SUM(total_minor - returned_minor) AS BIGINT) AS spend_12m,
        COUNT(*) FILTER (WHERE {_KEPT}) AS orders_12m,
        CAST(SUM(points_awarded - points_reversed) AS BIGINT) AS points_12m
    FROM purchases
    WHERE program_id = :program_id AND purchase_time > :t12m
    GROUP BY member_id
), stats AS (
    SELECT a.member_id,
        a.last_purchase_time AS a_last_purchase_time,
        a.order_count AS a_order_count,
        a.total_spend_minor AS a_total_spend_minor,
        COALESCE(r.spend_90d, 0) AS spend_90d,
        COALESCE(r.orders_90d, 0) AS orders_90d,
        COALESCE(r.points_90d, 0) AS points_90d,
        COALESCE(r.spend_12m, 0) AS spend_12m,
        COALESCE(r.orders_12m, 0) AS orders_12m,
        COALESCE(r.points_12m, 0) AS points_12m,
        a.total_spend_minor AS spend_all,
        a.order_count AS orders_all,
        a.lifetime_earned - a.reversed AS points_all
    FROM member_accounts a
    LEFT JOIN recent r ON r.member_id = a.member_id
    WHERE a.program_id = :program_id AND a.last_purchase_time IS NOT NULL
), {scored}
SELECT :program_id AS program_id, member_id, r AS recency, f AS frequency, m AS monetary,
    {_segment_of(dialect)} AS segment_id,
    spend_90d, orders_90d, points_90d, spend_12m, orders_12m, points_12m,
    spend_all, orders_all, points_all, :now AS compute_time,
    CASE WHEN orders_90d > 0 THEN spend_90d / orders_90d ELSE 0 END AS aov_90d,
    CASE WHEN orders_12m > 0 THEN spend_12m / orders_12m ELSE 0 END AS aov_12m,
    CASE WHEN orders_all > 0 THEN spend_all / orders_all ELSE 0 END AS aov_all
FROM scored
"""


_COLUMNS = ("program_id", "member_id", *_SCORED, "compute_time")
_CHANGED = " OR ".join(f"s.{c} <> n.{c}" for c in _SCORED)

# PostgreSQL: MERGE joins the new scores to the stored ones in one hash join.
_REFRESH_MERGE = f"""
MERGE INTO member_scores AS s
USING ({_scores_sql("postgresql")}) AS n
ON s.program_id = :program_id AND s.member_id = n.member_id
WHEN MATCHED AND ({_CHANGED}) THEN
    UPDATE SET {", ".join(f"{c} = n.{c}" for c in _SCORED)}, compute_time = n.compute_time
WHEN NOT MATCHED THEN
    INSERT ({", ".join(_COLUMNS)}) VALUES ({", ".join(f"n.{c}" for c in _COLUMNS)})
"""

# SQLite (no MERGE): the same as an upsert.
_REFRESH_UPSERT = f"""
INSERT INTO member_scores ({", ".join(_COLUMNS)})
SELECT {", ".join(f"n.{c}" for c in _COLUMNS)} FROM ({_scores_sql("sqlite")}) AS n WHERE true
ON CONFLICT (program_id, member_id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _SCORED)}, compute_time = excluded.compute_time
WHERE {" OR ".join(f"member_scores.{c} <> excluded.{c}" for c in _SCORED)}
"""

# PostgreSQL, for the refresh's transaction alone:
REFRESH_SETTINGS = (
    # a million members' sums and three sorts fit in memory, not in 4 MB;
    "SET LOCAL work_mem = '256MB'",
    # compiling the expressions (JIT) costs more than it saves on this one pass;
    "SET LOCAL jit = off",
    # the 12-month sums are grouped from the ordered index (see above), not in a hash table.
    "SET LOCAL enable_hashagg = off",
)

_TIMES = (
    sa.bindparam("t90", type_=UtcDateTime()),
    sa.bindparam("t12m", type_=UtcDateTime()),
    sa.bindparam("now", type_=UtcDateTime()),
)

WINDOW_COLUMNS = {
    ("spend", "90d"): "spend_90d",
    ("spend", "12m"): "spend_12m",
    ("spend", "all"): "spend_all",
    ("orders", "90d"): "orders_90d",
    ("orders", "12m"): "orders_12m",
    ("orders", "all"): "orders_all",
    ("points", "90d"): "points_90d",
    ("points", "12m"): "points_12m",
    ("points", "all"): "points_all",
    ("aov", "90d"): "aov_90d",
    ("aov", "12m"): "aov_12m",
    ("aov", "all"): "aov_all",
}


@dataclass(frozen=True)
class Scores:
    """A member's stored RFM scores."""

    recency: int
    frequency: int
    monetary: int
    segment_id: str
    compute_time: datetime


class SegmentMember(NamedTuple):
    """One member of a segment, for export: the ids and the R, F and M scores."""

    member_id: str
    external_id: str
    recency: int
    frequency: int
    monetary: int


@dataclass(frozen=True)
class SegmentPage:
    """A page of a segment's members, all scored by the same refresh (one snapshot)."""

    segment_id: str
    compute_time: datetime | None  # the refresh's time; None only on an empty page
    members: Sequence[SegmentMember]

    def scores(self, member: SegmentMember) -> Scores:
        """A member's scores as the `Scores` other readers get."""
        assert self.compute_time is not None
        return Scores(
            member.recency, member.frequency, member.monetary, self.segment_id, self.compute_time
        )


# Net spend and orders of a page of members since a time (built once, bound per call).
_window_stats_of = (
    sa.select(
        t.purchases.c.member_id,
        sa.func.sum(t.purchases.c.total_minor - t.purchases.c.returned_minor),
        sa.func.sum(sa.case((_kept, 1), else_=0)),
    )
    .where(
        t.purchases.c.program_id == sa.bindparam("program_id"),
        spanning(t.purchases.c.member_id),
        t.purchases.c.purchase_time > sa.bindparam("since", type_=t.Ts),
    )
    .group_by(t.purchases.c.member_id)
)


@functools.cache
def _top_statement(column: str) -> sa.TextClause:
    """The top `limit` members by a ranking column, and everyone tied with the last of them.

    The first part walks the ranking's partial index from the top and stops after `limit`
    rows; the second looks up the value of the last one (an equality in the same index) for
    members the first part left out. Neither part depends on the planner guessing how many
    members lie above a cut it cannot know in advance.
    """
    s = f"SELECT member_id, {column} AS value FROM member_scores WHERE program_id = :program_id"
    ranked = f"{s} AND {column} > {RANKS}"  # the partial index's own condition
    return sa.text(
        f"""
WITH head AS ({ranked} ORDER BY {column} DESC LIMIT :limit)
SELECT member_id, value FROM head
UNION ALL
{ranked} AND {column} = (SELECT MIN(value) FROM head)
    AND NOT EXISTS (SELECT 1 FROM head WHERE head.member_id = member_scores.member_id)
"""
    )


def _segment_page() -> sa.Select[Any]:
    """A page of a segment's members, as a statement built once and bound per call.

    The page is cut from the segment's index first and only then meets the members, one key
    lookup each: joined the other way round, PostgreSQL walked the program's members from
    the first to reach each page, so an export took quadratic time. The lookup is a scalar
    subquery, whatever the planner believes of the members table: right after a bulk
    import its statistics can say "200 rows" of a million, and a join planned on that
    sorted all of them for every page.
    """
    s, m, r = t.member_scores, t.members, t.segment_refreshes
    program: sa.BindParameter[str] = sa.bindparam("program_id", type_=t.Id)
    page = (
        sa.select(s.c.member_id, s.c.recency, s.c.frequency, s.c.monetary)
        .where(
            s.c.program_id == program,
            s.c.segment_id == sa.bindparam("segment_id"),
            s.c.member_id > sa.bindparam("after"),
        )
        .order_by(s.c.member_id)
        .limit(sa.bindparam("limit"))
        .subquery()
    )
    external_id = (
        sa.select(m.c.external_id)
        .where(m.c.program_id == program, m.c.member_id == page.c.member_id)
        .scalar_subquery()
    )
    refreshed = sa.select(r.c.compute_time).where(r.c.program_id == program).scalar_subquery()
    return sa.select(
        page.c.member_id,
        external_id.label("external_id"),
        page.c.recency,
        page.c.frequency,
        page.c.monetary,
        sa.type_coerce(refreshed, sa.DateTime(timezone=True)).label("compute_time"),
    ).order_by(page.c.member_id)


_SEGMENT_PAGE = _segment_page()


@functools.cache
def _compiled_for(dialect: sa.Dialect) -> tuple[str, tuple[str, ...]]:
    """The export page's SQL for a positional driver, and its parameters' names in order."""
    compiled = _SEGMENT_PAGE.compile(dialect=dialect)
    assert compiled.positiontup is not None
    return str(compiled), tuple(compiled.positiontup)


@contextlib.asynccontextmanager
async def vacuumed_around(db: Database) -> AsyncIterator[None]:
    """Around a refresh's transaction: vacuum what it reads before, and what it wrote after.

    Both ends are index-only scans, which read a row from the table wherever its page is
    not marked all-visible, and only VACUUM marks them (on this project's own PostgreSQL,
    autovacuum may be off altogether). Before: the purchases, whose by-member index the
    refresh sums from; after a bulk import that is a pass over the whole table, after that
    only over the pages written since (some 70 ms at 10M purchases). After (once the
    refresh committed): the scores it rewrote, which export pages read from the segment
    index.
    """
    await db.vacuum(t.purchases.name)
    yield
    await db.vacuum(t.member_scores.name)


class SegmentRepository(_Repository):
    """Scores and the queries marketing tools run on them."""

    async def refresh(self, program_id: str, now: datetime, t90: datetime, t12m: datetime) -> int:
        """Recompute every member's scores in one set-based pass; returns members scored."""
        s = t.member_scores
        if self.dialect == "postgresql":
            for setting in REFRESH_SETTINGS:
                await self.conn.execute(sa.text(setting))
        await self.conn.execute(
            sa.text(_REFRESH_MERGE if self.dialect == "postgresql" else _REFRESH_UPSERT).bindparams(
                *_TIMES
            ),
            {"program_id": program_id, "now": now, "t90": t90, "t12m": t12m},
        )
        count = (
            await self.conn.execute(sa.select(sa.func.count()).where(s.c.program_id == program_id))
        ).scalar_one()
        if self.dialect == "postgresql":
            # Fresh statistics, so top-customer queries walk the metric's index at once.
            await self.conn.execute(sa.text("ANALYZE member_scores"))
        r = t.segment_refreshes
        await self.conn.execute(r.delete().where(r.c.program_id == program_id))
        await self.conn.execute(
            r.insert().values(program_id=program_id, compute_time=now, members_scored=count)
        )
        return int(count)

    async def last_refresh(self, program_id: str) -> datetime | None:
        """When the program's scores were last computed."""
        r = t.segment_refreshes
        row = (
            await self.conn.execute(sa.select(r.c.compute_time).where(r.c.program_id == program_id))
        ).first()
        return row.compute_time if row else None

    async def segment_counts(self, program_id: str) -> dict[str, int]:
        """Members per segment."""
        s = t.member_scores
        rows = await self.conn.execute(
            sa.select(s.c.segment_id, sa.func.count())
            .where(s.c.program_id == program_id)
            .group_by(s.c.segment_id)
        )
        return {row[0]: int(row[1]) for row in rows}

    async def segment_members(
        self, program_id: str, segment_id: str, after_id: str, limit: int
    ) -> SegmentPage:
        """A page of a segment's members by id (keyset paging for streaming exports).

        One statement, so one snapshot: the page and the refresh time it reports agree.
        """
        params = {
            "program_id": program_id,
            "segment_id": segment_id,
            "after": after_id,
            "limit": limit,
        }
        rows: Sequence[Sequence[Any]]
        if self.dialect == "postgresql":
            # Straight to asyncpg with the statement SQLAlchemy compiled once: its records
            # need no further handling, which was a tenth of an export's CPU.
            sql, names = _compiled_for(self.conn.dialect)
            driver = (await self.conn.get_raw_connection()).driver_connection
            assert driver is not None
            rows = await driver.fetch(sql, *(params[n] for n in names))
        else:
            rows = (await self.conn.execute(_SEGMENT_PAGE, params)).all()
        if not rows:
            return SegmentPage(segment_id, None, [])
        # The refresh time is the same on every row; typed plainly in the statement, so that
        # only this one value goes through the UTC conversion.
        when = t.Ts().process_result_value(rows[0][5], self.conn.dialect)
        # Plain tuples from the start: reading a database row's fields by name cost about
        # 0.4 us each, more than the rest of the page's handling per member.
        return SegmentPage(segment_id, when, [SegmentMember._make(r[:5]) for r in rows])

    async def scores(self, program_id: str, member_id: str) -> Scores | None:
        """A member's scores, if computed."""
        s, r = t.member_scores, t.segment_refreshes
        row = (
            await self.conn.execute(
                sa.select(*_score_columns())
                .select_from(s.join(r, r.c.program_id == s.c.program_id))
                .where(s.c.program_id == program_id, s.c.member_id == member_id)
            )
        ).first()
        return _scores(row) if row else None

    async def top(
        self, program_id: str, metric: str, window: str, limit: int
    ) -> list[tuple[str, int]]:
        """Members by a metric in a window, best first: the top `limit` and ties with the last.

        One statement, one walk down the ranking's index: the first `limit` members, then any
        others tied with the last of them (an equality lookup in the same index).
        """
        rows = await self.conn.execute(
            _top_statement(WINDOW_COLUMNS[(metric, window)]),
            {"program_id": program_id, "limit": limit},
        )
        return sorted(((r[0], int(r[1])) for r in rows), key=lambda r: (-r[1], r[0]))

    async def members_with_value(self, program_id: str, metric: str, window: str) -> int:
        """How many members have a positive value of the metric in the window."""
        s = t.member_scores
        column = s.c[WINDOW_COLUMNS[(metric, window)]]
        count = (
            await self.conn.execute(
                sa.select(sa.func.count()).where(s.c.program_id == program_id, column > RANKS)
            )
        ).scalar_one()
        return int(count)

    async def window_stats(
        self, program_id: str, member_id: str, since: datetime
    ) -> tuple[int, int]:
        """Net spend and orders (net of full returns) of a member since a time, live."""
        return (await self.window_stats_of(program_id, [member_id], since)).get(member_id, (0, 0))

    async def window_stats_of(
        self, program_id: str, member_ids: Sequence[str], since: datetime
    ) -> dict[str, tuple[int, int]]:
        """Net spend and orders since a time of each of some members, live, in one pass.

        Members without purchases since then are left out (their statistics are zero).
        """
        if not member_ids:
            return {}
        rows = await self.conn.execute(
            _window_stats_of, {**span(program_id, member_ids), "since": since}
        )
        wanted = set(member_ids)
        return {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in rows if r[0] in wanted}

    async def scores_of(
        self, program_id: str, member_ids: Sequence[str]
    ) -> dict[str, tuple[Scores, int]]:
        """The scores and scored 12-month spend of each of some members that has them."""
        if not member_ids:
            return {}
        s, r = t.member_scores, t.segment_refreshes
        rows = await self.conn.execute(
            sa.select(*_score_columns(), s.c.spend_12m)
            .select_from(s.join(r, r.c.program_id == s.c.program_id))
            .where(s.c.program_id == sa.bindparam("program_id"), spanning(s.c.member_id)),
            span(program_id, member_ids),
        )
        wanted = set(member_ids)
        return {r.member_id: (_scores(r), int(r.spend_12m)) for r in rows if r.member_id in wanted}

    async def categories(self, program_id: str, member_id: str) -> list[str]:
        """Categories the member bought."""
        c = t.member_categories
        rows = await self.conn.execute(
            sa.select(c.c.category)
            .where(c.c.program_id == program_id, c.c.member_id == member_id)
            .order_by(c.c.category)
        )
        return [r.category for r in rows]

    async def program_totals(self, program_id: str, active_since: datetime) -> dict[str, Any]:
        """The program's health, from the accounts in one pass."""
        a = t.member_accounts
        row = (
            await self.conn.execute(
                sa.select(
                    sa.func.count().label("members"),
                    sa.func.sum(sa.case((a.c.last_purchase_time > active_since, 1), else_=0)).label(
                        "active"
                    ),
                    sa.func.sum(sa.case((a.c.order_count >= 1, 1), else_=0)).label("buyers"),
                    sa.func.sum(sa.case((a.c.order_count >= 2, 1), else_=0)).label("repeat"),
                    sa.func.coalesce(sa.func.sum(a.c.lifetime_earned), 0).label("earned"),
                    sa.func.coalesce(sa.func.sum(a.c.redeemed), 0).label("redeemed"),
                    sa.func.coalesce(sa.func.sum(a.c.available + a.c.pending), 0).label(
                        "outstanding"
                    ),
                ).where(a.c.program_id == program_id)
            )
        ).one()
        return {k: int(v or 0) for k, v in row._mapping.items()}

    async def tier_totals(self, program_id: str) -> list[tuple[str | None, int, int, int]]:
        """Per tier: members, net spend and orders."""
        a = t.member_accounts
        rows = await self.conn.execute(
            sa.select(
                a.c.tier_id,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(a.c.total_spend_minor), 0),
                sa.func.coalesce(sa.func.sum(a.c.order_count), 0),
            )
            .where(a.c.program_id == program_id)
            .group_by(a.c.tier_id)
        )
        return [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]


def _score_columns() -> tuple[Any, ...]:
    """A member's scores with the time of the refresh that computed them (the program's last:
    a refresh leaves the rows it found unchanged as they were)."""
    s = t.member_scores
    return (
        s.c.member_id, s.c.recency, s.c.frequency, s.c.monetary, s.c.segment_id,
        t.segment_refreshes.c.compute_time,
    )  # fmt: skip


def _scores(row: Any) -> Scores:
    return Scores(row.recency, row.frequency, row.monetary, row.segment_id, row.compute_time)
