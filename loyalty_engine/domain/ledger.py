"""A member's points account as a pure aggregate: balances, lots and the entries that move them.

The storage layer loads an account (counters plus its open lots) under a row lock, calls
``settle(now, ...)`` and then one operation, and persists ``new_entries``, the lots in
``new_lot_ids``/``changed_lot_ids`` (see :meth:`PointsAccount.new_lots` and
:meth:`PointsAccount.changed_lots`) and the counters. Entries are never changed; a
correction is a new entry.

Model:

* ``available`` is spendable now; ``pending`` is earned but on hold (a return window);
  ``reserved`` is the part of ``available`` promised to unfinished redemptions.
* Every point that is not debt sits in a :class:`PointsLot`. Lots make FIFO spending and
  expiry exact: the remaining points of available lots add up to ``max(available, 0)`` and
  those of pending lots to ``pending``. Lots are spent oldest first (earned time, then lot
  id).
* Every change of ``available``/``pending`` is one :class:`LedgerEntry` carrying the signed
  deltas and the balances after it, so the entries replay to the counters.
* ``available`` goes below zero only through :meth:`PointsAccount.reverse_order` under
  ``ALLOW_NEGATIVE`` (points of a returned purchase that were already spent). That debt is
  paid first from whatever is earned, released or credited next.
* ``settle`` processes what time alone does, in time order: releases of pending lots whose
  hold ended, and expiries. Entries it writes carry the time the event took effect, which
  is at most ``now``. Call it before every other operation: earning moves the inactivity
  clock, so an earn recorded before settling would rescue points that had already expired.
* ``lifetime_earned`` counts earned points only (purchases), not manual credits, because
  it feeds tier qualification and reports of what the program gave for purchases.
* Activity, for inactivity expiry, is earning (at the purchase's time), redeeming and
  receiving a manual credit; reversals, debits and expiries are not the member's doing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from loyalty_engine.domain.calendar import add_days, add_months, require_aware
from loyalty_engine.domain.errors import FailedPrecondition, InvalidArgument, ViolationCollector

# One operation moves at most this many points; keeps every counter far inside int64.
MAX_POINTS_PER_OPERATION = 10**12
MAX_HOLD_DAYS = 3650
MAX_EXPIRY_MONTHS = 120


class EntryKind(StrEnum):
    """What a ledger entry records."""

    EARN = "EARN"
    PENDING = "PENDING"
    RELEASE = "RELEASE"
    REDEEM = "REDEEM"
    REVERSE = "REVERSE"
    ADJUST = "ADJUST"
    EXPIRE = "EXPIRE"


class ExpiryMode(StrEnum):
    """When points expire."""

    NEVER = "NEVER"
    AFTER_EARNING = "AFTER_EARNING"
    AFTER_INACTIVITY = "AFTER_INACTIVITY"


class NegativeBalancePolicy(StrEnum):
    """What a reversal does when the points to take back were already spent."""

    ALLOW_NEGATIVE = "ALLOW_NEGATIVE"
    CLAW_BACK_TO_ZERO = "CLAW_BACK_TO_ZERO"


@dataclass(frozen=True)
class ExpiryPolicy:
    """Points expire ``months`` after they were earned, or after the member's last activity."""

    mode: ExpiryMode = ExpiryMode.NEVER
    months: int = 0

    def validate(self, prefix: str = "expiry_policy") -> None:
        """Raise InvalidArgument unless ``months`` is 1..120 (or the mode is NEVER)."""
        errors = ViolationCollector()
        if not isinstance(self.mode, ExpiryMode):
            errors.add(f"{prefix}.mode", "must be one of " + ", ".join(ExpiryMode))
        elif self.mode is not ExpiryMode.NEVER and not 1 <= self.months <= MAX_EXPIRY_MONTHS:
            errors.add(f"{prefix}.months", f"must be between 1 and {MAX_EXPIRY_MONTHS}")
        errors.raise_if_any()


@dataclass
class PointsLot:
    """Points earned or credited together; ``remaining`` is what is left of ``points``."""

    lot_id: str
    order_id: str | None
    earned_time: datetime
    available_time: datetime
    expires_time: datetime | None
    points: int
    remaining: int
    pending: bool


@dataclass(frozen=True)
class LedgerEntry:
    """One immutable movement of points, with the balances right after it."""

    kind: EntryKind
    points: int
    pending_delta: int
    balance_after: int
    pending_after: int
    occurred_time: datetime
    order_id: str | None = None
    lot_id: str | None = None
    reason: str = ""
    actor: str = ""
    shortfall: int = 0


@dataclass(frozen=True)
class ReversalResult:
    """Points a reversal took back, and those it could not (claw-back stopped at zero)."""

    reversed_points: int
    shortfall: int


def _new_lot_id() -> str:
    return uuid.uuid4().hex


def _fifo_key(lot: PointsLot) -> tuple[datetime, str]:
    return (lot.earned_time, lot.lot_id)


def _require_points(points: int, field_path: str = "points") -> None:
    if not 0 < points <= MAX_POINTS_PER_OPERATION:
        raise InvalidArgument.for_field(
            field_path, f"must be between 1 and {MAX_POINTS_PER_OPERATION}"
        )


@dataclass
class PointsAccount:
    """A member's points: counters, open lots, and the entries written in this unit of work."""

    available: int = 0
    pending: int = 0
    reserved: int = 0
    lifetime_earned: int = 0
    redeemed: int = 0
    expired: int = 0
    reversed: int = 0
    last_activity_time: datetime | None = None
    lots: list[PointsLot] = field(default_factory=list)
    new_entries: list[LedgerEntry] = field(default_factory=list)
    changed_lot_ids: set[str] = field(default_factory=set)
    new_lot_ids: set[str] = field(default_factory=set)
    new_id: Callable[[], str] = field(default=_new_lot_id, repr=False, compare=False)
    # Every lot created or changed in this unit, closed ones included, for the storage layer.
    _touched: dict[str, PointsLot] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def spendable(self) -> int:
        """Points the member can redeem now: available minus those reserved."""
        return self.available - self.reserved

    def new_lots(self) -> list[PointsLot]:
        """Lots created in this unit of work (to insert), in creation order."""
        return [lot for lot_id, lot in self._touched.items() if lot_id in self.new_lot_ids]

    def changed_lots(self) -> list[PointsLot]:
        """Pre-existing lots changed in this unit of work (to update), closed ones included."""
        return [lot for lot_id, lot in self._touched.items() if lot_id in self.changed_lot_ids]

    # -- operations -------------------------------------------------------------------

    def earn(
        self,
        points: int,
        *,
        order_id: str | None,
        earned_time: datetime,
        now: datetime,
        hold_days: int,
        expiry: ExpiryPolicy,
    ) -> None:
        """Credit a purchase's points: pending until ``earned_time + hold_days``, then available."""
        _require_points(points)
        require_aware(earned_time, "earned_time")
        require_aware(now, "now")
        if not 0 <= hold_days <= MAX_HOLD_DAYS:
            raise InvalidArgument.for_field("hold_days", f"must be between 0 and {MAX_HOLD_DAYS}")
        expiry.validate()
        available_time = add_days(earned_time, hold_days)
        lot = self._create_lot(
            points,
            order_id=order_id,
            earned_time=earned_time,
            available_time=available_time,
            expiry=expiry,
            # No hold means available at once, even for a sale stamped a little ahead of
            # `now` by a till whose clock runs fast.
            pending=hold_days > 0 and available_time > now,
        )
        if lot.pending:
            self._record(
                EntryKind.PENDING, 0, points, earned_time, order_id=order_id, lot_id=lot.lot_id
            )
        else:
            self._pay_debt(lot)
            self._record(
                EntryKind.EARN, points, 0, earned_time, order_id=order_id, lot_id=lot.lot_id
            )
        self.lifetime_earned += points
        self._note_activity(earned_time)
        self._prune()

    def has_due(self, now: datetime, expiry: ExpiryPolicy) -> bool:
        """Whether `settle(now, expiry)` could change anything (False: a read may skip it).

        Errs on the side of True: an inactivity deadline that has passed counts even when
        nothing is left to expire.
        """
        for lot in self.lots:
            if lot.pending and lot.available_time <= now:
                return True
            if (
                expiry.mode is ExpiryMode.AFTER_EARNING
                and lot.expires_time is not None
                and lot.expires_time <= now
            ):
                return True
        return (
            expiry.mode is ExpiryMode.AFTER_INACTIVITY
            and self.last_activity_time is not None
            and add_months(self.last_activity_time, expiry.months) <= now
        )

    def settle(self, now: datetime, expiry: ExpiryPolicy) -> None:
        """Release holds that ended and expire points that are due, in time order, up to ``now``."""
        require_aware(now, "now")
        expiry.validate()
        # (effective time, releases before expiries at the same instant, FIFO, lot or None)
        events: list[tuple[datetime, int, datetime, str, PointsLot | None]] = []
        for lot in self.lots:
            due = not lot.pending or lot.available_time <= now
            if lot.pending and due:
                events.append((lot.available_time, 0, lot.earned_time, lot.lot_id, lot))
            if (
                expiry.mode is ExpiryMode.AFTER_EARNING
                and due
                and lot.expires_time is not None
                and lot.expires_time <= now
            ):
                when = max(lot.expires_time, lot.available_time)
                events.append((when, 1, lot.earned_time, lot.lot_id, lot))
        if expiry.mode is ExpiryMode.AFTER_INACTIVITY and self.last_activity_time is not None:
            deadline = add_months(self.last_activity_time, expiry.months)
            if deadline <= now:
                events.append((deadline, 1, deadline, "", None))
        events.sort(key=lambda event: event[:4])

        for when, order, _, _, target in events:
            if target is None:
                self._expire_inactive(when)
            elif order == 0:
                self._release(target, when)
            else:
                self._expire(target, when, "POINTS_EXPIRED")
        self._prune()

    def reverse_order(
        self,
        order_id: str,
        points: int,
        *,
        now: datetime,
        policy: NegativeBalancePolicy,
        reason: str,
    ) -> ReversalResult:
        """Take back a returned purchase's points: its pending ones first, then available ones."""
        _require_points(points)
        require_aware(now, "now")
        if not order_id:
            raise InvalidArgument.for_field("order_id", "must not be empty")
        to_reverse = points
        taken_pending = 0
        own_pending = sorted(
            (lot for lot in self.lots if lot.pending and lot.order_id == order_id), key=_fifo_key
        )
        for lot in own_pending:
            take = min(lot.remaining, to_reverse)
            lot.remaining -= take
            self._touch(lot)
            self._record(
                EntryKind.REVERSE,
                0,
                -take,
                now,
                order_id=order_id,
                lot_id=lot.lot_id,
                reason=reason,
            )
            taken_pending += take
            to_reverse -= take
            if to_reverse == 0:
                break

        taken_available = 0
        shortfall = 0
        if to_reverse > 0:
            if policy is NegativeBalancePolicy.CLAW_BACK_TO_ZERO:
                taken_available = min(to_reverse, max(self.available, 0))
                shortfall = to_reverse - taken_available
            else:
                taken_available = to_reverse
            own = [lot for lot in self.lots if not lot.pending and lot.order_id == order_id]
            # Under ALLOW_NEGATIVE the lots may hold less than is taken: the rest is debt.
            self._spend(taken_available, first=own)
            self._record(
                EntryKind.REVERSE,
                -taken_available,
                0,
                now,
                order_id=order_id,
                reason=reason,
                shortfall=shortfall,
            )
        self.reversed += taken_pending + taken_available
        self._prune()
        return ReversalResult(taken_pending + taken_available, shortfall)

    def redeem(self, points: int, *, now: datetime, reason: str, actor: str = "") -> None:
        """Spend points, oldest first; INSUFFICIENT_POINTS if more than available minus reserved."""
        _require_points(points)
        require_aware(now, "now")
        self._require_spendable(points)
        self._spend(points)
        self._record(EntryKind.REDEEM, -points, 0, now, reason=reason, actor=actor)
        self.redeemed += points
        self._note_activity(now)
        self._prune()

    def restore_redeemed(
        self, points: int, *, now: datetime, reason: str, expiry: ExpiryPolicy
    ) -> None:
        """Give back the points of a cancelled redemption: a new lot and a REVERSE entry.

        The spent lots are not reopened (history is never edited); the points come back as
        a fresh lot whose expiry runs from now, and ``redeemed`` goes down by the same amount.
        """
        _require_points(points)
        require_aware(now, "now")
        expiry.validate()
        if points > self.redeemed:
            raise InvalidArgument.for_field("points", "cannot restore more than was redeemed")
        lot = self._create_lot(
            points, order_id=None, earned_time=now, available_time=now, expiry=expiry, pending=False
        )
        self._pay_debt(lot)
        self._record(EntryKind.REVERSE, points, 0, now, lot_id=lot.lot_id, reason=reason)
        self.redeemed -= points
        self._note_activity(now)
        self._prune()

    def adjust(
        self, points: int, *, now: datetime, reason: str, actor: str, expiry: ExpiryPolicy
    ) -> None:
        """A manual credit (points > 0, a new lot) or debit (points < 0, oldest first).

        A debit never creates debt and never touches reserved points: it fails with
        INSUFFICIENT_POINTS instead. A credit does not count in ``lifetime_earned``.
        """
        if points == 0:
            raise InvalidArgument.for_field("points", "must not be zero")
        _require_points(abs(points))
        require_aware(now, "now")
        if not reason:
            raise InvalidArgument.for_field("reason", "an adjustment needs a reason")
        expiry.validate()
        if points > 0:
            lot = self._create_lot(
                points,
                order_id=None,
                earned_time=now,
                available_time=now,
                expiry=expiry,
                pending=False,
            )
            self._pay_debt(lot)
            self._record(
                EntryKind.ADJUST, points, 0, now, lot_id=lot.lot_id, reason=reason, actor=actor
            )
            # Otherwise a credit to a long-inactive member would expire at the next settle.
            self._note_activity(now)
        else:
            self._require_spendable(-points)
            self._spend(-points)
            self._record(EntryKind.ADJUST, points, 0, now, reason=reason, actor=actor)
        self._prune()

    # -- internals --------------------------------------------------------------------

    def _record(
        self,
        kind: EntryKind,
        points: int,
        pending_delta: int,
        occurred_time: datetime,
        *,
        order_id: str | None = None,
        lot_id: str | None = None,
        reason: str = "",
        actor: str = "",
        shortfall: int = 0,
    ) -> None:
        # The only place the balances move, so the entries always replay to them.
        self.available += points
        self.pending += pending_delta
        self.new_entries.append(
            LedgerEntry(
                kind=kind,
                points=points,
                pending_delta=pending_delta,
                balance_after=self.available,
                pending_after=self.pending,
                occurred_time=occurred_time,
                order_id=order_id,
                lot_id=lot_id,
                reason=reason,
                actor=actor,
                shortfall=shortfall,
            )
        )

    def _create_lot(
        self,
        points: int,
        *,
        order_id: str | None,
        earned_time: datetime,
        available_time: datetime,
        expiry: ExpiryPolicy,
        pending: bool,
    ) -> PointsLot:
        expires_time = (
            add_months(earned_time, expiry.months)
            if expiry.mode is ExpiryMode.AFTER_EARNING
            else None
        )
        lot = PointsLot(
            lot_id=self.new_id(),
            order_id=order_id,
            earned_time=earned_time,
            available_time=available_time,
            expires_time=expires_time,
            points=points,
            remaining=points,
            pending=pending,
        )
        self.lots.append(lot)
        self.new_lot_ids.add(lot.lot_id)
        self._touched[lot.lot_id] = lot
        return lot

    def _touch(self, lot: PointsLot) -> None:
        if lot.lot_id not in self.new_lot_ids:
            self.changed_lot_ids.add(lot.lot_id)
        self._touched[lot.lot_id] = lot

    def _pay_debt(self, lot: PointsLot) -> None:
        """Before ``lot`` becomes available, let it absorb any negative balance."""
        if self.available < 0:
            lot.remaining -= min(-self.available, lot.remaining)
            self._touch(lot)

    def _spend(self, amount: int, first: Iterable[PointsLot] = ()) -> int:
        """Take up to ``amount`` from available lots, ``first`` ones first, then oldest first."""
        preferred = sorted(first, key=_fifo_key)
        preferred_ids = {lot.lot_id for lot in preferred}
        rest = sorted(
            (lot for lot in self.lots if not lot.pending and lot.lot_id not in preferred_ids),
            key=_fifo_key,
        )
        taken = 0
        for lot in [*preferred, *rest]:
            if taken == amount:
                break
            take = min(lot.remaining, amount - taken)
            if take:
                lot.remaining -= take
                taken += take
                self._touch(lot)
        return taken

    def _require_spendable(self, points: int) -> None:
        if points > self.spendable:
            raise FailedPrecondition(
                reason="INSUFFICIENT_POINTS",
                message=f"{points} points requested but only {max(self.spendable, 0)} can be spent",
                metadata={
                    "available": str(self.available),
                    "reserved": str(self.reserved),
                    "requested": str(points),
                },
            )

    def _release(self, lot: PointsLot, when: datetime) -> None:
        released = lot.remaining
        lot.pending = False
        self._touch(lot)
        self._pay_debt(lot)
        self._record(
            EntryKind.RELEASE,
            released,
            -released,
            when,
            order_id=lot.order_id,
            lot_id=lot.lot_id,
            reason="HOLD_ENDED",
        )

    def _expire(self, lot: PointsLot, when: datetime, reason: str) -> None:
        if lot.pending or lot.remaining == 0:
            return
        lost = lot.remaining
        lot.remaining = 0
        self._touch(lot)
        self._record(
            EntryKind.EXPIRE,
            -lost,
            0,
            when,
            order_id=lot.order_id,
            lot_id=lot.lot_id,
            reason=reason,
        )
        self.expired += lost

    def _expire_inactive(self, deadline: datetime) -> None:
        # Only lots that were available by the deadline: a lot released later was not
        # there to expire, and skipping it keeps a repeated settle from writing anything.
        due = sorted(
            (lot for lot in self.lots if not lot.pending and lot.available_time <= deadline),
            key=_fifo_key,
        )
        for lot in due:
            self._expire(lot, deadline, "INACTIVITY")

    def _note_activity(self, when: datetime) -> None:
        if self.last_activity_time is None or when > self.last_activity_time:
            self.last_activity_time = when

    def _prune(self) -> None:
        self.lots = [lot for lot in self.lots if lot.remaining > 0]
