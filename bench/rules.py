"""Benchmark of the rule module: every default rule over N members, in members per second.

    .venv/bin/python -m bench.rules --members 1000000              # PostgreSQL (default)
    .venv/bin/python -m bench.rules --backend sqlite --members 20000  # quick, embedded

Builds a program of N members directly in SQL on a fresh database (PostgreSQL: a new
`loyalty_bench_rules_<hex>` database, migrated with the project's migrations and dropped
at the end; SQLite: a temp file): birthdays spread over the year (one in ten unknown),
joined 0-6 years ago, one to three purchases each over the last 700 days (never before the
member joined), two thirds with an email. No points ledger: the rules do not read it.
Then it refreshes the scores (set-up, not timed) and times, over the whole program with
the DAILY trigger: a dry run, a real run, and a second real run (which must change
nothing). Afterwards it checks the outcome in the database: the top_customer flags are
exactly the 5% cut of ListTopCustomers (ties included), the offers issued are the dry
run's planned ones, no (member, rule, period) has two offers, codes are unique, and the
dry run and the rerun wrote nothing. Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from loyalty_engine.bootstrap import build_app
from loyalty_engine.config import load_settings
from loyalty_engine.domain.program import Program
from loyalty_engine.domain.rules import Trigger
from loyalty_engine.services.offers import MEMBER_BATCH, RunReport, run_rules
from loyalty_engine.services.programs import create_program
from loyalty_engine.services.segments import refresh_segments
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.database import Database
from loyalty_engine.storage.migrate import upgrade

NOW = datetime(2026, 6, 15, 12, tzinfo=UTC)
PROGRAM = "bench-rules"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
JOIN_DAYS = 6 * 365 + 1  # joined 0-6 years ago
PURCHASE_DAYS = 700  # purchases over the last 700 days
BIRTH_DAYS = 18_262  # birthdays over 1950-1999

# The population, one formula per column of member i (0-based); `_sqlite_rows` below
# follows the same formulas in Python.
_PG_POPULATION = (
    f"""
INSERT INTO members (program_id, member_id, external_id, given_name, family_name, email,
    phone, card_number, birth_date, join_time, marketing_consent, state, create_time,
    update_time, erase_time)
SELECT :p, 'm' || lpad(i::text, 7, '0'), 'x' || i, 'M' || i, NULL,
    CASE WHEN i % 3 <> 0 THEN 'm' || i || '@example.com' END, NULL, NULL,
    CASE WHEN i % 10 <> 9 THEN DATE '1950-01-01' + (i * 7919 % {BIRTH_DAYS})::int END,
    j, i % 2 = 0, 'ACTIVE', j, j, NULL
FROM generate_series(0::bigint, :n - 1) AS g(i),
    LATERAL (SELECT :now - make_interval(days => ((i * 104729) % {JOIN_DAYS})::int,
                                         secs => i % 86400) AS j) AS joined
""",
    """
INSERT INTO member_identifiers (program_id, kind, value, member_id)
SELECT :p, 'EXTERNAL_ID', external_id, member_id FROM members WHERE program_id = :p
UNION ALL
SELECT :p, 'EMAIL', email, member_id FROM members WHERE program_id = :p AND email IS NOT NULL
""",
    f"""
INSERT INTO purchases (program_id, member_id, order_id, purchase_time, store_id,
    currency_code, total_minor, eligible_minor, points_awarded, order_level_points,
    breakdown, returned_minor, points_reversed, tier_id, create_time)
SELECT :p, 'm' || lpad(i::text, 7, '0'), 'o' || i || '-' || k, bought, 'web', 'EUR',
    amount, amount, 0, 0, '[]'::json, 0, 0, NULL, bought
FROM generate_series(0::bigint, :n - 1) AS g(i),
    LATERAL generate_series(0, i % 3) AS h(k),
    LATERAL (SELECT
        :now - make_interval(
            days => ((i * 13 + k * 97)
                     % LEAST({PURCHASE_DAYS}, (i * 104729) % {JOIN_DAYS} + 1))::int,
            secs => (i * 7 + k) % 86400) AS bought,
        1000 + (i * 7919 + k * 3571) % 50000 AS amount) AS p
""",
    """
INSERT INTO order_claims (program_id, order_id, member_id)
SELECT program_id, order_id, member_id FROM purchases WHERE program_id = :p
""",
    """
INSERT INTO member_accounts (program_id, member_id, available, pending, reserved,
    lifetime_earned, redeemed, expired, reversed, last_activity_time, entry_seq, tier_id,
    tier_review_time, tier_change_seq, first_purchase_time, last_purchase_time, order_count,
    total_spend_minor)
SELECT m.program_id, m.member_id, 0, 0, 0, 0, 0, 0, 0, s.last_time, 0, NULL, NULL, 0,
    s.first_time, s.last_time, COALESCE(s.orders, 0), COALESCE(s.spend, 0)
FROM members AS m LEFT JOIN (
    SELECT member_id, MIN(purchase_time) AS first_time, MAX(purchase_time) AS last_time,
        COUNT(*) AS orders, SUM(total_minor) AS spend
    FROM purchases WHERE program_id = :p GROUP BY member_id
) AS s ON s.member_id = m.member_id
WHERE m.program_id = :p
""",
)


def _sqlite_rows(n: int) -> Iterator[tuple[sa.Table, list[dict[str, Any]]]]:
    """The same population as _PG_POPULATION, in batches of rows, for SQLite."""
    for start in range(0, n, 5000):
        members, identifiers, purchases, claims, accounts = [], [], [], [], []
        for i in range(start, min(start + 5000, n)):
            member_id = f"m{i:07d}"
            join_days = (i * 104729) % JOIN_DAYS
            joined = NOW - timedelta(days=join_days, seconds=i % 86400)
            email = f"m{i}@example.com" if i % 3 else None
            members.append(
                {
                    "program_id": PROGRAM,
                    "member_id": member_id,
                    "external_id": f"x{i}",
                    "given_name": f"M{i}",
                    "email": email,
                    "birth_date": (
                        date(1950, 1, 1) + timedelta(days=i * 7919 % BIRTH_DAYS)
                        if i % 10 != 9
                        else None
                    ),
                    "join_time": joined,
                    "marketing_consent": i % 2 == 0,
                    "state": "ACTIVE",
                    "create_time": joined,
                    "update_time": joined,
                }
            )
            identifiers.append(
                {
                    "program_id": PROGRAM,
                    "kind": "EXTERNAL_ID",
                    "value": f"x{i}",
                    "member_id": member_id,
                }
            )
            if email:
                identifiers.append(
                    {"program_id": PROGRAM, "kind": "EMAIL", "value": email, "member_id": member_id}
                )
            times, spend = [], 0
            for k in range(1 + i % 3):
                days = (i * 13 + k * 97) % min(PURCHASE_DAYS, join_days + 1)
                bought = NOW - timedelta(days=days, seconds=(i * 7 + k) % 86400)
                amount = 1000 + (i * 7919 + k * 3571) % 50000
                times.append(bought)
                spend += amount
                purchases.append(
                    {
                        "program_id": PROGRAM,
                        "member_id": member_id,
                        "order_id": f"o{i}-{k}",
                        "purchase_time": bought,
                        "store_id": "web",
                        "currency_code": "EUR",
                        "total_minor": amount,
                        "eligible_minor": amount,
                        "points_awarded": 0,
                        "order_level_points": 0,
                        "breakdown": [],
                        "returned_minor": 0,
                        "points_reversed": 0,
                        "create_time": bought,
                    }
                )
                claims.append(
                    {"program_id": PROGRAM, "order_id": f"o{i}-{k}", "member_id": member_id}
                )
            accounts.append(
                {
                    "program_id": PROGRAM,
                    "member_id": member_id,
                    **dict.fromkeys(
                        ("available", "pending", "reserved", "lifetime_earned", "redeemed"), 0
                    ),
                    **dict.fromkeys(("expired", "reversed", "entry_seq", "tier_change_seq"), 0),
                    "last_activity_time": max(times),
                    "first_purchase_time": min(times),
                    "last_purchase_time": max(times),
                    "order_count": len(times),
                    "total_spend_minor": spend,
                }
            )
        yield t.members, members
        yield t.member_identifiers, identifiers
        yield t.purchases, purchases
        yield t.order_claims, claims
        yield t.member_accounts, accounts


async def populate(db: Database, members: int) -> None:
    """The program and its members, set-based (PostgreSQL) or in batches (SQLite)."""
    async with db.unit_of_work() as uow:
        await create_program(
            uow,
            Program(
                program_id=PROGRAM,
                display_name="Rules bench",
                currency_code="EUR",
                late_purchase_window_days=3650,
            ),
            NOW,
        )
        await uow.commit()
    async with db.engine.begin() as conn:
        if db.backend == "postgresql":
            now = sa.bindparam("now", type_=t.UtcDateTime())
            for statement in _PG_POPULATION:
                text = sa.text(statement)
                if ":now" in statement:
                    text = text.bindparams(now)
                await conn.execute(text, {"p": PROGRAM, "n": members, "now": NOW})
            await conn.execute(sa.text("ANALYZE"))
        else:
            for table, rows in _sqlite_rows(members):
                await conn.execute(table.insert(), rows)


async def _scalar(db: Database, statement: Any) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(statement)).scalar_one())


async def written(db: Database) -> tuple[int, int, int]:
    """Offers, flags and offer events of the program."""
    counts = []
    for table in (t.offers, t.member_flags, t.offer_events):
        counts.append(
            await _scalar(db, sa.select(sa.func.count()).where(table.c.program_id == PROGRAM))
        )
    return counts[0], counts[1], counts[2]


async def timed(db: Database, rules: Any, dry_run: bool, page_size: int) -> tuple[RunReport, float]:
    started = time.monotonic()
    report = await run_rules(
        db.unit_of_work,
        rules,
        PROGRAM,
        NOW,
        dry_run=dry_run,
        trigger=Trigger.DAILY,
        page_size=page_size,
    )
    return report, time.monotonic() - started


def _line(name: str, report: RunReport, seconds: float) -> str:
    counts = ", ".join(f"{k}: {v:,}" for k, v in sorted(report.action_counts.items()))
    return (
        f"{name}: {report.members_evaluated:,} members, {report.actions:,} actions "
        f"({counts or 'none'}), {report.offers_issued:,} offers issued, in {seconds:.1f}s = "
        f"{report.members_evaluated / seconds:,.0f} members/s"
    )


async def verify(db: Database, dry: RunReport, real: RunReport, again: RunReport) -> list[str]:
    """What is wrong with the run's outcome (nothing, if the list is empty)."""
    problems = []
    planned_offers = sum(n for k, n in dry.action_counts.items() if k.startswith("ISSUE_OFFER"))
    offers = await _scalar(db, sa.select(sa.func.count()).where(t.offers.c.program_id == PROGRAM))
    if not (offers == planned_offers == real.offers_issued):
        problems.append(
            f"offers: {offers:,} stored, {real.offers_issued:,} issued, {planned_offers:,} planned"
        )
    if dry.action_counts != real.action_counts:
        problems.append(f"dry run planned {dry.action_counts}, real run took {real.action_counts}")
    if again.actions or again.offers_issued:
        problems.append(f"the rerun changed something: {again.action_counts}")
    o = t.offers
    duplicates = await _scalar(
        db,
        sa.select(sa.func.count()).select_from(
            sa.select(o.c.member_id)
            .where(o.c.program_id == PROGRAM)
            .group_by(o.c.member_id, o.c.rule_id, o.c.period_key)
            .having(sa.func.count() > 1)
            .subquery()
        ),
    )
    if duplicates:
        problems.append(f"{duplicates:,} (member, rule, period) with more than one offer")
    coded = o.c.code.like("BDAY-%") | o.c.code.like("BACK-%")
    codes = sa.select(sa.func.count(), sa.func.count(sa.distinct(o.c.code))).where(
        o.c.program_id == PROGRAM, coded
    )
    async with db.engine.connect() as conn:
        total, distinct = (await conn.execute(codes)).one()
    if total != distinct:
        problems.append(f"{total - distinct:,} offer codes used twice")
    events = await _scalar(
        db, sa.select(sa.func.count()).where(t.offer_events.c.program_id == PROGRAM)
    )
    if events != offers:
        problems.append(f"{events:,} offer events for {offers:,} offers")
    # The 5% cut of ListTopCustomers: ceil(members with spend * 5%), ties with the last in.
    async with db.unit_of_work() as uow:
        with_spend = await uow.segments.members_with_value(PROGRAM, "spend", "12m")
        top = {
            m
            for m, _ in await uow.segments.top(
                PROGRAM, "spend", "12m", (with_spend * 5 + 99) // 100
            )
        }
    f = t.member_flags
    async with db.engine.connect() as conn:
        flagged = {
            r.member_id
            for r in await conn.execute(
                sa.select(f.c.member_id).where(
                    f.c.program_id == PROGRAM, f.c.flag == "top_customer"
                )
            )
        }
    if flagged != top:
        problems.append(
            f"top_customer flags: {len(flagged):,}, the 5% cut: {len(top):,} "
            f"({len(flagged ^ top):,} differ)"
        )
    print(
        f"checked: {offers:,} offers ({planned_offers:,} planned), {len(flagged):,} top_customer "
        f"flags = the 5% cut of {with_spend:,} members with spend ({len(top):,} with ties), "
        f"no duplicate (member, rule, period), {distinct:,} unique codes"
    )
    return problems


async def main(members: int, database_url: str, page_size: int) -> int:
    settings = load_settings(database_url=database_url, auth_required=False, rules_dir="rules")
    app = build_app(settings, clock=lambda: NOW)
    db, rules = app.db, app.rules.rules
    try:
        print(
            f"database: {db.url.render_as_string(hide_password=True)}; rules: "
            f"{', '.join(r.rule_id for r in rules)}; page size {page_size:,}"
        )
        started = time.monotonic()
        await upgrade(db)
        await populate(db, members)
        built = time.monotonic() - started
        started = time.monotonic()
        async with db.unit_of_work() as uow:
            scored = await refresh_segments(uow, PROGRAM, NOW)
            await uow.commit()
        print(
            f"set-up (not timed): {members:,} members built in {built:.1f}s, "
            f"{scored:,} scored in {time.monotonic() - started:.1f}s"
        )
        dry, seconds = await timed(db, rules, True, page_size)
        print(_line("dry run", dry, seconds), flush=True)
        untouched = await written(db)
        real, seconds = await timed(db, rules, False, page_size)
        print(_line("real run", real, seconds), flush=True)
        after_real = await written(db)
        again, seconds = await timed(db, rules, False, page_size)
        print(_line("rerun", again, seconds), flush=True)
        problems = await verify(db, dry, real, again)
        if untouched != (0, 0, 0):
            problems.append(f"the dry run wrote (offers, flags, events) {untouched}")
        if await written(db) != after_real:
            problems.append(f"the rerun wrote: {after_real} -> {await written(db)}")
        for problem in problems:
            print(f"FAILED: {problem}", file=sys.stderr)
        return 1 if problems else 0
    finally:
        await app.close()


def _admin_dsn() -> str:
    url = make_url(os.environ.get("LOYALTY_BENCH_DATABASE_URL") or DEFAULT_ADMIN_URL)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(_admin_dsn(), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_database(backend: str) -> AsyncIterator[str]:
    """The SQLAlchemy URL of a new, empty database, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="loyalty-bench-rules-") as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'rules.db'}"
        return
    name = f"loyalty_bench_rules_{secrets.token_hex(6)}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(_admin_dsn()).set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def bench(backend: str, members: int, page_size: int) -> int:
    async with fresh_database(backend) as url:
        return await main(members, url, page_size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--page-size", type=int, default=MEMBER_BATCH)
    args = parser.parse_args()
    sys.exit(asyncio.run(bench(args.backend, args.members, args.page_size)))
