"""Bulk loading of historical purchases: a few set-based statements per batch.

On PostgreSQL every step is one statement on the driver's own connection, inside the unit of
work's transaction: array parameters (`unnest`) for lookups, claims and statistics, and COPY
for the rows themselves. No statement is compiled or sent per row. SQLite gets the same steps
as multi-row statements through SQLAlchemy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from loyalty_engine.domain.members import IdentifierKind, Member
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.repositories import _Repository
from loyalty_engine.storage.schema import UtcDateTime

PURCHASE_COLUMNS = (
    "program_id", "member_id", "order_id", "purchase_time", "store_id", "currency_code",
    "total_minor", "eligible_minor", "points_awarded", "order_level_points", "breakdown",
    "returned_minor", "points_reversed", "tier_id", "create_time",
)  # fmt: skip
LINE_COLUMNS = (
    "program_id", "member_id", "order_id", "line_index", "sku", "category", "quantity",
    "unit_price_minor", "points", "returned_quantity",
)  # fmt: skip
MEMBER_COLUMNS = (
    "program_id", "member_id", "external_id", "join_time", "marketing_consent", "state",
    "create_time", "update_time",
)  # fmt: skip
ACCOUNT_COLUMNS = (
    "program_id", "member_id", "available", "pending", "reserved", "lifetime_earned",
    "redeemed", "expired", "reversed", "entry_seq", "tier_change_seq", "order_count",
    "total_spend_minor",
)  # fmt: skip
BREAKDOWN_COLUMN = PURCHASE_COLUMNS.index("breakdown")
SQLITE_CHUNK = 5000  # rows per multi-row statement (SQLite caps bound variables)
EXTERNAL_ID = IdentifierKind.EXTERNAL_ID.value


def _chunks(items: Sequence[Any], size: int = SQLITE_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ImportRepository(_Repository):
    """Writes many purchases at once."""

    async def _driver(self) -> Any:
        """The asyncpg connection under this unit of work (same transaction)."""
        raw = await self.conn.get_raw_connection()
        return raw.driver_connection

    async def analyze(self) -> None:
        """Refresh the planner's statistics of the member tables an import fills.

        A program's first import grows these tables from nothing faster than autovacuum
        analyzes them, and a plan made for an empty table turns the batch lookups into scans.
        """
        if self.dialect == "postgresql":
            await (await self._driver()).execute(
                "ANALYZE member_identifiers, member_accounts, members"
            )

    async def external_ids(self, program_id: str, external_ids: Sequence[str]) -> dict[str, str]:
        """Member ids of the given external ids (those that exist)."""
        if self.dialect == "postgresql":
            rows = await (await self._driver()).fetch(
                "SELECT value, member_id FROM member_identifiers "
                "WHERE program_id = $1 AND kind = $2 AND value = ANY($3::text[])",
                program_id,
                EXTERNAL_ID,
                list(external_ids),
            )
            return {r["value"]: r["member_id"] for r in rows}
        mi = t.member_identifiers
        found: dict[str, str] = {}
        for chunk in _chunks(list(external_ids)):
            rows = await self.conn.execute(
                sa.select(mi.c.value, mi.c.member_id).where(
                    mi.c.program_id == program_id,
                    mi.c.kind == EXTERNAL_ID,
                    mi.c.value.in_(chunk),
                )
            )
            found.update({r.value: r.member_id for r in rows})
        return found

    async def enroll(self, members: list[Member]) -> dict[str, str]:
        """Enroll new members (profile, empty account, external id) in a few statements.

        Returns the member id for each external id. An external id that another import or
        an EnrollMember claimed meanwhile keeps that member: this batch's new member for it
        is dropped before anything else of it is written.
        """
        if not members:
            return {}
        program_id = members[0].program_id
        if self.dialect == "postgresql":
            driver = await self._driver()
            claimed = {
                r["value"]
                for r in await driver.fetch(
                    "INSERT INTO member_identifiers (program_id, kind, value, member_id) "
                    "SELECT $1, $2, v, m FROM unnest($3::text[], $4::text[]) AS x(v, m) "
                    "ON CONFLICT DO NOTHING RETURNING value",
                    program_id,
                    EXTERNAL_ID,
                    [m.external_id for m in members],
                    [m.member_id for m in members],
                )
            }
            new = sorted((m for m in members if m.external_id in claimed), key=_member_key)
            await driver.copy_records_to_table(
                "members", records=[_member_record(m) for m in new], columns=MEMBER_COLUMNS
            )
            await driver.copy_records_to_table(
                "member_accounts",
                records=[_account_record(m) for m in new],
                columns=ACCOUNT_COLUMNS,
            )
        else:
            claimed = set()
            for chunk in _chunks(members):
                stmt = (
                    sqlite.insert(t.member_identifiers)
                    .values(
                        [
                            {
                                "program_id": program_id,
                                "kind": EXTERNAL_ID,
                                "value": m.external_id,
                                "member_id": m.member_id,
                            }
                            for m in chunk
                        ]
                    )
                    .on_conflict_do_nothing()
                    .returning(t.member_identifiers.c.value)
                )
                claimed.update(r.value for r in await self.conn.execute(stmt))
            new = [m for m in members if m.external_id in claimed]
            if new:
                await self.conn.execute(
                    t.members.insert(),
                    [dict(zip(MEMBER_COLUMNS, _member_record(m), strict=True)) for m in new],
                )
                await self.conn.execute(
                    t.member_accounts.insert(),
                    [dict(zip(ACCOUNT_COLUMNS, _account_record(m), strict=True)) for m in new],
                )
        ids = {m.external_id: m.member_id for m in new}
        raced = [m.external_id for m in members if m.external_id not in claimed]
        if raced:
            ids.update(await self.external_ids(program_id, raced))
        return ids

    async def claim_orders(self, program_id: str, orders: Sequence[tuple[str, str]]) -> set[str]:
        """Claim (order id, member id) pairs; returns the order ids that were new."""
        if not orders:
            return set()
        if self.dialect == "postgresql":
            # One statement for the whole batch, in key order (see add_purchases).
            orders = sorted(orders)
            rows = await (await self._driver()).fetch(
                "INSERT INTO order_claims (program_id, order_id, member_id) "
                "SELECT $1, o, m FROM unnest($2::text[], $3::text[]) AS x(o, m) "
                "ON CONFLICT DO NOTHING RETURNING order_id",
                program_id,
                [o for o, _ in orders],
                [m for _, m in orders],
            )
            return {row["order_id"] for row in rows}
        claimed: set[str] = set()
        for chunk in _chunks(orders):
            stmt = (
                sqlite.insert(t.order_claims)
                .values(
                    [{"program_id": program_id, "order_id": o, "member_id": m} for o, m in chunk]
                )
                .on_conflict_do_nothing()
                .returning(t.order_claims.c.order_id)
            )
            claimed.update(row.order_id for row in await self.conn.execute(stmt))
        return claimed

    async def add_purchases(self, purchases: list[tuple], lines: list[tuple]) -> None:
        """Insert purchases (PURCHASE_COLUMNS order, breakdown as a list) and lines."""
        if not purchases:
            return
        if self.dialect == "postgresql":
            # In primary-key order: the index pages are then visited once each, in turn,
            # not once per row at random (member ids are random).
            purchases = sorted(purchases, key=_purchase_key)
            lines = sorted(lines, key=_line_key)
            driver = await self._driver()
            await driver.copy_records_to_table(
                "purchases",
                records=[_json_breakdown(p) for p in purchases],
                columns=PURCHASE_COLUMNS,
            )
            if lines:
                await driver.copy_records_to_table(
                    "purchase_lines", records=lines, columns=LINE_COLUMNS
                )
            return
        await self.conn.execute(
            t.purchases.insert(), [dict(zip(PURCHASE_COLUMNS, p, strict=True)) for p in purchases]
        )
        if lines:
            await self.conn.execute(
                t.purchase_lines.insert(), [dict(zip(LINE_COLUMNS, r, strict=True)) for r in lines]
            )

    async def add_statistics(self, program_id: str, stats: dict[str, list]) -> None:
        """Fold imported purchases into members' statistics: [first, last, orders, spend].

        One statement for the batch: an UPDATE joined to the batch's arrays on PostgreSQL,
        one executemany on SQLite.
        """
        if not stats:
            return
        if self.dialect == "postgresql":
            ids = sorted(stats)  # a stable lock order between concurrent imports
            await (await self._driver()).execute(
                """
                UPDATE member_accounts AS a SET
                  first_purchase_time = LEAST(a.first_purchase_time, s.first),
                  last_purchase_time = GREATEST(a.last_purchase_time, s.last),
                  order_count = a.order_count + s.orders,
                  total_spend_minor = a.total_spend_minor + s.spend
                FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[], $5::bigint[],
                            $6::bigint[]) AS s(member_id, first, last, orders, spend)
                WHERE a.program_id = $1 AND a.member_id = s.member_id
                """,
                program_id,
                ids,
                [stats[m][0] for m in ids],
                [stats[m][1] for m in ids],
                [stats[m][2] for m in ids],
                [stats[m][3] for m in ids],
            )
            return
        a = t.member_accounts
        first, last = (
            sa.bindparam("s_first", type_=UtcDateTime()),
            sa.bindparam("s_last", type_=UtcDateTime()),
        )
        await self.conn.execute(
            a.update()
            .where(
                a.c.program_id == sa.bindparam("s_program"),
                a.c.member_id == sa.bindparam("s_member"),
            )
            .values(
                first_purchase_time=sa.case(
                    (
                        sa.or_(a.c.first_purchase_time.is_(None), a.c.first_purchase_time > first),
                        first,
                    ),
                    else_=a.c.first_purchase_time,
                ),
                last_purchase_time=sa.case(
                    (sa.or_(a.c.last_purchase_time.is_(None), a.c.last_purchase_time < last), last),
                    else_=a.c.last_purchase_time,
                ),
                order_count=a.c.order_count + sa.bindparam("s_orders"),
                total_spend_minor=a.c.total_spend_minor + sa.bindparam("s_spend"),
            ),
            [
                {
                    "s_program": program_id,
                    "s_member": member_id,
                    "s_first": f,
                    "s_last": la,
                    "s_orders": orders,
                    "s_spend": spend,
                }
                for member_id, (f, la, orders, spend) in stats.items()
            ],
        )

    async def add_categories(self, program_id: str, pairs: set[tuple[str, str]]) -> None:
        """Remember the (member, category) pairs the batch bought, in one statement."""
        if not pairs:
            return
        if self.dialect == "postgresql":
            ordered = sorted(pairs)
            await (await self._driver()).execute(
                "INSERT INTO member_categories (program_id, member_id, category) "
                "SELECT $1, m, c FROM unnest($2::text[], $3::text[]) AS x(m, c) "
                "ON CONFLICT DO NOTHING",
                program_id,
                [m for m, _ in ordered],
                [c for _, c in ordered],
            )
            return
        await self.conn.execute(
            self.insert_ignoring_conflicts(t.member_categories),
            [{"program_id": program_id, "member_id": m, "category": c} for m, c in sorted(pairs)],
        )


def _purchase_key(purchase: tuple) -> tuple[str, str]:
    return purchase[1], purchase[2]  # member_id, order_id


def _line_key(line: tuple) -> tuple[str, str, int]:
    return line[1], line[2], line[3]  # member_id, order_id, line_index


def _json_breakdown(purchase: tuple) -> tuple:
    breakdown = purchase[BREAKDOWN_COLUMN]
    text = json.dumps(breakdown) if breakdown else "[]"
    return (*purchase[:BREAKDOWN_COLUMN], text, *purchase[BREAKDOWN_COLUMN + 1 :])


def _member_record(m: Member) -> tuple:
    return (
        m.program_id, m.member_id, m.external_id, m.join_time, False, m.state.value,
        m.create_time, m.update_time,
    )  # fmt: skip


def _account_record(m: Member) -> tuple:
    return (m.program_id, m.member_id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def _member_key(m: Member) -> str:
    return m.member_id
