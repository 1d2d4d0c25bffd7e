"""Seeded model-based test: the engine's points ledger against an independent in-memory model.

A ``random.Random(seed)`` draws a sequence of purchases (lines in two earning categories and
one excluded category, some late, some without lines), returns (whole orders and partial
lines), manual credits and debits, expiry runs (the maintenance path behind ExpirePoints),
balance reads and time passing, for four members of one program with a return window
(``pending_days``), AFTER_EARNING expiry, and either CLAW_BACK_TO_ZERO or ALLOW_NEGATIVE.
Each step runs through the application services in its own unit of work, exactly as the
servicers do, and the same step runs on the model below.

The model shares no code with ``loyalty_engine.domain``; it re-states the rules the
engine documents: 1 point per 1.00 of eligible spend, floored per order and shared over the
lines by largest remainder; points pending for ``pending_days``, then available; lots
expiring ``EXPIRY_MONTHS`` calendar months after they were earned; spending oldest lot
first; returns reversing ``floor(points * returned / bought)`` cumulatively per line, the
order's pending points first; claw-back stopping at zero (the rest is a shortfall) or debt
that later earnings pay first. Time only acts when the engine settles a member (any write,
a balance read, an expiry run), so the model settles at the same moments and after every
step the stored, unsettled account must equal the model's: counters, open lots, and the
sum of the member's ledger entries. Failed steps must fail with the reason the model
predicts and change nothing.

Replay one seed: ``LOYALTY_MODEL_SEED=<seed> pytest tests/integration/test_ledger_model.py``
(``LOYALTY_MODEL_STEPS`` changes the number of steps). A failure prints the seed and the
steps that led to it.
"""

from __future__ import annotations

import calendar
import copy
import os
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from loyalty_engine.bootstrap import App
from loyalty_engine.domain.earning import EarningPolicy, LineItem
from loyalty_engine.domain.errors import DomainError
from loyalty_engine.domain.ledger import ExpiryMode, ExpiryPolicy, NegativeBalancePolicy
from loyalty_engine.domain.members import Member
from loyalty_engine.domain.program import Program
from loyalty_engine.services import points as svc
from loyalty_engine.services.maintenance import run_maintenance
from loyalty_engine.services.members import enroll_member
from loyalty_engine.services.programs import create_program
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.unit_of_work import UnitOfWork

PENDING_DAYS = 5
EXPIRY_MONTHS = 1
LATE_WINDOW_DAYS = 30  # the program default for late sales
EXCLUDED = "gift-cards"
CATEGORIES = ("grocery", "electronics", EXCLUDED)
NO_LINES_CATEGORY = "uncategorized"
MEMBERS = 4

_SEED_ENV = os.environ.get("LOYALTY_MODEL_SEED")
SEEDS = [int(_SEED_ENV)] if _SEED_ENV else [1, 2, 3, 5, 8, 13]
STEPS = int(os.environ.get("LOYALTY_MODEL_STEPS", "60"))

T = TypeVar("T")


# --- the model ------------------------------------------------------------------------------


def model_add_months(when: datetime, months: int) -> datetime:
    """Calendar months later, the day clamped to the month's length (Jan 31 -> Feb 28)."""
    month0 = when.month - 1 + months
    year = when.year + month0 // 12
    month = month0 % 12 + 1
    return when.replace(
        year=year, month=month, day=min(when.day, calendar.monthrange(year, month)[1])
    )


def share_by_largest_remainder(total: int, exact: list[Fraction]) -> list[int]:
    """Whole points per line: floors, then one more for the largest remainders (ties: first)."""
    floors = [int(value) for value in exact]  # values are non-negative
    extra = total - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (floors[i] - exact[i], i))
    for i in order[:extra]:
        floors[i] += 1
    return floors


@dataclass
class ModelLot:
    seq: int
    order_id: str | None
    earned: datetime
    available_at: datetime
    expires: datetime
    remaining: int
    pending: bool


@dataclass
class ModelLine:
    category: str
    quantity: int
    unit_price: int
    points: int
    returned: int = 0


@dataclass
class ModelOrder:
    member: str
    time: datetime
    lines: list[ModelLine]


@dataclass
class ModelAccount:
    available: int = 0
    pending: int = 0
    expired: int = 0
    reversed: int = 0
    lifetime_earned: int = 0
    lots: list[ModelLot] = field(default_factory=list)


@dataclass(frozen=True)
class Rejected:
    """The error the model predicts: the domain error's class name and its reason."""

    error: str
    reason: str


@dataclass(frozen=True)
class Settled:
    released: int = 0
    expired: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.released or self.expired)


class LedgerModel:
    """The ledger rules for one program, restated from the documentation, in memory."""

    def __init__(self, allow_negative: bool) -> None:
        self.allow_negative = allow_negative
        self.accounts: dict[str, ModelAccount] = {}
        self.orders: dict[str, ModelOrder] = {}
        self._lot_seq = 0

    # time

    def _settle(self, acc: ModelAccount, now: datetime) -> Settled:
        events: list[tuple[datetime, int, datetime, int, ModelLot]] = []
        for lot in acc.lots:
            if lot.pending and lot.available_at <= now:
                events.append((lot.available_at, 0, lot.earned, lot.seq, lot))
            if lot.expires <= now and (not lot.pending or lot.available_at <= now):
                events.append((max(lot.expires, lot.available_at), 1, lot.earned, lot.seq, lot))
        events.sort(key=lambda e: e[:4])
        released = expired = 0
        for _, kind, _, _, lot in events:
            if kind == 0:
                lot.pending = False
                acc.pending -= lot.remaining
                released += lot.remaining
                self._make_available(acc, lot)
            elif not lot.pending and lot.remaining:
                acc.available -= lot.remaining
                acc.expired += lot.remaining
                expired += lot.remaining
                lot.remaining = 0
        self._prune(acc)
        return Settled(released, expired)

    # helpers

    @staticmethod
    def _make_available(acc: ModelAccount, lot: ModelLot) -> None:
        """A lot becoming spendable adds all its points, and pays the member's debt first."""
        points = lot.remaining
        if acc.available < 0:
            lot.remaining -= min(-acc.available, lot.remaining)
        acc.available += points

    def _new_lot(
        self, order_id: str | None, earned: datetime, points: int, now: datetime
    ) -> ModelLot:
        self._lot_seq += 1
        available_at = earned + timedelta(days=PENDING_DAYS) if order_id else earned
        return ModelLot(
            seq=self._lot_seq,
            order_id=order_id,
            earned=earned,
            available_at=available_at,
            expires=model_add_months(earned, EXPIRY_MONTHS),
            remaining=points,
            pending=available_at > now,
        )

    def _spend(self, acc: ModelAccount, amount: int, prefer_order: str | None = None) -> None:
        spendable = sorted(
            (lot for lot in acc.lots if not lot.pending),
            key=lambda lot: (
                lot.order_id != prefer_order or prefer_order is None,
                lot.earned,
                lot.seq,
            ),
        )
        for lot in spendable:
            take = min(lot.remaining, amount)
            lot.remaining -= take
            amount -= take
        self._prune(acc)

    @staticmethod
    def _prune(acc: ModelAccount) -> None:
        acc.lots = [lot for lot in acc.lots if lot.remaining > 0]

    def _credit(self, acc: ModelAccount, lot: ModelLot) -> None:
        self._make_available(acc, lot)
        acc.lots.append(lot)
        self._prune(acc)

    # operations: each works on copies and keeps them only when it succeeds

    def purchase(
        self,
        member: str,
        order_id: str,
        when: datetime,
        lines: list[tuple[str, int, int]] | None,
        total: int,
        now: datetime,
    ) -> Rejected | tuple[int, bool]:
        if lines is not None and sum(q * p for _, q, p in lines) != total:
            return Rejected("InvalidArgument", "LINE_ITEMS_MISMATCH")
        if when < now - timedelta(days=LATE_WINDOW_DAYS):
            return Rejected("OutOfRange", "PURCHASE_TOO_LATE")
        if order_id in self.orders:
            return Rejected("AlreadyExists", "ORDER_ALREADY_RECORDED")
        acc = self.accounts[member]
        self._settle(acc, now)
        items = lines if lines is not None else [(NO_LINES_CATEGORY, 1, total)]
        exact = [Fraction(q * p, 100) if c != EXCLUDED else Fraction(0) for c, q, p in items]
        points = int(sum(exact, Fraction(0)))
        per_line = share_by_largest_remainder(points, exact)
        self.orders[order_id] = ModelOrder(
            member,
            when,
            [ModelLine(c, q, p, n) for (c, q, p), n in zip(items, per_line, strict=True)],
        )
        pending = False
        if points:
            lot = self._new_lot(order_id, when, points, now)
            pending = lot.pending
            if lot.pending:
                acc.pending += points
                acc.lots.append(lot)
            else:
                self._credit(acc, lot)
            acc.lifetime_earned += points
        return points, pending

    def return_(
        self, member: str, order_id: str, lines: list[tuple[int, int]], now: datetime
    ) -> Rejected | tuple[int, int, int]:
        order = self.orders.get(order_id)
        if order is None or order.member != member:
            return Rejected("NotFound", "ORDER_NOT_FOUND")
        returning: dict[int, int] = {}
        for index, quantity in lines:
            if not 0 <= index < len(order.lines):
                return Rejected("NotFound", "LINE_NOT_FOUND")
            if quantity <= 0:
                return Rejected("InvalidArgument", "INVALID_FIELD")
            returning[index] = returning.get(index, 0) + quantity
        if not lines:
            returning = {
                i: line.quantity - line.returned
                for i, line in enumerate(order.lines)
                if line.returned < line.quantity
            }
            if not returning:
                return Rejected("FailedPrecondition", "NOTHING_TO_RETURN")
        points = refund = 0
        for index, quantity in returning.items():
            line = order.lines[index]
            after = line.returned + quantity
            if after > line.quantity:
                return Rejected("FailedPrecondition", "RETURN_EXCEEDS_PURCHASE")
            points += (
                line.points * after // line.quantity - line.points * line.returned // line.quantity
            )
            refund += quantity * line.unit_price
        for index, quantity in returning.items():
            order.lines[index].returned += quantity
        acc = self.accounts[member]
        self._settle(acc, now)
        if not points:
            return 0, 0, refund
        taken_pending = 0
        for lot in sorted(acc.lots, key=lambda lot: (lot.earned, lot.seq)):
            if lot.pending and lot.order_id == order_id and taken_pending < points:
                take = min(lot.remaining, points - taken_pending)
                lot.remaining -= take
                acc.pending -= take
                taken_pending += take
        self._prune(acc)
        rest = points - taken_pending
        shortfall = 0
        if rest:
            taken = rest if self.allow_negative else min(rest, max(acc.available, 0))
            shortfall = rest - taken
            self._spend(acc, taken, prefer_order=order_id)
            acc.available -= taken
            rest = taken
        acc.reversed += taken_pending + rest
        return taken_pending + rest, shortfall, refund

    def adjust(self, member: str, points: int, now: datetime) -> Rejected | None:
        if points == 0:
            return Rejected("InvalidArgument", "INVALID_FIELD")
        acc = self.accounts[member]
        self._settle(acc, now)
        if points > 0:
            self._credit(acc, self._new_lot(None, now, points, now))
            return None
        if -points > acc.available:
            return Rejected("FailedPrecondition", "INSUFFICIENT_POINTS")
        self._spend(acc, -points)
        acc.available += points
        return None

    def settle(self, member: str, now: datetime) -> Settled:
        return self._settle(self.accounts[member], now)

    def next_expiry(self, member: str) -> tuple[int, datetime | None]:
        dated = [lot for lot in self.accounts[member].lots if not lot.pending]
        if not dated:
            return 0, None
        first = min(lot.expires for lot in dated)
        return sum(lot.remaining for lot in dated if lot.expires == first), first

    def lots(self, member: str) -> list[tuple[datetime, str | None, int, bool]]:
        return sorted(
            (lot.earned, lot.order_id, lot.remaining, lot.pending)
            for lot in self.accounts[member].lots
        )


# --- running steps on both ------------------------------------------------------------------


class Divergence(AssertionError):
    pass


class Run:
    """One seeded run: draws steps, applies them to the engine and the model, compares."""

    def __init__(self, app: App, clock: Any, seed: int, policy: str, backend: str) -> None:
        self.app = app
        self.clock = clock
        self.seed = seed
        self.policy = policy
        self.backend = backend
        self.rng = random.Random(seed)
        self.model = LedgerModel(allow_negative=policy == "allow_negative")
        self.program_id = ""
        self.members: list[str] = []
        self.steps: list[str] = []
        self.used_times: set[datetime] = set()
        self._counter = 0

    # plumbing

    def fail(self, detail: str) -> Divergence:
        listing = "\n".join(f"  {i:3d}. {step}" for i, step in enumerate(self.steps, 1))
        return Divergence(
            f"engine and model disagree: {detail}\n"
            f"seed={self.seed} policy={self.policy} backend={self.backend}; replay with\n"
            f"  LOYALTY_MODEL_SEED={self.seed} .venv/bin/python -m pytest "
            f"tests/integration/test_ledger_model.py -k '{self.policy} and {self.backend}'\n"
            f"steps:\n{listing}"
        )

    def expect(self, what: str, engine: Any, model: Any) -> None:
        if engine != model:
            raise self.fail(f"{what}: engine {engine!r} != model {model!r}")

    async def in_uow(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        async with self.app.db.unit_of_work() as uow:
            result = await work(uow)
            await uow.commit()
            return result

    async def attempt(self, predicted: Any, work: Callable[[UnitOfWork], Awaitable[T]]) -> T | None:
        """Run `work`; it must fail exactly when, and as, the model predicts."""
        try:
            result = await self.in_uow(work)
        except DomainError as exc:
            got = Rejected(type(exc).__name__, exc.reason)
            if predicted != got:
                raise self.fail(
                    f"engine raised {got} ({exc}), model predicted {predicted!r}"
                ) from exc
            return None
        except Exception as exc:
            raise self.fail(f"engine crashed: {type(exc).__name__}: {exc}") from exc
        if isinstance(predicted, Rejected):
            raise self.fail(f"engine succeeded, model predicted {predicted}")
        return result

    def fresh_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter}-{uuid.uuid4().hex[:6]}"

    def unique_time(self, when: datetime) -> datetime:
        # Lots earned at the same instant would be spent in lot-id order, which is random.
        while when in self.used_times:
            when -= timedelta(seconds=1)
        self.used_times.add(when)
        return when

    # set-up

    async def setup(self) -> None:
        now = self.clock.now
        negative = (
            NegativeBalancePolicy.ALLOW_NEGATIVE
            if self.policy == "allow_negative"
            else NegativeBalancePolicy.CLAW_BACK_TO_ZERO
        )
        program = Program(
            program_id=f"model-{uuid.uuid4().hex[:12]}",
            display_name="Model program",
            currency_code="EUR",
            earning=EarningPolicy(excluded_categories=frozenset({EXCLUDED})),
            expiry=ExpiryPolicy(ExpiryMode.AFTER_EARNING, EXPIRY_MONTHS),
            pending_days=PENDING_DAYS,
            negative_balance_policy=negative,
        )
        self.program_id = program.program_id
        await self.in_uow(lambda uow: create_program(uow, program, now))
        for i in range(MEMBERS):
            member = Member(program.program_id, f"m{i}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
            await self.in_uow(lambda uow, m=member: enroll_member(uow, m, now))
            self.members.append(member.member_id)
            self.model.accounts[member.member_id] = ModelAccount()

    # steps

    async def step(self) -> None:
        self.clock.advance(minutes=self.rng.randint(1, 120))
        kind = self.rng.choices(
            ["purchase", "return", "credit", "debit", "expire", "time", "balance"],
            weights=[26, 20, 6, 12, 10, 16, 6],
        )[0]
        if kind == "return" and not self.model.orders:
            kind = "purchase"
        await getattr(self, f"step_{kind}")()
        await self.compare_stored()

    async def step_purchase(self) -> None:
        rng, now = self.rng, self.clock.now
        member = rng.choice(self.members)
        order_id = self.fresh_id("o")
        if self.model.orders and rng.random() < 0.05:
            order_id = rng.choice(sorted(self.model.orders))
        late = rng.random()
        if late < 0.6:
            when = now
        elif late < 0.97:
            when = now - timedelta(minutes=rng.randint(1, 60 * 24 * 12))
        else:
            when = now - timedelta(days=LATE_WINDOW_DAYS, minutes=rng.randint(1, 600))
        when = self.unique_time(when)
        lines: list[tuple[str, int, int]] | None = None
        if rng.random() < 0.15:
            total = rng.randint(0, 9_000)
        else:
            lines = [
                (
                    rng.choices(CATEGORIES, weights=[5, 3, 2])[0],
                    rng.randint(1, 4),
                    rng.choice([rng.randint(1, 3_000), rng.randint(1, 40) * 50]),
                )
                for _ in range(rng.randint(1, 4))
            ]
            total = sum(q * p for _, q, p in lines)
            if rng.random() < 0.03:
                total += 1
        self.steps.append(
            f"@{self._since()} purchase member={member} order={order_id} "
            f"at=now-{now - when} lines={lines} total={total}"
        )
        predicted = self.model_try(lambda m: m.purchase(member, order_id, when, lines, total, now))
        cmd = svc.RecordPurchase(
            program_id=self.program_id,
            member_id=member,
            order_id=order_id,
            purchase_time=when,
            store_id="store-1",
            currency_code="EUR",
            total_minor=total,
            lines=tuple(LineItem(f"sku-{c}", c, q, p) for c, q, p in lines or ()),
        )
        result = await self.attempt(predicted, lambda uow: svc.record_purchase(uow, cmd, now))
        if result is not None:
            points, pending = predicted
            self.expect("points awarded", result.points_awarded, points)
            self.expect("pending flag", result.pending, pending)
            self.compare_balance(member, result.balance)

    async def step_return(self) -> None:
        rng, now = self.rng, self.clock.now
        order_id = rng.choice(sorted(self.model.orders))
        order = self.model.orders[order_id]
        member = order.member
        if rng.random() < 0.05:
            member = rng.choice([m for m in self.members if m != member])
        lines: list[tuple[int, int]] = []
        if rng.random() < 0.55:
            for _ in range(rng.randint(1, 2)):
                index = rng.randrange(len(order.lines))
                left = order.lines[index].quantity - order.lines[index].returned
                lines.append((index, rng.randint(1, left) if left > 0 else 1))
            roll = rng.random()
            if roll < 0.04:
                lines.append((len(order.lines) + rng.randint(0, 2), 1))
            elif roll < 0.08:
                lines.append((0, 0))
        return_id = self.fresh_id("r")
        self.steps.append(
            f"@{self._since()} return member={member} order={order_id} "
            f"lines={lines or 'all that is left'}"
        )
        predicted = self.model_try(lambda m: m.return_(member, order_id, lines, now))
        cmd = svc.RecordReturn(
            program_id=self.program_id,
            member_id=member,
            order_id=order_id,
            return_id=return_id,
            return_time=now,
            lines=tuple(lines),
        )
        result = await self.attempt(predicted, lambda uow: svc.record_return(uow, cmd, now))
        if result is not None:
            reversed_points, shortfall, refund = predicted
            self.expect("points reversed", result.points_reversed, reversed_points)
            self.expect("shortfall", result.shortfall, shortfall)
            self.expect("refund", result.refund_minor, refund)
            self.compare_balance(member, result.balance)

    async def step_credit(self) -> None:
        await self._adjust(0 if self.rng.random() < 0.08 else self.rng.randint(1, 400))

    async def step_debit(self) -> None:
        member = self.rng.choice(self.members)
        available = self.model.accounts[member].available
        # Often all of it, so that later returns meet spent points (claw-back or debt).
        if available > 0 and self.rng.random() < 0.4:
            await self._adjust(-available, member)
        else:
            await self._adjust(-self.rng.randint(1, max(available, 0) + 60), member)

    async def _adjust(self, points: int, member: str | None = None) -> None:
        now = self.clock.now
        member = member or self.rng.choice(self.members)
        if points > 0:
            self.unique_time(now)
        self.steps.append(f"@{self._since()} adjust member={member} points={points}")
        predicted = self.model_try(lambda m: m.adjust(member, points, now))
        cmd = svc.AdjustPoints(
            program_id=self.program_id,
            member_id=member,
            points=points,
            reason=self.rng.choice(svc.ADJUSTMENT_REASONS),
            actor="model-test",
            note="seeded",
        )
        balance = await self.attempt(predicted, lambda uow: svc.adjust_points(uow, cmd, now))
        if balance is not None:
            self.compare_balance(member, balance)

    async def step_expire(self) -> None:
        now = self.clock.now
        self.steps.append(f"@{self._since()} expiry run")
        settled = [self.model.settle(m, now) for m in self.members]
        try:
            report = await run_maintenance(self.app.db.unit_of_work, self.program_id, now)
        except Exception as exc:
            raise self.fail(f"expiry run crashed: {type(exc).__name__}: {exc}") from exc
        self.expect(
            "expiry run: points expired", report.points_expired, sum(s.expired for s in settled)
        )
        self.expect(
            "expiry run: points released", report.points_released, sum(s.released for s in settled)
        )
        self.expect(
            "expiry run: members changed", report.members_changed, sum(s.changed for s in settled)
        )

    async def step_time(self) -> None:
        days, hours = self.rng.randint(1, 25), self.rng.randint(0, 23)
        self.clock.advance(days=days, hours=hours)
        self.steps.append(f"@{self._since()} time passes ({days}d {hours}h)")

    async def step_balance(self, member: str | None = None) -> None:
        now = self.clock.now
        member = member or self.rng.choice(self.members)
        self.steps.append(f"@{self._since()} get balance member={member}")
        self.model.settle(member, now)
        balance = await self.attempt(
            None, lambda uow: svc.get_balance(uow, self.program_id, member, now)
        )
        assert balance is not None
        self.compare_balance(member, balance)
        points, when = self.model.next_expiry(member)
        self.expect(
            f"{member} next expiry",
            (balance.next_expiry_points, balance.next_expiry_time),
            (points, when),
        )

    # comparing

    def model_try(self, operation: Callable[[LedgerModel], T]) -> T:
        """Run a model operation; keep its effects only if it does not predict an error."""
        before = copy.deepcopy((self.model.accounts, self.model.orders, self.model._lot_seq))
        outcome = operation(self.model)
        if isinstance(outcome, Rejected):
            self.model.accounts, self.model.orders, self.model._lot_seq = before
        return outcome

    def compare_balance(self, member: str, balance: svc.Balance) -> None:
        acc = self.model.accounts[member]
        self.expect(
            f"{member} balance (available, pending, expired, lifetime earned)",
            (balance.available, balance.pending, balance.expired, balance.lifetime_earned),
            (acc.available, acc.pending, acc.expired, acc.lifetime_earned),
        )

    async def compare_stored(self) -> None:
        """Every member's stored account, as it is without settling, against the model."""
        accounts, ledger, lots = t.member_accounts, t.ledger_entries, t.points_lots
        mine = [accounts.c.program_id == self.program_id]
        async with self.app.db.unit_of_work() as uow:
            conn = uow.connection
            counters = {
                row.member_id: row for row in await conn.execute(sa.select(accounts).where(*mine))
            }
            sums = {
                row.member_id: (int(row.points), int(row.pending))
                for row in await conn.execute(
                    sa.select(
                        ledger.c.member_id,
                        sa.func.sum(ledger.c.points).label("points"),
                        sa.func.sum(ledger.c.pending_delta).label("pending"),
                    )
                    .where(ledger.c.program_id == self.program_id)
                    .group_by(ledger.c.member_id)
                )
            }
            open_lots: dict[str, list[tuple[datetime, str | None, int, bool]]] = {
                member: [] for member in self.members
            }
            for row in await conn.execute(
                sa.select(lots).where(lots.c.program_id == self.program_id, lots.c.remaining > 0)
            ):
                open_lots[row.member_id].append(
                    (row.earned_time, row.order_id, row.remaining, row.pending)
                )
        for member in self.members:
            acc, row = self.model.accounts[member], counters[member]
            self.expect(
                f"{member} stored (available, pending, expired, reversed, lifetime earned)",
                (row.available, row.pending, row.expired, row.reversed, row.lifetime_earned),
                (acc.available, acc.pending, acc.expired, acc.reversed, acc.lifetime_earned),
            )
            self.expect(
                f"{member} sum of ledger entries (points, pending)",
                sums.get(member, (0, 0)),
                (row.available, row.pending),
            )
            self.expect(
                f"{member} open lots (earned, order, remaining, pending)",
                sorted(open_lots[member]),
                self.model.lots(member),
            )

    def _since(self) -> str:
        return f"{self.clock.now:%Y-%m-%d %H:%M}"


@pytest.mark.parametrize("policy", ["claw_back", "allow_negative"])
@pytest.mark.parametrize("seed", SEEDS)
async def test_engine_matches_model(
    app: App, clock: Any, database_url: str, seed: int, policy: str
) -> None:
    backend = "postgres" if database_url.startswith("postgresql") else "sqlite"
    run = Run(app, clock, seed, policy, backend)
    await run.setup()
    for _ in range(STEPS):
        await run.step()
    # In the end time catches up with everyone: balances read settled must still agree.
    run.clock.advance(days=70)
    for member in run.members:
        await run.step_balance(member)
    await run.compare_stored()
