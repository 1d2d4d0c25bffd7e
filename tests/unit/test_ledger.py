"""The points account: hand-written scenarios for earning, holds, expiry, returns and spending."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from loyalty_engine.domain.errors import FailedPrecondition, InvalidArgument
from loyalty_engine.domain.ledger import (
    EntryKind,
    ExpiryMode,
    ExpiryPolicy,
    LedgerEntry,
    NegativeBalancePolicy,
    PointsAccount,
    PointsLot,
    ReversalResult,
)

T0 = datetime(2025, 1, 31, 10, 0, tzinfo=UTC)
NEVER = ExpiryPolicy()
TWELVE_MONTHS = ExpiryPolicy(ExpiryMode.AFTER_EARNING, 12)
SIX_MONTHS_IDLE = ExpiryPolicy(ExpiryMode.AFTER_INACTIVITY, 6)
ALLOW = NegativeBalancePolicy.ALLOW_NEGATIVE
CLAW = NegativeBalancePolicy.CLAW_BACK_TO_ZERO


def account() -> PointsAccount:
    counter = itertools.count(1)
    return PointsAccount(new_id=lambda: f"lot-{next(counter)}")


def kinds(acct: PointsAccount) -> list[EntryKind]:
    return [entry.kind for entry in acct.new_entries]


def remaining(acct: PointsAccount) -> dict[str, int]:
    return {lot.lot_id: lot.remaining for lot in acct.lots}


def earn(
    acct: PointsAccount,
    points: int,
    when: datetime,
    *,
    order_id: str | None = "order-1",
    hold_days: int = 0,
    expiry: ExpiryPolicy = NEVER,
) -> None:
    acct.earn(
        points, order_id=order_id, earned_time=when, now=when, hold_days=hold_days, expiry=expiry
    )


def test_earn_without_hold_is_available_at_once() -> None:
    acct = account()
    earn(acct, 40, T0)
    assert (acct.available, acct.pending, acct.lifetime_earned) == (40, 0, 40)
    assert acct.new_entries == [
        LedgerEntry(
            kind=EntryKind.EARN,
            points=40,
            pending_delta=0,
            balance_after=40,
            pending_after=0,
            occurred_time=T0,
            order_id="order-1",
            lot_id="lot-1",
        )
    ]
    assert acct.lots == [PointsLot("lot-1", "order-1", T0, T0, None, 40, 40, False)]
    assert acct.new_lot_ids == {"lot-1"}
    assert acct.changed_lot_ids == set()
    assert acct.last_activity_time == T0


def test_default_lot_ids_are_unique() -> None:
    acct = PointsAccount()
    earn(acct, 1, T0)
    earn(acct, 1, T0)
    assert len(acct.new_lot_ids) == 2


def test_expiry_date_is_set_when_earning_and_clamps_month_ends() -> None:
    acct = account()
    earn(acct, 10, T0, expiry=ExpiryPolicy(ExpiryMode.AFTER_EARNING, 1))
    assert acct.lots[0].expires_time == datetime(2025, 2, 28, 10, tzinfo=UTC)
    earn(acct, 10, T0, expiry=SIX_MONTHS_IDLE)
    assert acct.lots[1].expires_time is None


def test_pending_then_release() -> None:
    acct = account()
    earn(acct, 100, T0, hold_days=30)
    assert (acct.available, acct.pending) == (0, 100)
    assert acct.new_entries[0].kind is EntryKind.PENDING
    assert acct.new_entries[0].points == 0 and acct.new_entries[0].pending_delta == 100

    acct.settle(T0 + timedelta(days=30) - timedelta(seconds=1), NEVER)
    assert len(acct.new_entries) == 1

    later = T0 + timedelta(days=45)
    acct.settle(later, NEVER)
    assert (acct.available, acct.pending) == (100, 0)
    release = acct.new_entries[-1]
    assert release.kind is EntryKind.RELEASE
    assert (release.points, release.pending_delta) == (100, -100)
    # The release is dated when the hold ended, not when settle happened to run.
    assert release.occurred_time == T0 + timedelta(days=30)
    assert release.order_id == "order-1" and release.lot_id == "lot-1"
    assert acct.lots[0].pending is False

    acct.settle(later, NEVER)
    assert len(acct.new_entries) == 2


def test_purchase_recorded_after_its_hold_is_available_at_once() -> None:
    acct = account()
    acct.earn(
        10,
        order_id="late",
        earned_time=T0,
        now=T0 + timedelta(days=31),
        hold_days=30,
        expiry=NEVER,
    )
    assert (acct.available, acct.pending) == (10, 0)
    # The entry is dated when the sale happened (the contract's occur_time), not when recorded.
    assert acct.new_entries[0].occurred_time == T0


def test_return_inside_the_window_cancels_the_pending_points() -> None:
    acct = account()
    earn(acct, 100, T0, hold_days=30)
    result = acct.reverse_order(
        "order-1", 100, now=T0 + timedelta(days=3), policy=CLAW, reason="RETURN"
    )
    assert result == ReversalResult(100, 0)
    assert (acct.available, acct.pending, acct.reversed) == (0, 0, 100)
    entry = acct.new_entries[-1]
    assert entry.kind is EntryKind.REVERSE
    assert (entry.points, entry.pending_delta, entry.lot_id) == (0, -100, "lot-1")
    assert acct.lots == []
    acct.settle(T0 + timedelta(days=60), NEVER)
    assert kinds(acct) == [EntryKind.PENDING, EntryKind.REVERSE]


def test_partial_return_leaves_the_rest_pending() -> None:
    acct = account()
    earn(acct, 100, T0, hold_days=30)
    acct.reverse_order("order-1", 30, now=T0, policy=CLAW, reason="RETURN")
    assert (acct.available, acct.pending) == (0, 70)
    acct.settle(T0 + timedelta(days=30), NEVER)
    assert (acct.available, acct.pending) == (70, 0)


def test_reversal_beyond_pending_takes_the_rest_from_available() -> None:
    acct = account()
    earn(acct, 50, T0, order_id="old")
    earn(acct, 100, T0 + timedelta(days=1), order_id="new", hold_days=30)
    result = acct.reverse_order(
        "new", 120, now=T0 + timedelta(days=2), policy=CLAW, reason="ADJUSTED_PRICE"
    )
    assert result == ReversalResult(120, 0)
    assert (acct.available, acct.pending) == (30, 0)
    pending_part, available_part = acct.new_entries[-2:]
    assert (pending_part.points, pending_part.pending_delta) == (0, -100)
    assert (available_part.points, available_part.pending_delta) == (-20, 0)
    assert available_part.lot_id is None and available_part.order_id == "new"
    assert available_part.reason == "ADJUSTED_PRICE"


def test_reversal_takes_the_order_s_own_lot_first() -> None:
    acct = account()
    earn(acct, 50, T0, order_id="a")
    earn(acct, 50, T0 + timedelta(days=1), order_id="b")
    acct.reverse_order("b", 30, now=T0 + timedelta(days=2), policy=CLAW, reason="RETURN")
    assert remaining(acct) == {"lot-1": 50, "lot-2": 20}
    # More than the order's own lot: the rest comes oldest first.
    acct.reverse_order("b", 40, now=T0 + timedelta(days=2), policy=CLAW, reason="RETURN")
    assert remaining(acct) == {"lot-1": 30}


def test_claw_back_stops_at_zero_and_records_the_shortfall() -> None:
    acct = account()
    earn(acct, 100, T0)
    acct.redeem(80, now=T0, reason="reward:coffee")
    result = acct.reverse_order("order-1", 100, now=T0, policy=CLAW, reason="RETURN")
    assert result == ReversalResult(reversed_points=20, shortfall=80)
    entry = acct.new_entries[-1]
    assert (entry.points, entry.shortfall, entry.balance_after) == (-20, 80, 0)
    assert (acct.available, acct.reversed) == (0, 20)
    # Nothing left at all: the entry still records what could not be taken back.
    result = acct.reverse_order("order-1", 5, now=T0, policy=CLAW, reason="RETURN")
    assert result == ReversalResult(0, 5)
    assert (acct.new_entries[-1].points, acct.new_entries[-1].shortfall) == (0, 5)


def test_negative_balance_is_paid_back_by_the_next_points() -> None:
    acct = account()
    earn(acct, 100, T0)
    acct.redeem(80, now=T0, reason="reward")
    result = acct.reverse_order("order-1", 100, now=T0, policy=ALLOW, reason="RETURN")
    assert result == ReversalResult(100, 0)
    assert acct.available == -80
    assert acct.new_entries[-1].points == -100
    assert acct.lots == []

    earn(acct, 50, T0 + timedelta(days=1), order_id="o2")
    assert acct.available == -30
    assert acct.lots == []  # the whole new lot went to the debt
    assert [lot.remaining for lot in acct.new_lots()] == [0, 0]

    earn(acct, 50, T0 + timedelta(days=2), order_id="o3", hold_days=10)
    assert (acct.available, acct.pending) == (-30, 50)
    acct.settle(T0 + timedelta(days=20), NEVER)
    assert (acct.available, acct.pending) == (20, 0)
    assert remaining(acct) == {"lot-3": 20}


def test_redeem_spends_oldest_first() -> None:
    acct = account()
    earn(acct, 100, T0, order_id="a")
    earn(acct, 50, T0 + timedelta(days=30), order_id="b")
    earn(acct, 70, T0 + timedelta(days=1), order_id="c")
    acct.redeem(120, now=T0 + timedelta(days=40), reason="reward:blender", actor="pos-7")
    assert remaining(acct) == {"lot-2": 50, "lot-3": 50}
    assert (acct.available, acct.redeemed) == (100, 120)
    entry = acct.new_entries[-1]
    assert (entry.kind, entry.points, entry.reason, entry.actor) == (
        EntryKind.REDEEM,
        -120,
        "reward:blender",
        "pos-7",
    )
    assert acct.last_activity_time == T0 + timedelta(days=40)


def test_redeem_more_than_spendable_fails_without_side_effects() -> None:
    acct = account()
    earn(acct, 100, T0)
    acct.reserved = 30
    with pytest.raises(FailedPrecondition) as caught:
        acct.redeem(71, now=T0, reason="reward")
    assert caught.value.reason == "INSUFFICIENT_POINTS"
    assert caught.value.metadata == {"available": "100", "reserved": "30", "requested": "71"}
    assert (acct.available, len(acct.new_entries)) == (100, 1)
    acct.redeem(70, now=T0, reason="reward")
    assert acct.available == 30


def test_pending_points_cannot_be_redeemed() -> None:
    acct = account()
    earn(acct, 100, T0, hold_days=14)
    with pytest.raises(FailedPrecondition):
        acct.redeem(1, now=T0, reason="reward")


def test_expiry_twelve_months_after_earning() -> None:
    acct = account()
    earn(acct, 100, T0, order_id="a", expiry=TWELVE_MONTHS)
    earn(acct, 50, datetime(2025, 3, 15, tzinfo=UTC), order_id="b", expiry=TWELVE_MONTHS)
    acct.redeem(30, now=datetime(2025, 4, 1, tzinfo=UTC), reason="reward")

    acct.settle(datetime(2026, 1, 31, 9, 59, tzinfo=UTC), TWELVE_MONTHS)
    assert acct.available == 120
    acct.settle(datetime(2026, 2, 1, tzinfo=UTC), TWELVE_MONTHS)
    assert (acct.available, acct.expired) == (50, 70)
    entry = acct.new_entries[-1]
    assert entry.kind is EntryKind.EXPIRE
    assert (entry.points, entry.lot_id, entry.order_id) == (-70, "lot-1", "a")
    assert entry.occurred_time == datetime(2026, 1, 31, 10, tzinfo=UTC)
    assert entry.reason == "POINTS_EXPIRED"

    acct.settle(datetime(2027, 1, 1, tzinfo=UTC), TWELVE_MONTHS)
    assert (acct.available, acct.expired) == (0, 120)
    assert acct.lots == []


def test_settle_runs_releases_and_expiries_in_time_order() -> None:
    acct = account()
    # A debt, then a pending lot released before an older lot expires.
    earn(acct, 10, T0, order_id="a", expiry=TWELVE_MONTHS)
    acct.reverse_order("a", 25, now=T0, policy=ALLOW, reason="RETURN")
    assert acct.available == -15
    earn(acct, 40, T0 + timedelta(days=1), order_id="b", hold_days=30, expiry=TWELVE_MONTHS)
    acct.settle(datetime(2026, 12, 31, tzinfo=UTC), TWELVE_MONTHS)
    assert [(e.kind, e.points) for e in acct.new_entries[-2:]] == [
        (EntryKind.RELEASE, 40),
        (EntryKind.EXPIRE, -25),
    ]
    assert (acct.available, acct.expired) == (0, 25)
    times = [e.occurred_time for e in acct.new_entries[-2:]]
    assert times == sorted(times)


def test_inactivity_expiry() -> None:
    acct = account()
    earn(acct, 100, T0, expiry=SIX_MONTHS_IDLE)
    acct.redeem(10, now=datetime(2025, 3, 1, tzinfo=UTC), reason="reward")  # activity
    earn(acct, 5, datetime(2025, 2, 1, tzinfo=UTC), order_id="late", expiry=SIX_MONTHS_IDLE)
    assert acct.last_activity_time == datetime(2025, 3, 1, tzinfo=UTC)

    acct.settle(datetime(2025, 8, 31, tzinfo=UTC), SIX_MONTHS_IDLE)
    assert acct.available == 95
    acct.settle(datetime(2025, 9, 2, tzinfo=UTC), SIX_MONTHS_IDLE)
    assert (acct.available, acct.expired) == (0, 95)
    expiries = [e for e in acct.new_entries if e.kind is EntryKind.EXPIRE]
    assert [(e.points, e.reason) for e in expiries] == [(-90, "INACTIVITY"), (-5, "INACTIVITY")]
    assert {e.occurred_time for e in expiries} == {datetime(2025, 9, 1, tzinfo=UTC)}

    entries = len(acct.new_entries)
    acct.settle(datetime(2025, 9, 2, tzinfo=UTC), SIX_MONTHS_IDLE)
    assert len(acct.new_entries) == entries


def test_inactivity_spares_points_released_after_the_deadline() -> None:
    acct = account()
    acct.earn(
        50,
        order_id="a",
        earned_time=T0,
        now=T0,
        hold_days=400,
        expiry=ExpiryPolicy(ExpiryMode.AFTER_INACTIVITY, 1),
    )
    earn(acct, 10, T0, order_id="b")
    policy = ExpiryPolicy(ExpiryMode.AFTER_INACTIVITY, 1)
    later = T0 + timedelta(days=500)
    acct.settle(later, policy)
    assert (acct.available, acct.expired) == (50, 10)
    acct.settle(later, policy)
    assert acct.available == 50


def test_manual_credit_and_debit() -> None:
    acct = account()
    earn(acct, 100, T0)
    acct.adjust(25, now=T0, reason="GOODWILL", actor="agent:ann", expiry=TWELVE_MONTHS)
    assert (acct.available, acct.lifetime_earned) == (125, 100)
    entry = acct.new_entries[-1]
    assert (entry.kind, entry.points, entry.actor, entry.reason) == (
        EntryKind.ADJUST,
        25,
        "agent:ann",
        "GOODWILL",
    )
    assert acct.lots[-1].expires_time == datetime(2026, 1, 31, 10, tzinfo=UTC)

    acct.adjust(-110, now=T0, reason="DUPLICATE_ACCOUNT", actor="agent:bob", expiry=NEVER)
    assert acct.available == 15
    assert remaining(acct) == {"lot-2": 15}
    with pytest.raises(FailedPrecondition) as caught:
        acct.adjust(-16, now=T0, reason="X", actor="agent:bob", expiry=NEVER)
    assert caught.value.reason == "INSUFFICIENT_POINTS"


def test_manual_credit_pays_debt_first() -> None:
    acct = account()
    earn(acct, 10, T0)
    acct.reverse_order("order-1", 30, now=T0, policy=ALLOW, reason="RETURN")
    acct.adjust(50, now=T0, reason="GOODWILL", actor="agent", expiry=NEVER)
    assert acct.available == 30
    assert remaining(acct) == {"lot-2": 30}


@pytest.mark.parametrize("points", [0, -1])
def test_non_positive_points_are_rejected(points: int) -> None:
    acct = account()
    with pytest.raises(InvalidArgument):
        earn(acct, points, T0)
    with pytest.raises(InvalidArgument):
        acct.redeem(points, now=T0, reason="r")
    with pytest.raises(InvalidArgument):
        acct.reverse_order("o", points, now=T0, policy=CLAW, reason="r")
    assert acct.new_entries == []


def test_bad_adjustments_and_inputs_are_rejected() -> None:
    acct = account()
    with pytest.raises(InvalidArgument):
        acct.adjust(0, now=T0, reason="r", actor="a", expiry=NEVER)
    with pytest.raises(InvalidArgument):
        acct.adjust(5, now=T0, reason="", actor="a", expiry=NEVER)
    with pytest.raises(InvalidArgument):
        acct.adjust(5, now=T0, reason="r", actor="a", expiry=ExpiryPolicy(ExpiryMode.AFTER_EARNING))
    with pytest.raises(InvalidArgument):
        earn(acct, 5, T0, hold_days=-1)
    with pytest.raises(InvalidArgument):
        earn(acct, 5, datetime(2025, 1, 1))
    with pytest.raises(InvalidArgument):
        acct.settle(datetime(2025, 1, 1), NEVER)
    assert acct.new_entries == []


@pytest.mark.parametrize(
    ("policy", "ok"),
    [
        (ExpiryPolicy(), True),
        (ExpiryPolicy(ExpiryMode.AFTER_EARNING, 1), True),
        (ExpiryPolicy(ExpiryMode.AFTER_INACTIVITY, 120), True),
        (ExpiryPolicy(ExpiryMode.AFTER_EARNING, 0), False),
        (ExpiryPolicy(ExpiryMode.AFTER_INACTIVITY, 121), False),
    ],
)
def test_expiry_policy_validation(policy: ExpiryPolicy, ok: bool) -> None:
    if ok:
        policy.validate()
    else:
        with pytest.raises(InvalidArgument) as caught:
            policy.validate()
        assert caught.value.violations[0].field == "expiry_policy.months"


def test_storage_sees_new_and_changed_lots_separately() -> None:
    loaded = [
        PointsLot("old-1", "a", T0, T0, None, 100, 100, False),
        PointsLot("old-2", "b", T0 + timedelta(days=1), T0, None, 100, 40, False),
        PointsLot("old-3", "c", T0 + timedelta(days=2), T0, None, 10, 10, False),
    ]
    counter = itertools.count(1)
    acct = PointsAccount(
        available=150, lifetime_earned=210, lots=loaded, new_id=lambda: f"new-{next(counter)}"
    )
    earn(acct, 20, T0 + timedelta(days=3), order_id="d")
    acct.redeem(130, now=T0 + timedelta(days=3), reason="reward")
    assert acct.new_lot_ids == {"new-1"}
    assert acct.changed_lot_ids == {"old-1", "old-2"}
    # The emptied lot left the open lots but storage still gets it, to write remaining = 0.
    assert [lot.lot_id for lot in acct.changed_lots()] == ["old-1", "old-2"]
    assert [lot.remaining for lot in acct.changed_lots()] == [0, 10]
    assert [lot.lot_id for lot in acct.lots] == ["old-2", "old-3", "new-1"]

    acct.redeem(25, now=T0 + timedelta(days=3), reason="reward")
    # A lot created and changed in the same unit of work is only "new".
    assert acct.new_lot_ids == {"new-1"}
    assert "new-1" not in acct.changed_lot_ids
    assert [lot.remaining for lot in acct.new_lots()] == [15]
