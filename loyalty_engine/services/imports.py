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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from loyalty_engine.domain.earning import LineItem, compute_award
from loyalty_engine.domain.errors import DomainError
from loyalty_engine.domain.members import Member, validate_profile
from loyalty_engine.domain.program import Program
from loyalty_engine.services.points import (
    UNCATEGORIZED,
    check_purchase,
    lock_member,
    purchase_lines,
    settle,
)
from loyalty_engine.storage.unit_of_work import UnitOfWork

MAX_REPORTED_ERRORS = 1000
MAX_EXTERNAL_ID = 200


class ImportRow(NamedTuple):
    """One historical purchase, with its 1-based position in the input.

    A tuple, not a dataclass: a file of ten million rows makes ten million of these.
    It has the fields `validate_purchase` reads, so it is validated as it is.
    """

    row: int
    member_external_id: str
    order_id: str
    purchase_time: datetime
    total_minor: int
    currency_code: str
    store_id: str = ""
    lines: tuple[LineItem, ...] = ()
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


def refresh_statistics_before(batch_number: int) -> bool:
    """Whether the `batch_number`th batch (from 1) of an import should analyze first.

    Before batches 2, 3, 5, 9, 17, ...: each time the import may have doubled the tables.
    """
    return batch_number > 1 and (batch_number - 1) & (batch_number - 2) == 0


async def import_batch(
    uow: UnitOfWork,
    program: Program,
    rows: Sequence[ImportRow],
    now: datetime,
    *,
    batch_number: int = 1,
) -> ImportReport:
    """Store the `batch_number`th batch (from 1) of an import; the caller commits.

    Some batches first refresh the planner's statistics (see `refresh_statistics_before`).
    """
    report = ImportReport()
    if refresh_statistics_before(batch_number):
        await uow.imports.analyze()
    valid: list[ImportRow] = []
    seen_orders: set[str] = set()
    for item in rows:
        try:
            if not 0 < len(item.member_external_id) <= MAX_EXTERNAL_ID:
                raise DomainError(
                    "INVALID_FIELD",
                    f"member_external_id: is required (1-{MAX_EXTERNAL_ID} characters)",
                )
            check_purchase(item, program, now, historical=True)
        except DomainError as error:
            report.add_error(item.row, error.reason, error.message)
            continue
        if item.order_id in seen_orders:
            report.duplicates += 1
            continue
        seen_orders.add(item.order_id)
        valid.append(item)
    if not valid:
        return report

    first_seen: dict[str, datetime] = {}
    for item in valid:
        known = first_seen.get(item.member_external_id)
        if known is None or item.purchase_time < known:
            first_seen[item.member_external_id] = item.purchase_time
    members = await _members_for(uow, program, first_seen, now)
    claimed = await uow.imports.claim_orders(
        program.program_id, [(item.order_id, members[item.member_external_id]) for item in valid]
    )
    program_id, currency = program.program_id, program.currency_code
    purchases: list[tuple] = []
    purchase_lines_rows: list[tuple] = []
    stats: dict[str, list] = {}
    to_award: dict[str, list[tuple[str, datetime, int]]] = defaultdict(list)
    categories: set[tuple[str, str]] = set()
    for item in valid:
        if item.order_id not in claimed:
            report.duplicates += 1
            continue
        member_id = members[item.member_external_id]
        when = item.purchase_time
        if item.lines or item.award_points:
            lines = purchase_lines(item)
            award = compute_award(program.earning, lines, when) if item.award_points else None
            points = award.total if award else 0
            line_points = award.line_points if award else (0,) * len(lines)
            for index, (line, line_pts) in enumerate(zip(lines, line_points, strict=True)):
                purchase_lines_rows.append((
                    program_id, member_id, item.order_id, index, line.sku, line.category,
                    line.quantity, line.unit_price_minor, line_pts, 0,
                ))  # fmt: skip
                if item.lines:
                    categories.add((member_id, line.category))
            purchases.append((
                program_id, member_id, item.order_id, when, item.store_id, currency,
                item.total_minor, award.eligible_amount_minor if award else 0, points,
                award.order_level_points if award else 0,
                [
                    {"rule": c.rule_id, "label": c.label, "points": c.points}
                    for c in (award.components if award else ())
                ],
                0, 0, None, now,
            ))  # fmt: skip
            if points > 0:
                to_award[member_id].append((item.order_id, when, points))
        else:
            # A sale without lines and without points: one line of its total, earning 0.
            purchase_lines_rows.append((
                program_id, member_id, item.order_id, 0, "", UNCATEGORIZED, 1,
                item.total_minor, 0, 0,
            ))  # fmt: skip
            purchases.append((
                program_id, member_id, item.order_id, when, item.store_id, currency,
                item.total_minor, 0, 0, 0, [], 0, 0, None, now,
            ))  # fmt: skip
        stat = stats.get(member_id)
        if stat is None:
            stats[member_id] = [when, when, 1, item.total_minor]
        else:
            if when < stat[0]:
                stat[0] = when
            if when > stat[1]:
                stat[1] = when
            stat[2] += 1
            stat[3] += item.total_minor
        report.imported += 1
    await uow.imports.add_purchases(purchases, purchase_lines_rows)
    await uow.imports.add_statistics(program_id, stats)
    await uow.imports.add_categories(program_id, categories)
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
    # A few statements for the whole batch, not three per member.
    known.update(await uow.imports.enroll(new))
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
