"""Property tests: random interleavings of ledger operations keep every invariant.

A hypothesis state machine drives one account through earn, settle, reverse, redeem and
adjust with a clock that only moves forward, and after every step checks that entries
replay to the balances, that lots cover exactly the balances, and that spending is FIFO.
A failing run prints the exact sequence of steps that reproduces it.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from loyalty_engine.domain.calendar import add_months
from loyalty_engine.domain.errors import FailedPrecondition
from loyalty_engine.domain.ledger import (
    EntryKind,
    ExpiryMode,
    ExpiryPolicy,
    LedgerEntry,
    NegativeBalancePolicy,
    PointsAccount,
    PointsLot,
)

START = datetime(2024, 1, 31, 12, 0, tzinfo=UTC)
ORDERS = [f"order-{i}" for i in range(6)]

points = st.integers(min_value=1, max_value=500)


def fifo_key(lot: PointsLot) -> tuple[datetime, str]:
    return (lot.earned_time, lot.lot_id)


class LedgerMachine(RuleBasedStateMachine):
    """One account, one expiry policy and one negative-balance policy per run."""

    def __init__(self) -> None:
        super().__init__()
        counter = itertools.count()
        self.account = PointsAccount(new_id=lambda: f"lot-{next(counter):05d}")
        self.now = START
        self.expiry = ExpiryPolicy()
        self.negative = NegativeBalancePolicy.ALLOW_NEGATIVE
        self.entries_seen = 0

    @initialize(
        mode=st.sampled_from(ExpiryMode),
        months=st.integers(min_value=1, max_value=14),
        negative=st.sampled_from(NegativeBalancePolicy),
    )
    def choose_policies(
        self, mode: ExpiryMode, months: int, negative: NegativeBalancePolicy
    ) -> None:
        self.expiry = ExpiryPolicy(mode, 0 if mode is ExpiryMode.NEVER else months)
        self.negative = negative

    # -- steps: settle first, as the storage layer does ------------------------------------

    def settle(self) -> None:
        due = self.account.has_due(self.now, self.expiry)
        written = len(self.account.new_entries)
        snapshot = [(lot.lot_id, lot.remaining, lot.pending) for lot in self.account.lots]
        self.account.settle(self.now, self.expiry)
        if not due:  # a balance read skips settling exactly when nothing would change
            assert len(self.account.new_entries) == written
            assert [(lot.lot_id, lot.remaining, lot.pending) for lot in self.account.lots] == (
                snapshot
            )

    @rule(delta=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=200)))
    def advance_time(self, delta: timedelta) -> None:
        self.now += delta

    @rule()
    def settle_twice_is_settle_once(self) -> None:
        self.settle()
        self.check_nothing_overdue()
        written = len(self.account.new_entries)
        snapshot = [(lot.lot_id, lot.remaining, lot.pending) for lot in self.account.lots]
        self.settle()
        assert len(self.account.new_entries) == written
        assert [(lot.lot_id, lot.remaining, lot.pending) for lot in self.account.lots] == snapshot

    @rule(
        amount=points,
        order=st.sampled_from(ORDERS),
        hold_days=st.sampled_from([0, 0, 14, 30, 90]),
        backdate=st.sampled_from([timedelta(0), timedelta(0), timedelta(days=20)]),
    )
    def earn(self, amount: int, order: str, hold_days: int, backdate: timedelta) -> None:
        self.settle()
        before = self.account.lifetime_earned
        self.account.earn(
            amount,
            order_id=order,
            earned_time=self.now - backdate,
            now=self.now,
            hold_days=hold_days,
            expiry=self.expiry,
        )
        assert self.account.lifetime_earned == before + amount

    @rule(order=st.sampled_from(ORDERS), amount=points)
    def reverse(self, order: str, amount: int) -> None:
        self.settle()
        before = self.account.available
        pending_before = self.account.pending
        reversed_before = self.account.reversed
        result = self.account.reverse_order(
            order, amount, now=self.now, policy=self.negative, reason="RETURN"
        )
        assert result.reversed_points + result.shortfall == amount
        assert result.shortfall >= 0
        if self.negative is NegativeBalancePolicy.ALLOW_NEGATIVE:
            assert result.shortfall == 0
        taken = (before - self.account.available) + (pending_before - self.account.pending)
        assert taken == result.reversed_points
        assert self.account.reversed == reversed_before + result.reversed_points

    @rule(amount=points)
    def redeem(self, amount: int) -> None:
        self.settle()
        before = self.account.available
        remaining_before = {lot.lot_id: lot.remaining for lot in self.account.lots}
        try:
            self.account.redeem(amount, now=self.now, reason="reward")
        except FailedPrecondition as error:
            assert error.reason == "INSUFFICIENT_POINTS"
            assert amount > before - self.account.reserved
            assert self.account.available == before
            return
        assert self.account.available == before - amount >= 0
        self.check_fifo(remaining_before)

    @rule(amount=st.integers(min_value=-500, max_value=500).filter(bool))
    def adjust(self, amount: int) -> None:
        self.settle()
        before = self.account.available
        lifetime = self.account.lifetime_earned
        remaining_before = {lot.lot_id: lot.remaining for lot in self.account.lots}
        try:
            self.account.adjust(
                amount, now=self.now, reason="TEST", actor="agent", expiry=self.expiry
            )
        except FailedPrecondition:
            assert amount < 0 and before + amount < self.account.reserved
            return
        assert self.account.available == before + amount
        assert self.account.lifetime_earned == lifetime
        if amount < 0:
            assert self.account.available >= 0
            self.check_fifo(remaining_before)

    @precondition(lambda self: self.account.available > 0)
    @rule(data=st.data())
    def reserve_some(self, data: st.DataObject) -> None:
        self.account.reserved = data.draw(
            st.integers(min_value=0, max_value=self.account.available)
        )

    def check_nothing_overdue(self) -> None:
        """Right after settling, no hold has ended and nothing is due to expire."""
        account = self.account
        for lot in account.lots:
            assert not (lot.pending and lot.available_time <= self.now)
            if self.expiry.mode is ExpiryMode.AFTER_EARNING and not lot.pending:
                assert lot.expires_time is not None and lot.expires_time > self.now
        if self.expiry.mode is ExpiryMode.AFTER_INACTIVITY and account.lots:
            assert account.last_activity_time is not None
            deadline = add_months(account.last_activity_time, self.expiry.months)
            if deadline <= self.now:
                assert all(lot.available_time > deadline for lot in account.lots)

    def check_fifo(self, remaining_before: dict[str, int]) -> None:
        """Spending took from the oldest available lots: only the last one touched is partial."""
        lots = {lot.lot_id: lot for lot in self.account.changed_lots() + self.account.new_lots()}
        lots.update({lot.lot_id: lot for lot in self.account.lots})
        available = sorted((lots[i] for i in remaining_before if not lots[i].pending), key=fifo_key)
        touched = [
            i for i, lot in enumerate(available) if lot.remaining < remaining_before[lot.lot_id]
        ]
        if touched:
            assert all(lot.remaining == 0 for lot in available[: touched[-1]])

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def entries_replay_to_the_balances(self) -> None:
        account = self.account
        entries: list[LedgerEntry] = account.new_entries
        running_available = 0
        running_pending = 0
        for entry in entries:
            running_available += entry.points
            running_pending += entry.pending_delta
            assert entry.balance_after == running_available
            assert entry.pending_after == running_pending
            assert entry.shortfall >= 0
            if entry.kind is EntryKind.PENDING:
                assert entry.points == 0 and entry.pending_delta > 0
            if entry.kind is EntryKind.RELEASE:
                assert entry.points == -entry.pending_delta > 0
            if entry.kind is EntryKind.EARN:
                assert entry.points > 0 and entry.pending_delta == 0
            if entry.kind in (EntryKind.REDEEM, EntryKind.EXPIRE):
                assert entry.points < 0 and entry.pending_delta == 0
            assert entry.occurred_time <= self.now
        assert account.available == running_available
        assert account.pending == running_pending
        # Labels for --hypothesis-show-statistics: are the interesting states reached?
        for entry in entries:
            event(f"entry {entry.kind}")
        if account.available < 0:
            event("negative balance")
        if any(entry.shortfall for entry in entries):
            event("claw-back shortfall")

    @invariant()
    def lots_cover_the_balances(self) -> None:
        account = self.account
        open_available = sum(lot.remaining for lot in account.lots if not lot.pending)
        open_pending = sum(lot.remaining for lot in account.lots if lot.pending)
        assert open_available == max(account.available, 0)
        assert open_pending == account.pending
        assert account.pending >= 0
        for lot in account.lots:
            assert 0 < lot.remaining <= lot.points
        for lot in account.changed_lots() + account.new_lots():
            assert 0 <= lot.remaining <= lot.points
        assert account.new_lot_ids.isdisjoint(account.changed_lot_ids)

    @invariant()
    def counters_add_up(self) -> None:
        account = self.account
        credits = sum(
            e.points for e in account.new_entries if e.kind is EntryKind.ADJUST and e.points > 0
        )
        debits = -sum(
            e.points for e in account.new_entries if e.kind is EntryKind.ADJUST and e.points < 0
        )
        assert (
            account.lifetime_earned
            + credits
            - account.redeemed
            - account.expired
            - account.reversed
            - debits
            == account.available + account.pending
        )

    @invariant()
    def never_negative_under_claw_back(self) -> None:
        if self.negative is NegativeBalancePolicy.CLAW_BACK_TO_ZERO:
            assert self.account.available >= 0


LedgerMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerMachine = LedgerMachine.TestCase
