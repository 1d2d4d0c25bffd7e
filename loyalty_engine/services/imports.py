"""Bulk import of historical purchases: idempotent per order id, bad rows reported by line.

A batch is one transaction: its rows are validated one by one (a bad row is reported with
its reason and skipped), members unknown by external id are enrolled, order ids are claimed
in one statement (an order stored before is counted as a duplicate, not an error), and the
purchases go in set-based (COPY on PostgreSQL). Statistics are folded in per member. With
`award_points`, each member's points are then earned through the ledger as live purchases
would be, at their purchase times (so expiry and tiers apply as they would have).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from loyalty_engine.domain.earning import compute_award
from loyalty_engine.domain.errors import DomainError
from loyalty_engine.domain.members import Member, validate_profile
from loyalty_engine.domain.program import Program
from loyalty_engine.services.points import RecordPurchase, lock_member, settle, validate_purchase
from loyalty_engine.storage.unit_of_work import UnitOfWork

MAX_REPORTED_ERRORS = 1000


@dataclass(frozen=True)
class ImportRow:
    """One historical purchase, with its 1-based position in the input."""

    row: int
    member_external_id: str
    purchase: RecordPurchase
    award_points: bool = False


@dataclass
class ImportReport:
    """What an import stored, skipped as already stored, and refused (by row)."""

    imported: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    error_count: int = 0

    def add_error(self, row: int, reason: str, message: str) -> None:
        """Record a refused row (the first MAX_REPORTED_ERRORS in detail)."""
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append((row, reason, message))

    def merge(self, other: ImportReport) -> None:
        """Add another batch's counts."""
        self.imported += other.imported
        self.duplicates += other.duplicates
        for row, reason, message in other.errors:
            self.add_error(row, reason, message)
        self.error_count += other.error_count - len(other.errors)


async def import_batch(
    uow: UnitOfWork, program: Program, rows: list[ImportRow], now: datetime
) -> ImportReport:
    """Store a batch of historical purchases; the caller commits."""
    report = ImportReport()
    valid: list[tuple[ImportRow, tuple]] = []
    seen_orders: set[str] = set()
    for item in rows:
        try:
            if not item.member_external_id or len(item.member_external_id) > 200:
                raise DomainError(
                    "INVALID_FIELD", "member_external_id: is required (1-200 characters)"
                )
            lines = validate_purchase(item.purchase, program, now, historical=True)
        except DomainError as error:
            report.add_error(item.row, error.reason, error.message)
            continue
        if item.purchase.order_id in seen_orders:
            report.duplicates += 1
            continue
        seen_orders.add(item.purchase.order_id)
        valid.append((item, lines))
    if not valid:
        return report

    first_seen: dict[str, datetime] = {}
    for item, _ in valid:
        when = item.purchase.purchase_time
        first_seen[item.member_external_id] = min(
            first_seen.get(item.member_external_id, when), when
        )
    members = await _members_for(
        uow,
        program,
        first_seen,
        now,
    )
    claimed = await uow.imports.claim_orders(
        program.program_id,
        [(item.purchase.order_id, members[item.member_external_id]) for item, _ in valid],
    )
    purchases, purchase_lines = [], []
    stats: dict[str, list] = {}
    to_award: dict[str, list[tuple[str, datetime, int]]] = defaultdict(list)
    categories: dict[str, set[str]] = defaultdict(set)
    for item, lines in valid:
        p = item.purchase
        if p.order_id not in claimed:
            report.duplicates += 1
            continue
        member_id = members[item.member_external_id]
        award = (
            compute_award(program.earning, lines, p.purchase_time) if item.award_points else None
        )
        points = award.total if award else 0
        breakdown = [
            {"rule": c.rule_id, "label": c.label, "points": c.points}
            for c in (award.components if award else ())
        ]
        purchases.append({
            "program_id": program.program_id, "member_id": member_id, "order_id": p.order_id,
            "purchase_time": p.purchase_time, "store_id": p.store_id,
            "currency_code": p.currency_code, "total_minor": p.total_minor,
            "eligible_minor": award.eligible_amount_minor if award else 0,
            "points_awarded": points,
            "order_level_points": award.order_level_points if award else 0,
            "breakdown": breakdown, "returned_minor": 0, "points_reversed": 0, "tier_id": None,
            "create_time": now,
        })  # fmt: skip
        line_points = award.line_points if award else (0,) * len(lines)
        for index, (line, line_pts) in enumerate(zip(lines, line_points, strict=True)):
            purchase_lines.append({
                "program_id": program.program_id, "member_id": member_id, "order_id": p.order_id,
                "line_index": index, "sku": line.sku, "category": line.category,
                "quantity": line.quantity, "unit_price_minor": line.unit_price_minor,
                "points": line_pts, "returned_quantity": 0,
            })  # fmt: skip
            if p.lines:
                categories[member_id].add(line.category)
        first, last, count, spend = stats.get(member_id, [p.purchase_time, p.purchase_time, 0, 0])
        stats[member_id] = [
            min(first, p.purchase_time),
            max(last, p.purchase_time),
            count + 1,
            spend + p.total_minor,
        ]
        if points > 0:
            to_award[member_id].append((p.order_id, p.purchase_time, points))
        report.imported += 1
    await uow.imports.add_purchases(purchases, purchase_lines)
    await uow.imports.add_statistics(program.program_id, {m: tuple(v) for m, v in stats.items()})  # type: ignore[misc]
    for member_id, cats in categories.items():
        await uow.accounts.add_categories(program.program_id, member_id, cats)
    for member_id, earnings in to_award.items():
        await _award(uow, program, member_id, earnings, now)
    return report


async def _members_for(
    uow: UnitOfWork, program: Program, first_seen: dict[str, datetime], now: datetime
) -> dict[str, str]:
    """Member ids by external id, enrolling the members a program brings along."""
    known = await uow.imports.external_ids(program.program_id, list(first_seen))
    new = []
    for external_id, joined in first_seen.items():
        if external_id in known:
            continue
        member = Member(
            program_id=program.program_id,
            member_id=uuid.uuid4().hex[:20],
            external_id=external_id,
            join_time=min(joined, now),
            create_time=now,
            update_time=now,
        )
        validate_profile(member, now.date())
        new.append(member)
        known[external_id] = member.member_id
    # Three statements for the whole batch, not three per member.
    await uow.imports.enroll(new)
    return known


async def _award(
    uow: UnitOfWork,
    program: Program,
    member_id: str,
    earnings: list[tuple[str, datetime, int]],
    now: datetime,
) -> None:
    """Earn imported purchases' points through the ledger, oldest first, and settle."""
    locked = await lock_member(uow, program, member_id)
    await settle(uow, program, locked, now)
    for order_id, when, points in sorted(earnings, key=lambda e: e[1]):
        locked.account.earn(
            points,
            order_id=order_id,
            earned_time=when,
            now=now,
            hold_days=program.pending_days,
            expiry=program.expiry,
        )
    await settle(uow, program, locked, now)
    await uow.accounts.save(locked, now)
