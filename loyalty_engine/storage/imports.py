"""Bulk loading of historical purchases: set-based, and COPY on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
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


class ImportRepository(_Repository):
    """Writes many purchases at once."""

    async def external_ids(self, program_id: str, external_ids: Sequence[str]) -> dict[str, str]:
        """Member ids of the given external ids (those that exist)."""
        mi = t.member_identifiers
        rows = await self.conn.execute(
            sa.select(mi.c.value, mi.c.member_id).where(
                mi.c.program_id == program_id,
                mi.c.kind == "EXTERNAL_ID",
                mi.c.value.in_(list(external_ids)),
            )
        )
        return {r.value: r.member_id for r in rows}

    async def claim_orders(self, program_id: str, orders: Sequence[tuple[str, str]]) -> set[str]:
        """Claim (order id, member id) pairs; returns the order ids that were new."""
        if not orders:
            return set()
        if self.dialect == "postgresql":
            # One statement for the whole batch, however large.
            rows = await self.conn.execute(
                sa.text(
                    "INSERT INTO order_claims (program_id, order_id, member_id) "
                    "SELECT :program_id, o, m "
                    "FROM unnest(CAST(:orders AS text[]), CAST(:members AS text[])) AS x(o, m) "
                    "ON CONFLICT DO NOTHING RETURNING order_id"
                ),
                {
                    "program_id": program_id,
                    "orders": [o for o, _ in orders],
                    "members": [m for _, m in orders],
                },
            )
            return {row.order_id for row in rows}
        claimed: set[str] = set()
        for start in range(0, len(orders), 5000):
            chunk = orders[start : start + 5000]
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

    async def add_purchases(
        self, purchases: list[dict[str, Any]], lines: list[dict[str, Any]]
    ) -> None:
        """Insert purchases and lines: COPY on PostgreSQL, one executemany on SQLite."""
        if not purchases:
            return
        if self.dialect == "postgresql":
            raw = await self.conn.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.copy_records_to_table(
                "purchases",
                records=[
                    tuple(json.dumps(p[c]) if c == "breakdown" else p[c] for c in PURCHASE_COLUMNS)
                    for p in purchases
                ],
                columns=list(PURCHASE_COLUMNS),
            )
            if lines:
                await driver.copy_records_to_table(
                    "purchase_lines",
                    records=[tuple(line[c] for c in LINE_COLUMNS) for line in lines],
                    columns=list(LINE_COLUMNS),
                )
            return
        await self.conn.execute(t.purchases.insert(), purchases)
        if lines:
            await self.conn.execute(t.purchase_lines.insert(), lines)

    async def enroll(self, members: list[Member]) -> None:
        """Insert new members, their empty accounts and external ids: one statement each."""
        if not members:
            return
        await self.conn.execute(
            t.members.insert(),
            [
                {
                    "program_id": m.program_id, "member_id": m.member_id,
                    "external_id": m.external_id, "given_name": None, "family_name": None,
                    "email": None, "phone": None, "card_number": None, "birth_date": None,
                    "join_time": m.join_time, "marketing_consent": False,
                    "state": m.state.value, "create_time": m.create_time,
                    "update_time": m.update_time, "erase_time": None,
                }
                for m in members
            ],
        )  # fmt: skip
        await self.conn.execute(
            t.member_accounts.insert(),
            [
                {
                    "program_id": m.program_id, "member_id": m.member_id, "available": 0,
                    "pending": 0, "reserved": 0, "lifetime_earned": 0, "redeemed": 0,
                    "expired": 0, "reversed": 0, "last_activity_time": None, "entry_seq": 0,
                    "tier_id": None, "tier_review_time": None, "tier_change_seq": 0,
                    "first_purchase_time": None, "last_purchase_time": None, "order_count": 0,
                    "total_spend_minor": 0,
                }
                for m in members
            ],
        )  # fmt: skip
        await self.conn.execute(
            t.member_identifiers.insert(),
            [
                {
                    "program_id": m.program_id, "kind": IdentifierKind.EXTERNAL_ID.value,
                    "value": m.external_id, "member_id": m.member_id,
                }
                for m in members
            ],
        )  # fmt: skip

    async def add_statistics(
        self, program_id: str, stats: dict[str, tuple[datetime, datetime, int, int]]
    ) -> None:
        """Fold imported purchases into members' statistics: (first, last, orders, spend).

        One executemany for the batch (pipelined by the driver), not a round trip per member.
        """
        if not stats:
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
