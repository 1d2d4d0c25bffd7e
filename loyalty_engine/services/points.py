"""The points ledger: purchases, returns, adjustments, balances, history and maintenance.

Every write follows one shape: lock the member's account, let time do its work
(`settle`: release pending points, expire lots, review the tier), apply the
operation through the pure domain aggregate, then persist what it produced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from loyalty_engine.domain.calendar import add_days, add_months, latest_start
from loyalty_engine.domain.earning import AwardComponent, LineItem, compute_award, cumulative_share
from loyalty_engine.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ViolationCollector,
)
from loyalty_engine.domain.ledger import EntryKind, ExpiryMode
from loyalty_engine.domain.members import MemberState
from loyalty_engine.domain.money import MAX_AMOUNT_MINOR, validate_currency
from loyalty_engine.domain.program import Program
from loyalty_engine.domain.rewards import RedemptionState
from loyalty_engine.domain.tiers import TierChange, TierProgress
from loyalty_engine.services.members import get_member, member_not_found
from loyalty_engine.services.programs import load_program
from loyalty_engine.storage.repositories import (
    LockedAccount,
    NewPurchase,
    StoredEntry,
    StoredTierChange,
)
from loyalty_engine.storage.unit_of_work import UnitOfWork

# How far a till's clock may run ahead of ours before a sale counts as "in the future".
CLOCK_SKEW = timedelta(minutes=5)
MAX_LINE_ITEMS = 1000
MAX_QUANTITY = 1_000_000
MAX_TEXT = 200
UNCATEGORIZED = "uncategorized"


@dataclass(frozen=True)
class Balance:
    """A member's balance as GetBalance and every write report it."""

    program_id: str
    member_id: str
    currency_code: str
    available: int
    pending: int
    reserved: int
    lifetime_earned: int
    redeemed: int
    expired: int
    next_expiry_points: int
    next_expiry_time: datetime | None
    tier_id: str | None
    progress: TierProgress | None


@dataclass(frozen=True)
class RecordPurchase:
    """A sale reported by a point of sale."""

    program_id: str
    member_id: str
    order_id: str
    purchase_time: datetime
    store_id: str
    currency_code: str
    total_minor: int
    lines: tuple[LineItem, ...] = ()


@dataclass(frozen=True)
class PurchaseResult:
    """What RecordPurchase answers."""

    points_awarded: int
    breakdown: tuple[AwardComponent, ...]
    pending: bool
    balance: Balance
    tier_before: str | None
    tier_after: str | None
    offers_issued: tuple[Any, ...] = ()  # loyalty_engine.domain.offers.Offer


# Runs the rules for a member after a purchase, in its transaction and under its lock on
# the member's account; returns the offers issued.
AfterPurchase = Callable[[UnitOfWork, LockedAccount, datetime], Awaitable[Sequence[Any]]]


@dataclass(frozen=True)
class RecordReturn:
    """A return against an order; no lines means everything not yet returned."""

    program_id: str
    member_id: str
    order_id: str
    return_id: str
    return_time: datetime
    lines: tuple[tuple[int, int], ...] = ()  # (line index, quantity)


@dataclass(frozen=True)
class ReturnResult:
    """What RecordReturn answers."""

    points_reversed: int
    shortfall: int
    refund_minor: int
    currency_code: str
    balance: Balance


@dataclass(frozen=True)
class AdjustPoints:
    """A manual credit or debit."""

    program_id: str
    member_id: str
    points: int
    reason: str
    actor: str
    note: str = ""


@dataclass(frozen=True)
class MaintenanceReport:
    """What a maintenance pass over a program did."""

    members_changed: int = 0
    points_expired: int = 0
    points_released: int = 0
    tier_changes: int = 0


# --- the write path -----------------------------------------------------------------------


async def lock_member(uow: UnitOfWork, program: Program, member_id: str) -> LockedAccount:
    locked = await uow.accounts.lock(program.program_id, member_id)
    if locked is None:
        raise member_not_found(program.program_id, member_id)
    return locked


async def _record_tier_change(
    uow: UnitOfWork, locked: LockedAccount, change: TierChange, when: datetime
) -> None:
    if change.changed:
        await uow.accounts.add_tier_change(locked, change.before, change.after, change.reason, when)
    locked.tier = change.state


async def settle(uow: UnitOfWork, program: Program, locked: LockedAccount, now: datetime) -> None:
    """What time alone does: holds run out, pending release, expiry, the tier review."""
    await _expire_holds(uow, locked, now)
    locked.account.settle(now, program.expiry)
    review = locked.tier.review_time
    if review is not None and review <= now and program.tier_policy.tiers:
        value = await _qualifying_value(uow, program, locked.member_id, now)
        await _record_tier_change(
            uow, locked, program.tier_policy.review(locked.tier, value, now), now
        )


async def _expire_holds(uow: UnitOfWork, locked: LockedAccount, now: datetime) -> None:
    """Record checkout holds that ran out as EXPIRED; only holds in force stay reserved.

    Correctness needs no job: a hold stops counting the instant it expires (stock counts
    only holds in force, and so does this), the state change is mere bookkeeping.
    """
    if locked.account.reserved <= 0:
        return
    holds = await uow.rewards.member_holds(locked.program_id, locked.member_id)
    for hold in holds:
        if not hold.holds_at(now):
            hold.move_to(RedemptionState.EXPIRED, hold.expire_time or now)
            await uow.rewards.save_state_change(locked.program_id, locked.member_id, hold)
    locked.account.reserved = sum(h.points for h in holds if h.holds_at(now))


async def _qualifying_value(uow: UnitOfWork, program: Program, member_id: str, at: datetime) -> int:
    policy = program.tier_policy
    start = add_months(at, -policy.window_months)
    return await uow.accounts.qualifying_value(
        program.program_id, member_id, policy.metric, start, at
    )


class PurchaseFields(Protocol):
    """What validation reads of a sale: a RecordPurchase, or an imported row."""

    @property
    def order_id(self) -> str: ...
    @property
    def purchase_time(self) -> datetime: ...
    @property
    def store_id(self) -> str: ...
    @property
    def currency_code(self) -> str: ...
    @property
    def total_minor(self) -> int: ...
    @property
    def lines(self) -> tuple[LineItem, ...]: ...


def validate_purchase(
    cmd: PurchaseFields, program: Program, now: datetime, *, historical: bool = False
) -> tuple[LineItem, ...]:
    """The purchase's lines (one "uncategorized" line when none were sent), if it is valid.

    `historical` (bulk imports of past sales) lifts the late-sale window.
    """
    check_purchase(cmd, program, now, historical=historical)
    return purchase_lines(cmd)


def purchase_lines(cmd: PurchaseFields) -> tuple[LineItem, ...]:
    """The lines a sale earns on: its own, or one "uncategorized" line of its total."""
    if cmd.lines:
        return cmd.lines
    return (LineItem(sku="", category=UNCATEGORIZED, quantity=1, unit_price_minor=cmd.total_minor),)


def check_purchase(
    cmd: PurchaseFields, program: Program, now: datetime, *, historical: bool = False
) -> None:
    """Raise the first problem of a sale (field errors together), if it has one."""
    if not plainly_valid(cmd, program, now, historical=historical):
        raise_problems(cmd, program, now, historical=historical)


def plainly_valid(
    cmd: PurchaseFields, program: Program, now: datetime, *, historical: bool = False
) -> bool:
    """A sale without lines that passes every check, tested in one expression.

    Bulk imports validate millions of rows; this spares the common row the collector and
    the messages. When it says no, `raise_problems` finds and explains the problem (a test
    checks that it finds none whenever this says yes).
    """
    return (
        not cmd.lines
        and 0 < len(cmd.order_id) <= MAX_TEXT
        and len(cmd.store_id) <= MAX_TEXT
        and 0 <= cmd.total_minor <= MAX_AMOUNT_MINOR
        and cmd.currency_code == program.currency_code
        and cmd.purchase_time <= now + CLOCK_SKEW
        and (
            historical
            or cmd.purchase_time >= now - timedelta(days=program.late_purchase_window_days)
        )
        and cmd.order_id.isprintable()
        and cmd.store_id.isprintable()
    )


def raise_problems(
    cmd: PurchaseFields, program: Program, now: datetime, *, historical: bool = False
) -> None:
    """Every check of a sale: raise the first problem found (field errors together)."""
    errors = ViolationCollector()
    if not cmd.order_id or len(cmd.order_id) > MAX_TEXT or not cmd.order_id.isprintable():
        errors.add("purchase.order_id", f"is required: 1-{MAX_TEXT} printable characters")
    if len(cmd.store_id) > MAX_TEXT or not cmd.store_id.isprintable():
        errors.add("purchase.store_id", f"must be at most {MAX_TEXT} printable characters")
    if not 0 <= cmd.total_minor <= MAX_AMOUNT_MINOR:
        errors.add("purchase.total.amount_minor", f"must be between 0 and {MAX_AMOUNT_MINOR}")
    if len(cmd.lines) > MAX_LINE_ITEMS:
        errors.add("purchase.line_items", f"must have at most {MAX_LINE_ITEMS} items")
    for i, line in enumerate(cmd.lines[:MAX_LINE_ITEMS]):
        path = f"purchase.line_items[{i}]"
        if not 1 <= line.quantity <= MAX_QUANTITY:
            errors.add(f"{path}.quantity", f"must be between 1 and {MAX_QUANTITY}")
        if not 0 <= line.unit_price_minor <= MAX_AMOUNT_MINOR:
            errors.add(f"{path}.unit_price_minor", f"must be between 0 and {MAX_AMOUNT_MINOR}")
        if not line.category or len(line.category) > MAX_TEXT or not line.category.isprintable():
            errors.add(f"{path}.category", f"is required: 1-{MAX_TEXT} printable characters")
        if len(line.sku) > MAX_TEXT or not line.sku.isprintable():
            errors.add(f"{path}.sku", f"must be at most {MAX_TEXT} printable characters")
    errors.raise_if_any()
    validate_currency(cmd.currency_code, "purchase.total.currency_code")
    if cmd.currency_code != program.currency_code:
        raise InvalidArgument(
            reason="CURRENCY_MISMATCH",
            message=f"purchase.total.currency_code: the program records {program.currency_code}",
            metadata={"field": "purchase.total.currency_code", "expected": program.currency_code},
            violations=[
                FieldViolation("purchase.total.currency_code", f"must be {program.currency_code}")
            ],
        )
    if cmd.lines and sum(line.amount_minor for line in cmd.lines) != cmd.total_minor:
        raise InvalidArgument(
            reason="LINE_ITEMS_MISMATCH",
            message="purchase.line_items: quantity x unit price must add up to the total",
            metadata={"field": "purchase.line_items"},
            violations=[
                FieldViolation(
                    "purchase.line_items", "quantity x unit price must add up to the total"
                )
            ],
        )
    if cmd.purchase_time > now + CLOCK_SKEW:
        raise OutOfRange(
            "PURCHASE_IN_FUTURE",
            "purchase.purchase_time is in the future",
            {"field": "purchase.purchase_time"},
        )
    if not historical and cmd.purchase_time < now - timedelta(
        days=program.late_purchase_window_days
    ):
        raise OutOfRange(
            "PURCHASE_TOO_LATE",
            f"purchase.purchase_time is older than the program's "
            f"{program.late_purchase_window_days}-day window for late sales",
            {"field": "purchase.purchase_time"},
        )


async def _tier_at(uow: UnitOfWork, locked: LockedAccount, when: datetime) -> str | None:
    """The tier the member held at `when` (late sales earn at the tier of their time)."""
    if locked.tier_change_seq == 0:  # no tier history: the tier has always been this one
        return locked.tier.tier_id
    held = await uow.accounts.tier_at(locked.program_id, locked.member_id, when)
    return locked.tier.tier_id if held is False else held  # type: ignore[return-value]


async def record_purchase(
    uow: UnitOfWork, cmd: RecordPurchase, now: datetime, after: AfterPurchase | None = None
) -> PurchaseResult:
    """Record a sale and award its points, exactly once per order id; then run `after`."""
    program = await load_program(uow, cmd.program_id)
    lines = validate_purchase(cmd, program, now)
    locked = await lock_member(uow, program, cmd.member_id)
    if locked.member_state is MemberState.ERASED:
        raise FailedPrecondition("MEMBER_ERASED", "the member's personal data was erased")
    await settle(uow, program, locked, now)
    tier_before = locked.tier.tier_id
    tier_then = await _tier_at(uow, locked, cmd.purchase_time)
    policy = program.tier_policy
    tier = next((t for t in policy.tiers if t.tier_id == tier_then), None)
    award = compute_award(
        program.earning,
        lines,
        cmd.purchase_time,
        tier_multiplier_percent=tier.multiplier_percent if tier else 100,
        tier_id=tier.tier_id if tier else None,
        tier_name=tier.name if tier else "",
    )
    if award.total > 0:
        locked.account.earn(
            award.total,
            order_id=cmd.order_id,
            earned_time=cmd.purchase_time,
            now=now,
            hold_days=program.pending_days,
            expiry=program.expiry,
        )
    # The order id is claimed with the purchase: a duplicate fails here, and the rollback
    # takes back whatever came before (nothing of it is written yet but the request id).
    stored = await uow.accounts.add_purchase(
        program.program_id,
        cmd.member_id,
        NewPurchase(
            order_id=cmd.order_id,
            purchase_time=cmd.purchase_time,
            store_id=cmd.store_id,
            currency_code=cmd.currency_code,
            total_minor=cmd.total_minor,
            eligible_minor=award.eligible_amount_minor,
            points_awarded=award.total,
            order_level_points=award.order_level_points,
            breakdown=[
                {"rule": c.rule_id, "label": c.label, "points": c.points} for c in award.components
            ],
            tier_id=tier_then,
            lines=[
                (line.sku, line.category, line.quantity, line.unit_price_minor, points)
                for line, points in zip(lines, award.line_points, strict=True)
            ],
        ),
        now,
    )
    if not stored:
        raise AlreadyExists(
            "ORDER_ALREADY_RECORDED",
            f"order {cmd.order_id!r} was recorded already",
            {"order_id": cmd.order_id},
        )
    locked.stats.add_purchase(cmd.purchase_time, cmd.total_minor)
    await uow.accounts.add_categories(
        program.program_id, cmd.member_id, {line.category for line in cmd.lines}
    )
    value_now: int | None = None
    if policy.tiers:
        at = max(cmd.purchase_time, now)
        value = await _qualifying_value(uow, program, cmd.member_id, at)
        change = policy.after_purchase(locked.tier, value, cmd.purchase_time)
        await _record_tier_change(uow, locked, change, now)
        if at == now:  # the same window the balance's tier progress reads
            value_now = value
    await uow.accounts.save(locked, now)
    offers = tuple(await after(uow, locked, now)) if after else ()
    return PurchaseResult(
        offers_issued=offers,
        points_awarded=award.total,
        breakdown=award.components,
        pending=award.total > 0
        and program.pending_days > 0
        and add_days(cmd.purchase_time, program.pending_days) > now,
        balance=await balance_view(uow, program, locked, now, qualifying_value=value_now),
        tier_before=tier_before,
        tier_after=locked.tier.tier_id,
    )


def _return_already_recorded(return_id: str) -> AlreadyExists:
    return AlreadyExists("RETURN_ALREADY_RECORDED", f"return {return_id!r} was recorded already")


async def record_return(uow: UnitOfWork, cmd: RecordReturn, now: datetime) -> ReturnResult:
    """Reverse the points of returned goods, proportionally; nothing is edited."""
    program = await load_program(uow, cmd.program_id)
    if not cmd.return_id or len(cmd.return_id) > MAX_TEXT or not cmd.return_id.isprintable():
        raise InvalidArgument.for_field(
            "return_id", f"is required: 1-{MAX_TEXT} printable characters"
        )
    if cmd.return_time > now + CLOCK_SKEW:
        raise OutOfRange(
            "RETURN_IN_FUTURE", "return_time is in the future", {"field": "return_time"}
        )
    locked = await lock_member(uow, program, cmd.member_id)
    # Before the order's state is judged: a repeated return would otherwise be reported as
    # exceeding the purchase (or as nothing left to return) instead of as a duplicate.
    if await uow.accounts.return_recorded(program.program_id, cmd.member_id, cmd.return_id):
        raise _return_already_recorded(cmd.return_id)
    purchase = await uow.accounts.get_purchase(program.program_id, cmd.member_id, cmd.order_id)
    if purchase is None:
        raise NotFound(
            "ORDER_NOT_FOUND",
            f"order {cmd.order_id!r} not found for this member",
            {"order_id": cmd.order_id},
        )
    if cmd.return_time < purchase.purchase_time:
        raise InvalidArgument.for_field("return_time", "is before the purchase")

    returning: dict[int, int] = {}
    if cmd.lines:
        for i, (line_index, quantity) in enumerate(cmd.lines):
            if not 0 <= line_index < len(purchase.lines):
                raise NotFound(
                    "LINE_NOT_FOUND",
                    f"lines[{i}].line_index: the order has no line {line_index}",
                    {"field": f"lines[{i}].line_index"},
                )
            if quantity <= 0:
                raise InvalidArgument.for_field(f"lines[{i}].quantity", "must be at least 1")
            returning[line_index] = returning.get(line_index, 0) + quantity
    else:
        returning = {
            line.line_index: line.quantity - line.returned_quantity
            for line in purchase.lines
            if line.quantity > line.returned_quantity
        }
        if not returning:
            raise FailedPrecondition(
                "NOTHING_TO_RETURN", f"order {cmd.order_id!r} was fully returned already"
            )
    points = 0
    refund = 0
    for line_index, quantity in returning.items():
        line = purchase.lines[line_index]
        before, after = line.returned_quantity, line.returned_quantity + quantity
        if after > line.quantity:
            raise FailedPrecondition(
                "RETURN_EXCEEDS_PURCHASE",
                f"line {line_index}: {after} units returned in all, {line.quantity} bought",
                {"line_index": str(line_index)},
            )
        points += cumulative_share(line.points, after, line.quantity) - cumulative_share(
            line.points, before, line.quantity
        )
        refund += quantity * line.unit_price_minor
    if purchase.total_minor > 0:
        points += cumulative_share(
            purchase.order_level_points, purchase.returned_minor + refund, purchase.total_minor
        ) - cumulative_share(
            purchase.order_level_points, purchase.returned_minor, purchase.total_minor
        )

    await settle(uow, program, locked, now)
    reversed_points = shortfall = 0
    if points > 0:
        result = locked.account.reverse_order(
            cmd.order_id, points, now=now, policy=program.negative_balance_policy, reason="RETURN"
        )
        reversed_points, shortfall = result.reversed_points, result.shortfall
    recorded = await uow.accounts.record_return(
        program.program_id,
        cmd.member_id,
        purchase,
        returning,
        cmd.return_id,
        cmd.return_time,
        refund,
        points,
        shortfall,
        now,
    )
    if not recorded:
        raise _return_already_recorded(cmd.return_id)
    fully_returned = all(
        line.returned_quantity + returning.get(line.line_index, 0) >= line.quantity
        for line in purchase.lines
    )
    locked.stats.add_return(refund, fully_returned)
    await uow.accounts.save(locked, now)
    return ReturnResult(
        points_reversed=reversed_points,
        shortfall=shortfall,
        refund_minor=refund,
        currency_code=purchase.currency_code,
        balance=await balance_view(uow, program, locked, now),
    )


ADJUSTMENT_REASONS = ("GOODWILL", "SERVICE_RECOVERY", "CORRECTION")


async def adjust_points(uow: UnitOfWork, cmd: AdjustPoints, now: datetime) -> Balance:
    """A manual credit or debit with a reason code and the actor; history is never edited."""
    errors = ViolationCollector()
    if cmd.reason not in ADJUSTMENT_REASONS:
        errors.add("reason", f"must be one of {', '.join(ADJUSTMENT_REASONS)}")
    if not cmd.actor.strip() or len(cmd.actor) > MAX_TEXT or not cmd.actor.isprintable():
        errors.add("actor", f"is required: 1-{MAX_TEXT} printable characters")
    if len(cmd.note) > 150 or not cmd.note.isprintable():
        errors.add("note", "must be at most 150 printable characters")
    if cmd.points == 0:
        errors.add("points", "must not be 0")
    errors.raise_if_any()
    program = await load_program(uow, cmd.program_id)
    locked = await lock_member(uow, program, cmd.member_id)
    await settle(uow, program, locked, now)
    reason = f"{cmd.reason}: {cmd.note}" if cmd.note else cmd.reason
    locked.account.adjust(
        cmd.points, now=now, reason=reason, actor=cmd.actor, expiry=program.expiry
    )
    await uow.accounts.save(locked, now)
    return await balance_view(uow, program, locked, now)


# --- reads --------------------------------------------------------------------------------


async def balance_view(
    uow: UnitOfWork,
    program: Program,
    locked: LockedAccount,
    now: datetime,
    *,
    qualifying_value: int | None = None,
) -> Balance:
    """The member's balance, next expiry and tier progress as of `now`.

    `qualifying_value` is the tier metric over the window ending at `now`, when the caller
    has just read it (a purchase), so it is not read twice.
    """
    account = locked.account
    next_points, next_time = 0, None
    if program.expiry.mode is ExpiryMode.AFTER_EARNING:
        dated = [
            lot
            for lot in account.lots
            if not lot.pending and lot.remaining > 0 and lot.expires_time
        ]
        if dated:
            next_time = min(lot.expires_time for lot in dated if lot.expires_time)
            next_points = sum(lot.remaining for lot in dated if lot.expires_time == next_time)
    elif (
        program.expiry.mode is ExpiryMode.AFTER_INACTIVITY
        and account.last_activity_time is not None
        and account.available > 0
    ):
        next_time = add_months(account.last_activity_time, program.expiry.months)
        next_points = account.available
    progress = None
    if program.tier_policy.tiers:
        value = qualifying_value
        if value is None:
            value = await _qualifying_value(uow, program, locked.member_id, now)
        progress = program.tier_policy.progress(locked.tier.tier_id, value)
    return Balance(
        program_id=program.program_id,
        member_id=locked.member_id,
        currency_code=program.currency_code,
        available=account.available,
        pending=account.pending,
        reserved=account.reserved,
        lifetime_earned=account.lifetime_earned,
        redeemed=account.redeemed,
        expired=account.expired,
        next_expiry_points=next_points,
        next_expiry_time=next_time,
        tier_id=locked.tier.tier_id,
        progress=progress,
    )


async def peek_balance(
    uow: UnitOfWork, program_id: str, member_id: str, now: datetime
) -> Balance | None:
    """The balance from a plain read, or None when time has work to do (then: get_balance).

    Most balance reads find nothing due, and this path takes no lock, writes nothing, and
    reads with one statement (so it needs no transaction: see `in_transaction`'s `autocommit`).
    """
    program = await load_program(uow, program_id)
    policy = program.tier_policy
    found = await uow.accounts.load(
        program_id,
        member_id,
        for_update=False,
        tier_window=(policy.metric, add_months(now, -policy.window_months), now)
        if policy.tiers
        else None,
    )
    if found is None:
        await get_member(uow, program_id, member_id)  # the right NOT_FOUND
        raise member_not_found(program_id, member_id)
    account, value = found
    review = account.tier.review_time
    if (
        account.account.reserved > 0  # a hold may have run out: let the write path record it
        or account.account.has_due(now, program.expiry)
        or (review is not None and review <= now and bool(policy.tiers))
    ):
        return None
    return await balance_view(uow, program, account, now, qualifying_value=value)


async def get_balance(uow: UnitOfWork, program_id: str, member_id: str, now: datetime) -> Balance:
    """The balance as of now: pending points that matured and expiries are applied first."""
    program = await load_program(uow, program_id)
    locked = await lock_member(uow, program, member_id)
    tier_before, reserved_before = locked.tier, locked.account.reserved
    await settle(uow, program, locked, now)
    if (
        locked.account.new_entries
        or locked.tier != tier_before
        or locked.account.reserved != reserved_before
    ):
        await uow.accounts.save(locked, now)
    return await balance_view(uow, program, locked, now)


async def list_ledger_entries(
    uow: UnitOfWork,
    program_id: str,
    member_id: str,
    *,
    before_seq: int | None,
    limit: int,
    kinds: Sequence[EntryKind] = (),
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> list[StoredEntry]:
    """A page of the member's ledger, newest first."""
    await get_member(uow, program_id, member_id)
    return await uow.accounts.entries(
        program_id,
        member_id,
        before_seq=before_seq,
        limit=limit,
        kinds=kinds,
        start_time=start_time,
        end_time=end_time,
    )


async def list_tier_changes(
    uow: UnitOfWork, program_id: str, member_id: str, before_seq: int | None, limit: int
) -> list[tuple[int, StoredTierChange]]:
    """A page of the member's tier history, newest first."""
    await get_member(uow, program_id, member_id)
    return await uow.accounts.tier_changes(program_id, member_id, before_seq, limit)


async def settle_member(
    uow: UnitOfWork, program: Program, member_id: str, now: datetime
) -> MaintenanceReport:
    """Run what time does for one member (one short transaction per member in a pass)."""
    locked = await lock_member(uow, program, member_id)
    tier_before, reserved_before = locked.tier, locked.account.reserved
    await settle(uow, program, locked, now)
    entries = locked.account.new_entries
    if not entries and locked.tier == tier_before and locked.account.reserved == reserved_before:
        return MaintenanceReport()
    await uow.accounts.save(locked, now)  # also a review that kept the tier: its date moved
    changed = bool(entries) or locked.tier.tier_id != tier_before.tier_id
    return MaintenanceReport(
        members_changed=int(changed),
        points_expired=-sum(e.points for e in entries if e.kind is EntryKind.EXPIRE),
        points_released=sum(e.points for e in entries if e.kind is EntryKind.RELEASE),
        tier_changes=int(locked.tier.tier_id != tier_before.tier_id),
    )


def inactivity_cutoff(program: Program, now: datetime) -> datetime | None:
    """Members last active at or before this have expired points (AFTER_INACTIVITY only)."""
    if program.expiry.mode is ExpiryMode.AFTER_INACTIVITY:
        # Exactly the members whose deadline (last activity + months) settle finds passed.
        return latest_start(now, program.expiry.months)
    return None
