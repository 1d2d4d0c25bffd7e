"""Repositories: SQL for one transaction, written with SQLAlchemy Core.

They speak in domain objects and plain values; the ORM is not used, so nothing is
lazily loaded behind the caller's back and the hot paths stay a few statements long.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_engine.domain.earning import EarningPolicy, Rounding
from loyalty_engine.domain.errors import AlreadyExists
from loyalty_engine.domain.ledger import (
    EntryKind,
    ExpiryMode,
    ExpiryPolicy,
    LedgerEntry,
    NegativeBalancePolicy,
    PointsAccount,
    PointsLot,
)
from loyalty_engine.domain.members import IdentifierKind, Member, MemberState
from loyalty_engine.domain.program import EarningRule, EarningRuleKind, Program
from loyalty_engine.domain.tiers import DowngradeMode, QualifyingMetric, Tier, TierPolicy, TierState
from loyalty_engine.storage import schema as t


class _Repository:
    def __init__(self, conn: AsyncConnection, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect

    def insert_ignoring_conflicts(self, table: sa.Table) -> Any:
        """INSERT ... ON CONFLICT DO NOTHING, in the dialect's own words (built once)."""
        return _insert_ignoring_conflicts(self.dialect, table)


@functools.cache
def _insert_ignoring_conflicts(dialect: str, table: sa.Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _where_key(table: sa.Table, *names: str) -> sa.ColumnElement[bool]:
    """`name = :k_name AND ...`: a key condition built once, bound per call."""
    return sa.and_(*(table.c[name] == sa.bindparam(f"k_{name}") for name in names))


_ACCOUNT_COUNTERS = (
    "available",
    "pending",
    "reserved",
    "lifetime_earned",
    "redeemed",
    "expired",
    "reversed",
    "last_activity_time",
    "entry_seq",
    "tier_id",
    "tier_review_time",
    "tier_change_seq",
    "first_purchase_time",
    "last_purchase_time",
    "order_count",
    "total_spend_minor",
)
# Statements of the hot write path, built once: building a statement per call cost more
# CPU than running it (SQLAlchemy coerces every value and comparison it is given).
_save_account = (
    t.member_accounts.update()
    .where(_where_key(t.member_accounts, "program_id", "member_id"))
    .values({name: sa.bindparam(name) for name in _ACCOUNT_COUNTERS})
)
_complete_request = (
    t.idempotency_keys.update()
    .where(_where_key(t.idempotency_keys, "program_id", "member_id", "request_id"))
    .values(response=sa.bindparam("response"))
)
_insert_purchase = t.purchases.insert()
# `save` on PostgreSQL in one statement: $1/$2 the member, then arrays of the new entries
# ($3-$15), of the new lots ($16-$23) and of the changed lots ($24-$26), then the counters.
_SAVE_ACCOUNT_PG = """
WITH new_entries AS (
    INSERT INTO ledger_entries (program_id, member_id, entry_seq, kind, points, pending_delta,
        balance_after, pending_after, occur_time, create_time, order_id, lot_id, reason, actor,
        shortfall)
    SELECT $1, $2, e.* FROM unnest($3::bigint[], $4::varchar[], $5::bigint[], $6::bigint[],
        $7::bigint[], $8::bigint[], $9::timestamptz[], $10::timestamptz[], $11::varchar[],
        $12::varchar[], $13::varchar[], $14::varchar[], $15::bigint[]) AS e
), new_lots AS (
    INSERT INTO points_lots (program_id, member_id, lot_id, order_id, earned_time,
        available_time, expires_time, points, remaining, pending)
    SELECT $1, $2, l.* FROM unnest($16::varchar[], $17::varchar[], $18::timestamptz[],
        $19::timestamptz[], $20::timestamptz[], $21::bigint[], $22::bigint[], $23::boolean[])
        AS l
), changed_lots AS (
    UPDATE points_lots SET remaining = c.remaining, pending = c.pending
    FROM unnest($24::varchar[], $25::bigint[], $26::boolean[]) AS c(lot_id, remaining, pending)
    WHERE points_lots.program_id = $1 AND points_lots.member_id = $2
        AND points_lots.lot_id = c.lot_id
)
UPDATE member_accounts SET available = $27, pending = $28, reserved = $29,
    lifetime_earned = $30, redeemed = $31, expired = $32, reversed = $33,
    last_activity_time = $34, entry_seq = $35, tier_id = $36, tier_review_time = $37,
    tier_change_seq = $38, first_purchase_time = $39, last_purchase_time = $40,
    order_count = $41, total_spend_minor = $42
WHERE program_id = $1 AND member_id = $2
"""
# A purchase and its lines on PostgreSQL in one statement, which first claims the order id
# for the program (nothing is stored, and no row is counted, if it was claimed before):
# $1-$15 the purchase, then the lines' arrays ($16-$21).
_INSERT_PURCHASE_PG = """
WITH claim AS (
    INSERT INTO order_claims (program_id, order_id, member_id) VALUES ($1, $3, $2)
    ON CONFLICT DO NOTHING RETURNING 1
), lines AS (
    INSERT INTO purchase_lines (program_id, member_id, order_id, line_index, sku, category,
        quantity, unit_price_minor, points, returned_quantity)
    SELECT $1, $2, $3, l.*, 0 FROM unnest($16::integer[], $17::varchar[], $18::varchar[],
        $19::bigint[], $20::bigint[], $21::bigint[]) AS l
    WHERE EXISTS (SELECT FROM claim)
)
INSERT INTO purchases (program_id, member_id, order_id, purchase_time, store_id,
    currency_code, total_minor, eligible_minor, points_awarded, order_level_points, breakdown,
    returned_minor, points_reversed, tier_id, create_time)
SELECT $1, $2, $3, $4::timestamptz, $5::varchar, $6::varchar, $7::bigint, $8::bigint,
    $9::bigint, $10::bigint, $11::json, $12::bigint, $13::bigint, $14::varchar,
    $15::timestamptz
WHERE EXISTS (SELECT FROM claim)
"""


# --- programs, tiers, earning rules -------------------------------------------------------


def _program_from_row(row: Any) -> Program:
    return Program(
        program_id=row.program_id,
        display_name=row.display_name,
        currency_code=row.currency_code,
        earning=EarningPolicy(
            base_points=row.base_points,
            per_amount_minor=row.per_amount_minor,
            rounding=Rounding(row.rounding),
            min_order_minor=row.min_order_minor,
            excluded_categories=frozenset(row.excluded_categories),
        ),
        tier_policy=TierPolicy(
            metric=QualifyingMetric(row.tier_metric),
            window_months=row.tier_window_months,
            grace_days=row.tier_grace_days,
            downgrade_mode=DowngradeMode(row.tier_downgrade_mode),
        ),
        expiry=ExpiryPolicy(mode=ExpiryMode(row.expiry_mode), months=row.expiry_months),
        pending_days=row.pending_days,
        negative_balance_policy=NegativeBalancePolicy(row.negative_balance_policy),
        late_purchase_window_days=row.late_purchase_window_days,
        point_value_minor_per_100_points=row.point_value_minor_per_100_points,
        redemption_hold_seconds=row.redemption_hold_seconds,
        redemption_cancel_window_days=row.redemption_cancel_window_days,
        min_points_per_redemption=row.min_points_per_redemption,
        max_redemption_share_percent=row.max_redemption_share_percent,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _program_values(p: Program) -> dict[str, Any]:
    return {
        "program_id": p.program_id,
        "display_name": p.display_name,
        "currency_code": p.currency_code,
        "base_points": p.earning.base_points,
        "per_amount_minor": p.earning.per_amount_minor,
        "rounding": p.earning.rounding.value,
        "min_order_minor": p.earning.min_order_minor,
        "excluded_categories": sorted(p.earning.excluded_categories),
        "tier_metric": p.tier_policy.metric.value,
        "tier_window_months": p.tier_policy.window_months,
        "tier_grace_days": p.tier_policy.grace_days,
        "tier_downgrade_mode": p.tier_policy.downgrade_mode.value,
        "expiry_mode": p.expiry.mode.value,
        "expiry_months": p.expiry.months,
        "pending_days": p.pending_days,
        "negative_balance_policy": p.negative_balance_policy.value,
        "late_purchase_window_days": p.late_purchase_window_days,
        "point_value_minor_per_100_points": p.point_value_minor_per_100_points,
        "redemption_hold_seconds": p.redemption_hold_seconds,
        "redemption_cancel_window_days": p.redemption_cancel_window_days,
        "min_points_per_redemption": p.min_points_per_redemption,
        "max_redemption_share_percent": p.max_redemption_share_percent,
        "create_time": p.create_time,
        "update_time": p.update_time,
    }


def _tier_from_row(row: Any) -> Tier:
    return Tier(
        tier_id=row.tier_id,
        name=row.display_name,
        threshold=row.threshold,
        multiplier_percent=row.multiplier_percent,
        perks=row.perks,
    )


def _rule_from_row(row: Any) -> EarningRule:
    return EarningRule(
        rule_id=row.rule_id,
        display_name=row.display_name,
        kind=EarningRuleKind(row.kind),
        match=row.match,
        multiplier_percent=row.multiplier_percent,
        bonus_points_per_unit=row.bonus_points_per_unit,
        bonus_points=row.bonus_points,
        start_time=row.start_time,
        end_time=row.end_time,
        categories=tuple(row.categories),
    )


def _rule_values(rule: EarningRule) -> dict[str, Any]:
    return {
        "rule_id": rule.rule_id,
        "display_name": rule.display_name,
        "kind": rule.kind.value,
        "match": rule.match,
        "multiplier_percent": rule.multiplier_percent,
        "bonus_points_per_unit": rule.bonus_points_per_unit,
        "bonus_points": rule.bonus_points,
        "start_time": rule.start_time,
        "end_time": rule.end_time,
        "categories": list(rule.categories),
    }


class ProgramRepository(_Repository):
    """Programs and their tiers and earning rules."""

    async def add(self, program: Program) -> bool:
        """Insert a program; False if the id is taken."""
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.programs).values(**_program_values(program))
        )
        return bool(result.rowcount)

    async def get(self, program_id: str) -> Program | None:
        """The program's own settings (without tiers and rules)."""
        row = (
            await self.conn.execute(
                sa.select(t.programs).where(t.programs.c.program_id == program_id)
            )
        ).first()
        return _program_from_row(row) if row else None

    async def list_after(self, after_id: str, limit: int) -> list[Program]:
        """Programs by id, after `after_id`."""
        rows = await self.conn.execute(
            sa.select(t.programs)
            .where(t.programs.c.program_id > after_id)
            .order_by(t.programs.c.program_id)
            .limit(limit)
        )
        return [_program_from_row(r) for r in rows]

    async def update(self, program: Program) -> None:
        """Overwrite a program's settings."""
        values = _program_values(program)
        values.pop("program_id")
        values.pop("create_time")
        await self.conn.execute(
            t.programs.update()
            .where(t.programs.c.program_id == program.program_id)
            .values(**values)
        )

    async def tiers(self, program_id: str) -> list[Tier]:
        """The program's tiers, ascending by threshold."""
        rows = await self.conn.execute(
            sa.select(t.tiers)
            .where(t.tiers.c.program_id == program_id)
            .order_by(t.tiers.c.threshold, t.tiers.c.tier_id)
        )
        return [_tier_from_row(r) for r in rows]

    async def add_tier(self, program_id: str, tier: Tier, now: datetime) -> bool:
        """Insert a tier; False if its id is taken."""
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.tiers).values(
                program_id=program_id,
                tier_id=tier.tier_id,
                display_name=tier.name,
                threshold=tier.threshold,
                multiplier_percent=tier.multiplier_percent,
                perks=tier.perks,
                create_time=now,
                update_time=now,
            )
        )
        return bool(result.rowcount)

    async def update_tier(self, program_id: str, tier: Tier, now: datetime) -> None:
        """Overwrite a tier."""
        await self.conn.execute(
            t.tiers.update()
            .where(t.tiers.c.program_id == program_id, t.tiers.c.tier_id == tier.tier_id)
            .values(
                display_name=tier.name,
                threshold=tier.threshold,
                multiplier_percent=tier.multiplier_percent,
                perks=tier.perks,
                update_time=now,
            )
        )

    async def delete_tier(self, program_id: str, tier_id: str) -> None:
        """Delete a tier."""
        await self.conn.execute(
            t.tiers.delete().where(t.tiers.c.program_id == program_id, t.tiers.c.tier_id == tier_id)
        )

    async def tier_in_use(self, program_id: str, tier_id: str) -> bool:
        """Whether any member holds the tier."""
        row = (
            await self.conn.execute(
                sa.select(t.member_accounts.c.member_id)
                .where(
                    t.member_accounts.c.program_id == program_id,
                    t.member_accounts.c.tier_id == tier_id,
                )
                .limit(1)
            )
        ).first()
        return row is not None

    async def earning_rules(self, program_id: str) -> list[EarningRule]:
        """The program's earning rules, by id."""
        rows = await self.conn.execute(
            sa.select(t.earning_rules)
            .where(t.earning_rules.c.program_id == program_id)
            .order_by(t.earning_rules.c.rule_id)
        )
        return [_rule_from_row(r) for r in rows]

    async def get_earning_rule(self, program_id: str, rule_id: str) -> EarningRule | None:
        """One earning rule."""
        row = (
            await self.conn.execute(
                sa.select(t.earning_rules).where(
                    t.earning_rules.c.program_id == program_id, t.earning_rules.c.rule_id == rule_id
                )
            )
        ).first()
        return _rule_from_row(row) if row else None

    async def add_earning_rule(self, program_id: str, rule: EarningRule, now: datetime) -> bool:
        """Insert an earning rule; False if its id is taken."""
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.earning_rules).values(
                program_id=program_id, create_time=now, update_time=now, **_rule_values(rule)
            )
        )
        return bool(result.rowcount)

    async def update_earning_rule(self, program_id: str, rule: EarningRule, now: datetime) -> None:
        """Overwrite an earning rule."""
        values = _rule_values(rule)
        values.pop("rule_id")
        await self.conn.execute(
            t.earning_rules.update()
            .where(
                t.earning_rules.c.program_id == program_id,
                t.earning_rules.c.rule_id == rule.rule_id,
            )
            .values(update_time=now, **values)
        )

    async def delete_earning_rule(self, program_id: str, rule_id: str) -> None:
        """Delete an earning rule."""
        await self.conn.execute(
            t.earning_rules.delete().where(
                t.earning_rules.c.program_id == program_id, t.earning_rules.c.rule_id == rule_id
            )
        )


# --- members ------------------------------------------------------------------------------


def _member_from_row(row: Any) -> Member:
    return Member(
        program_id=row.program_id,
        member_id=row.member_id,
        external_id=row.external_id,
        given_name=row.given_name,
        family_name=row.family_name,
        email=row.email,
        phone=row.phone,
        card_number=row.card_number,
        birth_date=row.birth_date,
        join_time=row.join_time,
        marketing_consent=row.marketing_consent,
        state=MemberState(row.state),
        tier_id=row.tier_id,
        create_time=row.create_time,
        update_time=row.update_time,
    )


_MEMBER_COLUMNS = (*t.members.c, t.member_accounts.c.tier_id)


def _member_select() -> sa.Select[Any]:
    return sa.select(*_MEMBER_COLUMNS).select_from(
        t.members.join(
            t.member_accounts,
            sa.and_(
                t.member_accounts.c.program_id == t.members.c.program_id,
                t.member_accounts.c.member_id == t.members.c.member_id,
            ),
        )
    )


@dataclass(frozen=True)
class MemberFilter:
    """Simple filters of ListMembers."""

    tier_id: str | None = None
    state: MemberState | None = None
    join_time_after: datetime | None = None


class MemberRepository(_Repository):
    """Members, their lookup keys, and their accounts' creation."""

    async def add(self, member: Member) -> bool:
        """Insert a member and an empty account; False if the member id is taken."""
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.members).values(
                program_id=member.program_id,
                member_id=member.member_id,
                external_id=member.external_id,
                given_name=member.given_name,
                family_name=member.family_name,
                email=member.email,
                phone=member.phone,
                card_number=member.card_number,
                birth_date=member.birth_date,
                join_time=member.join_time,
                marketing_consent=member.marketing_consent,
                state=member.state.value,
                create_time=member.create_time,
                update_time=member.update_time,
            )
        )
        if not result.rowcount:
            return False
        await self.conn.execute(
            t.member_accounts.insert().values(
                program_id=member.program_id,
                member_id=member.member_id,
                available=0,
                pending=0,
                reserved=0,
                lifetime_earned=0,
                redeemed=0,
                expired=0,
                reversed=0,
                entry_seq=0,
                tier_id=member.tier_id,
                tier_review_time=None,
                tier_change_seq=0,
            )
        )
        return True

    async def claim_identifier(
        self, program_id: str, kind: IdentifierKind, value: str, member_id: str
    ) -> None:
        """Make `value` this member's key of `kind`, or raise ALREADY_EXISTS if it is another's."""
        from loyalty_engine.domain.members import TAKEN_REASONS

        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.member_identifiers).values(
                program_id=program_id, kind=kind.value, value=value, member_id=member_id
            )
        )
        if result.rowcount:
            return
        owner = await self.find_by_identifier(program_id, kind, value)
        if owner != member_id:
            field = kind.value.lower()
            raise AlreadyExists(
                TAKEN_REASONS[kind],
                f"member.{field} is already used by another member of the program",
                {"field": f"member.{field}"},
            )

    async def release_identifier(self, program_id: str, kind: IdentifierKind, value: str) -> None:
        """Free a key so another member may take it."""
        await self.conn.execute(
            t.member_identifiers.delete().where(
                t.member_identifiers.c.program_id == program_id,
                t.member_identifiers.c.kind == kind.value,
                t.member_identifiers.c.value == value,
            )
        )

    async def find_by_identifier(
        self, program_id: str, kind: IdentifierKind, value: str
    ) -> str | None:
        """The member id holding a key, if any."""
        row = (
            await self.conn.execute(
                sa.select(t.member_identifiers.c.member_id).where(
                    t.member_identifiers.c.program_id == program_id,
                    t.member_identifiers.c.kind == kind.value,
                    t.member_identifiers.c.value == value,
                )
            )
        ).first()
        return row.member_id if row else None

    async def get(self, program_id: str, member_id: str) -> Member | None:
        """A member with its current tier."""
        row = (
            await self.conn.execute(
                _member_select().where(
                    t.members.c.program_id == program_id, t.members.c.member_id == member_id
                )
            )
        ).first()
        return _member_from_row(row) if row else None

    async def list_after(
        self, program_id: str, after_id: str, limit: int, filters: MemberFilter
    ) -> list[Member]:
        """Members by id after `after_id`, filtered."""
        stmt = _member_select().where(
            t.members.c.program_id == program_id, t.members.c.member_id > after_id
        )
        if filters.tier_id is not None:
            stmt = stmt.where(t.member_accounts.c.tier_id == filters.tier_id)
        if filters.state is not None:
            stmt = stmt.where(t.members.c.state == filters.state.value)
        if filters.join_time_after is not None:
            stmt = stmt.where(t.members.c.join_time >= filters.join_time_after)
        rows = await self.conn.execute(stmt.order_by(t.members.c.member_id).limit(limit))
        return [_member_from_row(r) for r in rows]

    async def update(self, member: Member, erase_time: datetime | None = None) -> None:
        """Overwrite a member's profile."""
        values: dict[str, Any] = {
            "external_id": member.external_id,
            "given_name": member.given_name,
            "family_name": member.family_name,
            "email": member.email,
            "phone": member.phone,
            "card_number": member.card_number,
            "birth_date": member.birth_date,
            "join_time": member.join_time,
            "marketing_consent": member.marketing_consent,
            "state": member.state.value,
            "update_time": member.update_time,
        }
        if erase_time is not None:
            values["erase_time"] = erase_time
        await self.conn.execute(
            t.members.update()
            .where(
                t.members.c.program_id == member.program_id,
                t.members.c.member_id == member.member_id,
            )
            .values(**values)
        )


# --- accounts, ledger, purchases ----------------------------------------------------------


@dataclass(frozen=True)
class MemberProfile:
    """What the rules read of a member's profile, loaded with the account."""

    given_name: str | None
    has_email: bool
    birth_date: date | None
    join_time: datetime | None
    create_time: datetime | None
    marketing_consent: bool


@dataclass
class LockedAccount:
    """A member's account loaded under a row lock, ready for domain operations."""

    program_id: str
    member_id: str
    account: PointsAccount
    entry_seq: int
    tier: TierState
    tier_change_seq: int
    member_state: MemberState
    stats: BuyingStats = field(default_factory=lambda: BuyingStats())
    profile: MemberProfile | None = None  # loaded with the account (None if built by hand)


@dataclass
class BuyingStats:
    """A member's running buying statistics (net of returns)."""

    first_purchase_time: datetime | None = None
    last_purchase_time: datetime | None = None
    order_count: int = 0
    total_spend_minor: int = 0

    def add_purchase(self, when: datetime, total_minor: int) -> None:
        """Count a purchase."""
        self.order_count += 1
        self.total_spend_minor += total_minor
        if self.first_purchase_time is None or when < self.first_purchase_time:
            self.first_purchase_time = when
        if self.last_purchase_time is None or when > self.last_purchase_time:
            self.last_purchase_time = when

    def add_return(self, refund_minor: int, order_fully_returned: bool) -> None:
        """Take a return off the spend, and the order off the count once all of it came back."""
        self.total_spend_minor -= refund_minor
        if order_fully_returned:
            self.order_count -= 1


@dataclass(frozen=True)
class StoredEntry:
    """A ledger entry as stored, with its sequence number and write time."""

    entry_seq: int
    entry: LedgerEntry
    create_time: datetime


@dataclass(frozen=True)
class PurchaseLine:
    """A stored purchase line with the points it earned and how much of it came back."""

    line_index: int
    sku: str
    category: str
    quantity: int
    unit_price_minor: int
    points: int
    returned_quantity: int


@dataclass(frozen=True)
class StoredPurchase:
    """A recorded purchase and its lines."""

    order_id: str
    member_id: str
    purchase_time: datetime
    currency_code: str
    total_minor: int
    points_awarded: int
    order_level_points: int
    returned_minor: int
    points_reversed: int
    lines: tuple[PurchaseLine, ...]


@dataclass(frozen=True)
class NewPurchase:
    """What RecordPurchase stores about an order."""

    order_id: str
    purchase_time: datetime
    store_id: str
    currency_code: str
    total_minor: int
    eligible_minor: int
    points_awarded: int
    order_level_points: int
    breakdown: list[dict[str, Any]]
    tier_id: str | None
    lines: Sequence[tuple[str, str, int, int, int]]  # sku, category, quantity, unit price, points


@dataclass(frozen=True)
class StoredTierChange:
    """One row of a member's tier history."""

    tier_before: str | None
    tier_after: str | None
    reason: str
    change_time: datetime


def _lot_from_row(row: Any) -> PointsLot:
    """A lot from a row of the account statement or `_open_lots` (columns `lot_*`)."""
    return PointsLot(
        lot_id=row.lot_id,
        order_id=row.lot_order_id,
        earned_time=row.lot_earned_time,
        available_time=row.lot_available_time,
        expires_time=row.lot_expires_time,
        points=row.lot_points,
        remaining=row.lot_remaining,
        pending=row.lot_pending,
    )


def _entry_from_row(row: Any) -> StoredEntry:
    return StoredEntry(
        entry_seq=row.entry_seq,
        create_time=row.create_time,
        entry=LedgerEntry(
            kind=EntryKind(row.kind),
            points=row.points,
            pending_delta=row.pending_delta,
            balance_after=row.balance_after,
            pending_after=row.pending_after,
            occurred_time=row.occur_time,
            order_id=row.order_id,
            lot_id=row.lot_id,
            reason=row.reason,
            actor=row.actor,
            shortfall=row.shortfall,
        ),
    )


def _qualifying_measure(metric: QualifyingMetric) -> sa.ColumnElement[Any]:
    p = t.purchases
    if metric is QualifyingMetric.SPEND:
        return p.c.total_minor - p.c.returned_minor
    return p.c.points_awarded - p.c.points_reversed


_PROFILE_FIELDS = (
    "given_name",
    "email",
    "birth_date",
    "join_time",
    "create_time",
    "marketing_consent",
)
_LOT_FIELDS = (
    "order_id",
    "earned_time",
    "available_time",
    "expires_time",
    "points",
    "remaining",
    "pending",
)


def _qualifying_sum(
    metric: QualifyingMetric, program_id: sa.ColumnElement[Any], member_id: sa.ColumnElement[Any]
) -> sa.Select[Any]:
    """The tier metric of a member's purchases in (:start, :end]."""
    p = t.purchases
    return sa.select(sa.func.coalesce(sa.func.sum(_qualifying_measure(metric)), 0)).where(
        p.c.program_id == program_id,
        p.c.member_id == member_id,
        p.c.purchase_time > sa.bindparam("start", type_=t.Ts),
        p.c.purchase_time <= sa.bindparam("end", type_=t.Ts),
    )


@functools.cache
def _qualifying_statement(metric: QualifyingMetric) -> sa.Select[Any]:
    return _qualifying_sum(metric, sa.bindparam("program_id"), sa.bindparam("member_id"))


@functools.cache
def _account_statement(
    dialect: str, for_update: bool, metric: QualifyingMetric | None
) -> sa.Select[Any]:
    """The account with its member's state and, for a metric, the tier metric over
    (start, end]: built once, bound per call.

    A read also joins the open lots (a row each, or one row of NULLs): one statement is one
    snapshot. A write locks the account row alone, and `_open_lots` reads the lots in a
    statement of its own: under READ COMMITTED a statement that waited for the lock would
    see the locked row as it is now but the joined lots as they were before it waited.
    """
    a, m, lots = t.member_accounts, t.members, t.points_lots
    columns: list[Any] = [
        a,
        m.c.state,
        *(m.c[name].label(f"member_{name}") for name in _PROFILE_FIELDS),
    ]
    if metric is not None:
        columns.append(
            _qualifying_sum(metric, a.c.program_id, a.c.member_id)
            .scalar_subquery()
            .label("qualifying_value")
        )
    tables: Any = a.join(
        m, sa.and_(m.c.program_id == a.c.program_id, m.c.member_id == a.c.member_id)
    )
    if not for_update:
        columns.append(lots.c.lot_id)
        columns += [lots.c[name].label(f"lot_{name}") for name in _LOT_FIELDS]
        tables = tables.outerjoin(
            lots,
            sa.and_(
                lots.c.program_id == a.c.program_id,
                lots.c.member_id == a.c.member_id,
                lots.c.remaining > 0,
            ),
        )
    stmt = (
        sa.select(*columns)
        .select_from(tables)
        .where(
            a.c.program_id == sa.bindparam("program_id"),
            a.c.member_id == sa.bindparam("member_id"),
        )
    )
    # SQLite needs no row lock: BEGIN IMMEDIATE already serializes writers.
    if for_update and dialect == "postgresql":
        stmt = stmt.with_for_update(of=a)
    return stmt


_open_lots = sa.select(
    t.points_lots.c.lot_id,
    *(t.points_lots.c[name].label(f"lot_{name}") for name in _LOT_FIELDS),
).where(
    t.points_lots.c.program_id == sa.bindparam("program_id"),
    t.points_lots.c.member_id == sa.bindparam("member_id"),
    t.points_lots.c.remaining > 0,
)


class AccountRepository(_Repository):
    """Accounts, ledger entries, lots, purchases, returns and tier history."""

    async def lock(
        self, program_id: str, member_id: str, *, for_update: bool = True
    ) -> LockedAccount | None:
        """Load (and lock) a member's account with its open lots; None if there is no member."""
        found = await self.load(program_id, member_id, for_update=for_update)
        return None if found is None else found[0]

    async def load(
        self,
        program_id: str,
        member_id: str,
        *,
        for_update: bool = True,
        tier_window: tuple[QualifyingMetric, datetime, datetime] | None = None,
    ) -> tuple[LockedAccount, int | None] | None:
        """The account with its open lots and, given a tier window, the tier metric over it.

        Without `for_update` this is one statement (one round trip, and one snapshot: a
        read needs no transaction around it); None if there is no member.
        """
        metric, start, end = tier_window or (None, None, None)
        rows = (
            await self.conn.execute(
                _account_statement(self.dialect, for_update, metric),
                {"program_id": program_id, "member_id": member_id, "start": start, "end": end},
            )
        ).all()
        if not rows:
            return None
        row = rows[0]
        if for_update:
            lot_rows: Sequence[Any] = (
                await self.conn.execute(
                    _open_lots, {"program_id": program_id, "member_id": member_id}
                )
            ).all()
        else:
            lot_rows = [r for r in rows if r.lot_id is not None]
        account = PointsAccount(
            available=row.available,
            pending=row.pending,
            reserved=row.reserved,
            lifetime_earned=row.lifetime_earned,
            redeemed=row.redeemed,
            expired=row.expired,
            reversed=row.reversed,
            last_activity_time=row.last_activity_time,
            lots=[_lot_from_row(r) for r in lot_rows],
        )
        locked = LockedAccount(
            program_id=program_id,
            member_id=member_id,
            account=account,
            entry_seq=row.entry_seq,
            tier=TierState(row.tier_id, row.tier_review_time),
            tier_change_seq=row.tier_change_seq,
            member_state=MemberState(row.state),
            stats=BuyingStats(
                row.first_purchase_time,
                row.last_purchase_time,
                row.order_count,
                row.total_spend_minor,
            ),
            profile=MemberProfile(
                given_name=row.member_given_name,
                has_email=bool(row.member_email),
                birth_date=row.member_birth_date,
                join_time=row.member_join_time,
                create_time=row.member_create_time,
                marketing_consent=row.member_marketing_consent,
            ),
        )
        return locked, None if metric is None else int(row.qualifying_value)

    async def save(self, locked: LockedAccount, now: datetime) -> list[StoredEntry]:
        """Persist what the domain operations did: new entries, lots and counters."""
        account = locked.account
        stored: list[StoredEntry] = []
        rows = []
        for entry in account.new_entries:
            locked.entry_seq += 1
            stored.append(StoredEntry(locked.entry_seq, entry, now))
            rows.append(
                {
                    "program_id": locked.program_id,
                    "member_id": locked.member_id,
                    "entry_seq": locked.entry_seq,
                    "kind": entry.kind.value,
                    "points": entry.points,
                    "pending_delta": entry.pending_delta,
                    "balance_after": entry.balance_after,
                    "pending_after": entry.pending_after,
                    "occur_time": entry.occurred_time,
                    "create_time": now,
                    "order_id": entry.order_id,
                    "lot_id": entry.lot_id,
                    "reason": entry.reason,
                    "actor": entry.actor,
                    "shortfall": entry.shortfall,
                }
            )
        if self.dialect == "postgresql":
            await self._save_in_one_statement(locked, rows)
            return stored
        if rows:
            await self.conn.execute(t.ledger_entries.insert(), rows)
        new_lots = account.new_lots()
        if new_lots:
            await self.conn.execute(
                t.points_lots.insert(),
                [
                    {
                        "program_id": locked.program_id,
                        "member_id": locked.member_id,
                        "lot_id": lot.lot_id,
                        "order_id": lot.order_id,
                        "earned_time": lot.earned_time,
                        "available_time": lot.available_time,
                        "expires_time": lot.expires_time,
                        "points": lot.points,
                        "remaining": lot.remaining,
                        "pending": lot.pending,
                    }
                    for lot in new_lots
                ],
            )
        changed = account.changed_lots()
        if changed:
            lots = t.points_lots
            await self.conn.execute(
                lots.update()
                .where(
                    lots.c.program_id == sa.bindparam("b_program_id"),
                    lots.c.member_id == sa.bindparam("b_member_id"),
                    lots.c.lot_id == sa.bindparam("b_lot_id"),
                )
                .values(remaining=sa.bindparam("b_remaining"), pending=sa.bindparam("b_pending")),
                [
                    {
                        "b_program_id": locked.program_id,
                        "b_member_id": locked.member_id,
                        "b_lot_id": lot.lot_id,
                        "b_remaining": lot.remaining,
                        "b_pending": lot.pending,
                    }
                    for lot in changed
                ],
            )
        await self.conn.execute(
            _save_account,
            {
                "k_program_id": locked.program_id,
                "k_member_id": locked.member_id,
                "available": account.available,
                "pending": account.pending,
                "reserved": account.reserved,
                "lifetime_earned": account.lifetime_earned,
                "redeemed": account.redeemed,
                "expired": account.expired,
                "reversed": account.reversed,
                "last_activity_time": account.last_activity_time,
                "entry_seq": locked.entry_seq,
                "tier_id": locked.tier.tier_id,
                "tier_review_time": locked.tier.review_time,
                "tier_change_seq": locked.tier_change_seq,
                "first_purchase_time": locked.stats.first_purchase_time,
                "last_purchase_time": locked.stats.last_purchase_time,
                "order_count": locked.stats.order_count,
                "total_spend_minor": locked.stats.total_spend_minor,
            },
        )
        return stored

    async def _save_in_one_statement(
        self, locked: LockedAccount, entries: list[dict[str, Any]]
    ) -> None:
        """`save` on PostgreSQL: entries, new lots, changed lots and counters in one round
        trip (data-modifying CTEs over arrays; one fixed text, so one prepared statement)."""
        account, stats = locked.account, locked.stats
        new_lots, changed = account.new_lots(), account.changed_lots()
        await self.conn.exec_driver_sql(
            _SAVE_ACCOUNT_PG,
            (
                locked.program_id,
                locked.member_id,
                *(
                    [e[name] for e in entries]
                    for name in (
                        "entry_seq",
                        "kind",
                        "points",
                        "pending_delta",
                        "balance_after",
                        "pending_after",
                        "occur_time",
                        "create_time",
                        "order_id",
                        "lot_id",
                        "reason",
                        "actor",
                        "shortfall",
                    )
                ),
                [lot.lot_id for lot in new_lots],
                [lot.order_id for lot in new_lots],
                [lot.earned_time for lot in new_lots],
                [lot.available_time for lot in new_lots],
                [lot.expires_time for lot in new_lots],
                [lot.points for lot in new_lots],
                [lot.remaining for lot in new_lots],
                [lot.pending for lot in new_lots],
                [lot.lot_id for lot in changed],
                [lot.remaining for lot in changed],
                [lot.pending for lot in changed],
                account.available,
                account.pending,
                account.reserved,
                account.lifetime_earned,
                account.redeemed,
                account.expired,
                account.reversed,
                account.last_activity_time,
                locked.entry_seq,
                locked.tier.tier_id,
                locked.tier.review_time,
                locked.tier_change_seq,
                stats.first_purchase_time,
                stats.last_purchase_time,
                stats.order_count,
                stats.total_spend_minor,
            ),
        )

    async def add_categories(self, program_id: str, member_id: str, categories: set[str]) -> None:
        """Remember the categories a member bought (for insights and rules)."""
        if categories:
            await self.conn.execute(
                self.insert_ignoring_conflicts(t.member_categories),
                [
                    {"program_id": program_id, "member_id": member_id, "category": c}
                    for c in sorted(categories)
                ],
            )

    async def add_tier_change(
        self,
        locked: LockedAccount,
        before: str | None,
        after: str | None,
        reason: str,
        when: datetime,
    ) -> None:
        """Append to the member's tier history (the account row is saved by `save`)."""
        locked.tier_change_seq += 1
        await self.conn.execute(
            t.tier_changes.insert().values(
                program_id=locked.program_id,
                member_id=locked.member_id,
                change_seq=locked.tier_change_seq,
                tier_before=before,
                tier_after=after,
                reason=reason,
                change_time=when,
            )
        )

    async def tier_changes(
        self, program_id: str, member_id: str, before_seq: int | None, limit: int
    ) -> list[tuple[int, StoredTierChange]]:
        """The member's tier history, newest first."""
        tc = t.tier_changes
        stmt = sa.select(tc).where(tc.c.program_id == program_id, tc.c.member_id == member_id)
        if before_seq is not None:
            stmt = stmt.where(tc.c.change_seq < before_seq)
        rows = await self.conn.execute(stmt.order_by(tc.c.change_seq.desc()).limit(limit))
        return [
            (r.change_seq, StoredTierChange(r.tier_before, r.tier_after, r.reason, r.change_time))
            for r in rows
        ]

    async def tier_at(self, program_id: str, member_id: str, when: datetime) -> str | bool | None:
        """The tier held at `when` per the history; False if it has not changed since."""
        tc = t.tier_changes
        later = (
            await self.conn.execute(
                sa.select(tc.c.tier_before)
                .where(
                    tc.c.program_id == program_id,
                    tc.c.member_id == member_id,
                    tc.c.change_time > when,
                )
                .order_by(tc.c.change_seq)
                .limit(1)
            )
        ).first()
        if later is None:
            return False
        return str(later.tier_before) if later.tier_before is not None else None

    async def add_purchase(
        self, program_id: str, member_id: str, p: NewPurchase, now: datetime
    ) -> bool:
        """Claim the order id for the program and store the purchase and its lines; False,
        and nothing stored, if the order id was recorded already."""
        if self.dialect == "postgresql":
            lines = p.lines
            claimed = await self.conn.exec_driver_sql(
                _INSERT_PURCHASE_PG,
                (
                    program_id,
                    member_id,
                    p.order_id,
                    p.purchase_time,
                    p.store_id,
                    p.currency_code,
                    p.total_minor,
                    p.eligible_minor,
                    p.points_awarded,
                    p.order_level_points,
                    json.dumps(p.breakdown),
                    0,
                    0,
                    p.tier_id,
                    now,
                    list(range(len(lines))),
                    *([line[n] for line in lines] for n in range(5)),
                ),
            )
            return bool(claimed.rowcount)
        claim = await self.conn.execute(
            self.insert_ignoring_conflicts(t.order_claims),
            {"program_id": program_id, "order_id": p.order_id, "member_id": member_id},
        )
        if not claim.rowcount:
            return False
        await self.conn.execute(
            _insert_purchase,
            {
                "program_id": program_id,
                "member_id": member_id,
                "order_id": p.order_id,
                "purchase_time": p.purchase_time,
                "store_id": p.store_id,
                "currency_code": p.currency_code,
                "total_minor": p.total_minor,
                "eligible_minor": p.eligible_minor,
                "points_awarded": p.points_awarded,
                "order_level_points": p.order_level_points,
                "breakdown": p.breakdown,
                "returned_minor": 0,
                "points_reversed": 0,
                "tier_id": p.tier_id,
                "create_time": now,
            },
        )
        if p.lines:
            await self.conn.execute(
                t.purchase_lines.insert(),
                [
                    {
                        "program_id": program_id,
                        "member_id": member_id,
                        "order_id": p.order_id,
                        "line_index": i,
                        "sku": sku,
                        "category": category,
                        "quantity": quantity,
                        "unit_price_minor": price,
                        "points": points,
                        "returned_quantity": 0,
                    }
                    for i, (sku, category, quantity, price, points) in enumerate(p.lines)
                ],
            )
        return True

    async def get_purchase(
        self, program_id: str, member_id: str, order_id: str
    ) -> StoredPurchase | None:
        """A purchase with its lines (the caller holds the account lock)."""
        p = t.purchases
        row = (
            await self.conn.execute(
                sa.select(p).where(
                    p.c.program_id == program_id,
                    p.c.member_id == member_id,
                    p.c.order_id == order_id,
                )
            )
        ).first()
        if row is None:
            return None
        pl = t.purchase_lines
        lines = await self.conn.execute(
            sa.select(pl)
            .where(
                pl.c.program_id == program_id,
                pl.c.member_id == member_id,
                pl.c.order_id == order_id,
            )
            .order_by(pl.c.line_index)
        )
        return StoredPurchase(
            order_id=row.order_id,
            member_id=row.member_id,
            purchase_time=row.purchase_time,
            currency_code=row.currency_code,
            total_minor=row.total_minor,
            points_awarded=row.points_awarded,
            order_level_points=row.order_level_points,
            returned_minor=row.returned_minor,
            points_reversed=row.points_reversed,
            lines=tuple(
                PurchaseLine(
                    line.line_index,
                    line.sku,
                    line.category,
                    line.quantity,
                    line.unit_price_minor,
                    line.points,
                    line.returned_quantity,
                )
                for line in lines
            ),
        )

    async def return_recorded(self, program_id: str, member_id: str, return_id: str) -> bool:
        """Whether the member already has a return with this id."""
        r = t.returns
        row = (
            await self.conn.execute(
                sa.select(r.c.return_id).where(
                    r.c.program_id == program_id,
                    r.c.member_id == member_id,
                    r.c.return_id == return_id,
                )
            )
        ).first()
        return row is not None

    async def record_return(
        self,
        program_id: str,
        member_id: str,
        purchase: StoredPurchase,
        returned_quantities: dict[int, int],
        return_id: str,
        return_time: datetime,
        refund_minor: int,
        points_reversed: int,
        shortfall: int,
        now: datetime,
    ) -> bool:
        """Store a return and what it changes on the purchase; False if the return id exists."""
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.returns).values(
                program_id=program_id,
                member_id=member_id,
                return_id=return_id,
                order_id=purchase.order_id,
                return_time=return_time,
                refund_minor=refund_minor,
                points_reversed=points_reversed,
                shortfall=shortfall,
                create_time=now,
            )
        )
        if not result.rowcount:
            return False
        p = t.purchases
        await self.conn.execute(
            p.update()
            .where(
                p.c.program_id == program_id,
                p.c.member_id == member_id,
                p.c.order_id == purchase.order_id,
            )
            .values(
                returned_minor=p.c.returned_minor + refund_minor,
                points_reversed=p.c.points_reversed + points_reversed,
            )
        )
        pl = t.purchase_lines
        for line_index, quantity in returned_quantities.items():
            await self.conn.execute(
                pl.update()
                .where(
                    pl.c.program_id == program_id,
                    pl.c.member_id == member_id,
                    pl.c.order_id == purchase.order_id,
                    pl.c.line_index == line_index,
                )
                .values(returned_quantity=pl.c.returned_quantity + quantity)
            )
        return True

    async def qualifying_value(
        self,
        program_id: str,
        member_id: str,
        metric: QualifyingMetric,
        start: datetime,
        end: datetime,
    ) -> int:
        """Net spend (minor units) or net points earned from purchases in (start, end]."""
        value = (
            await self.conn.execute(
                _qualifying_statement(metric),
                {"program_id": program_id, "member_id": member_id, "start": start, "end": end},
            )
        ).scalar_one()
        return int(value)

    async def entries(
        self,
        program_id: str,
        member_id: str,
        *,
        before_seq: int | None,
        limit: int,
        kinds: Sequence[EntryKind] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> list[StoredEntry]:
        """The member's ledger, newest first, filtered by kind and occurrence time."""
        le = t.ledger_entries
        stmt = sa.select(le).where(le.c.program_id == program_id, le.c.member_id == member_id)
        if before_seq is not None:
            stmt = stmt.where(le.c.entry_seq < before_seq)
        if kinds:
            stmt = stmt.where(le.c.kind.in_([k.value for k in kinds]))
        if start_time is not None:
            stmt = stmt.where(le.c.occur_time >= start_time)
        if end_time is not None:
            stmt = stmt.where(le.c.occur_time < end_time)
        rows = await self.conn.execute(stmt.order_by(le.c.entry_seq.desc()).limit(limit))
        return [_entry_from_row(r) for r in rows]

    async def members_needing_settlement(
        self,
        program_id: str,
        now: datetime,
        inactivity_cutoff: datetime | None,
        after_id: str,
        limit: int,
    ) -> list[str]:
        """Members with pending points due, lots or inactivity expiring, or a tier review due."""
        lots = t.points_lots
        a = t.member_accounts
        due_lots = sa.select(lots.c.member_id).where(
            lots.c.program_id == program_id,
            lots.c.remaining > 0,
            sa.or_(
                sa.and_(lots.c.pending.is_(True), lots.c.available_time <= now),
                sa.and_(lots.c.expires_time.is_not(None), lots.c.expires_time <= now),
            ),
        )
        conditions = [a.c.member_id.in_(due_lots), a.c.tier_review_time <= now]
        if inactivity_cutoff is not None:
            conditions.append(
                sa.and_(a.c.last_activity_time <= inactivity_cutoff, a.c.available > 0)
            )
        rows = await self.conn.execute(
            sa.select(a.c.member_id)
            .where(a.c.program_id == program_id, a.c.member_id > after_id, sa.or_(*conditions))
            .order_by(a.c.member_id)
            .limit(limit)
        )
        return [r.member_id for r in rows]

    async def ledger_sums(self, program_id: str, member_id: str) -> tuple[int, int]:
        """Sum of the available and pending deltas over all the member's entries."""
        le = t.ledger_entries
        row = (
            await self.conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(le.c.points), 0),
                    sa.func.coalesce(sa.func.sum(le.c.pending_delta), 0),
                ).where(le.c.program_id == program_id, le.c.member_id == member_id)
            )
        ).one()
        return int(row[0]), int(row[1])


# --- exactly once -------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRequest:
    """A request id already seen: what it was and the first response."""

    method: str
    fingerprint: str
    response: bytes | None


class IdempotencyRepository(_Repository):
    """Request ids and the first response to each, in the same transaction as their effects."""

    async def claim(
        self,
        program_id: str,
        member_id: str,
        request_id: str,
        method: str,
        fingerprint: str,
        now: datetime,
    ) -> StoredRequest | None:
        """Claim a request id; None if it is new, else what was stored for it.

        On PostgreSQL a concurrent claim of the same id waits here for the first
        transaction to end, then sees its committed response.
        """
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.idempotency_keys),
            {
                "program_id": program_id,
                "member_id": member_id,
                "request_id": request_id,
                "method": method,
                "fingerprint": fingerprint,
                "response": None,
                "create_time": now,
            },
        )
        if result.rowcount:
            return None
        stored = await self.get(program_id, member_id, request_id)
        assert stored is not None  # the conflicting row the insert met
        return stored

    async def get(self, program_id: str, member_id: str, request_id: str) -> StoredRequest | None:
        """What was stored for a request id, without claiming it; None if it is new."""
        k = t.idempotency_keys
        row = (
            await self.conn.execute(
                sa.select(k.c.method, k.c.fingerprint, k.c.response).where(
                    k.c.program_id == program_id,
                    k.c.member_id == member_id,
                    k.c.request_id == request_id,
                )
            )
        ).first()
        return StoredRequest(row.method, row.fingerprint, row.response) if row else None

    async def complete(
        self, program_id: str, member_id: str, request_id: str, response: bytes
    ) -> None:
        """Store the response for a claimed request id."""
        await self.conn.execute(
            _complete_request,
            {
                "k_program_id": program_id,
                "k_member_id": member_id,
                "k_request_id": request_id,
                "response": response,
            },
        )
