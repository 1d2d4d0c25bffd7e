"""The rewards catalog and redemption: one-call redemption, checkout holds, paying with points.

Every redemption write locks the member's account first and, for limited stock, the
reward's row second: one order for every path, so two redemptions never deadlock, the
member's points are never spent twice and the last unit goes to exactly one member.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from loyalty_engine.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from loyalty_engine.domain.money import MAX_AMOUNT_MINOR
from loyalty_engine.domain.names import check_resource_id
from loyalty_engine.domain.program import Program
from loyalty_engine.domain.rewards import (
    Eligibility,
    MemberStanding,
    Redemption,
    RedemptionEvent,
    RedemptionState,
    Reward,
    RewardState,
    eligibility,
    hold_duration,
    new_voucher_code,
    points_discount,
)
from loyalty_engine.services.members import get_member
from loyalty_engine.services.points import Balance, balance_view, lock_member, settle
from loyalty_engine.services.programs import get_program, load_program
from loyalty_engine.storage.repositories import LockedAccount
from loyalty_engine.storage.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class MemberReward:
    """A reward as one member sees it."""

    reward: Reward
    eligibility: Eligibility


@dataclass(frozen=True)
class RedemptionResult:
    """A redemption and the member's balance after it."""

    program_id: str
    member_id: str
    redemption: Redemption
    balance: Balance


def _reward_not_found(program_id: str, reward_id: str) -> NotFound:
    return NotFound("REWARD_NOT_FOUND", f"reward {reward_id!r} not found", {"program": program_id})


async def create_reward(uow: UnitOfWork, program_id: str, reward: Reward, now: datetime) -> Reward:
    """Add a reward to the catalog."""
    check_resource_id(reward.reward_id, "reward_id")
    program = await load_program(uow, program_id)
    _check_reward(program, reward)
    reward = replace(reward, state=RewardState.ACTIVE)
    if not await uow.rewards.add(program_id, reward, now):
        raise AlreadyExists("REWARD_EXISTS", f"reward {reward.reward_id!r} exists already")
    return reward


def _check_reward(program: Program, reward: Reward) -> None:
    reward.validate()
    if reward.discount_minor and reward.discount_currency != program.currency_code:
        raise InvalidArgument(
            reason="CURRENCY_MISMATCH",
            message=f"reward.discount.currency_code: the program uses {program.currency_code}",
            metadata={"field": "reward.discount.currency_code"},
        )
    if reward.min_tier_id and all(
        t.tier_id != reward.min_tier_id for t in program.tier_policy.tiers
    ):
        raise InvalidArgument.for_field("reward.min_tier", "names no tier of the program")


async def get_reward(uow: UnitOfWork, program_id: str, reward_id: str) -> Reward:
    """A reward, or NOT_FOUND."""
    reward = await uow.rewards.get(program_id, reward_id)
    if reward is None:
        await get_program(uow, program_id)
        raise _reward_not_found(program_id, reward_id)
    return reward


async def update_reward(uow: UnitOfWork, program_id: str, updated: Reward, now: datetime) -> Reward:
    """Replace a reward's settings; archived rewards stay archived."""
    current = await get_reward(uow, program_id, updated.reward_id)
    if updated.kind is not current.kind:
        raise InvalidArgument.for_field("reward.kind", "cannot be changed")
    program = await load_program(uow, program_id)
    updated = replace(updated, state=current.state)
    _check_reward(program, updated)
    await uow.rewards.update(program_id, updated, now)
    return updated


async def archive_reward(uow: UnitOfWork, program_id: str, reward_id: str, now: datetime) -> Reward:
    """Withdraw a reward: it can no longer be redeemed (existing redemptions stand)."""
    reward = replace(await get_reward(uow, program_id, reward_id), state=RewardState.ARCHIVED)
    await uow.rewards.update(program_id, reward, now)
    return reward


async def _standing(
    uow: UnitOfWork,
    program: Program,
    locked: LockedAccount,
    reward: Reward,
    now: datetime,
    counts: dict[str, int] | None = None,
) -> MemberStanding:
    policy = program.tier_policy
    tier_rank = policy.rank(locked.tier.tier_id) if locked.tier.tier_id else -1
    required = policy.rank(reward.min_tier_id) if reward.min_tier_id else -1
    if counts is None:
        counts = await uow.rewards.member_redemption_counts(
            program.program_id, locked.member_id, now
        )
    stock_left = None
    if reward.stock is not None:
        stock_left = reward.stock - await uow.rewards.active_holds(
            program.program_id, reward.reward_id, now
        )
    return MemberStanding(
        spendable_points=locked.account.spendable,
        tier_rank=tier_rank,
        required_tier_rank=required,
        member_redemptions=counts.get(reward.reward_id, 0),
        stock_left=stock_left,
    )


async def list_rewards(
    uow: UnitOfWork,
    program_id: str,
    member_id: str | None,
    after_id: str,
    limit: int,
    now: datetime,
) -> list[MemberReward]:
    """The catalog; for a member, each reward with whether they can redeem it and why not."""
    program = await load_program(uow, program_id)
    # Archived rewards are left out in the query, not after it: a page filtered after the
    # limit would come back short and end the listing early.
    rewards = await uow.rewards.list_after(
        program_id, after_id, limit, active_only=member_id is not None
    )
    if member_id is None:
        return [MemberReward(r, Eligibility((), 0)) for r in rewards]
    locked = await lock_member(uow, program, member_id)
    await settle(uow, program, locked, now)
    await uow.accounts.save(locked, now)
    counts = await uow.rewards.member_redemption_counts(program_id, member_id, now)
    return [
        MemberReward(r, eligibility(r, await _standing(uow, program, locked, r, now, counts), now))
        for r in rewards
    ]


async def _begin_redemption(
    uow: UnitOfWork, program_id: str, member_id: str, reward_id: str, now: datetime
) -> tuple[Program, LockedAccount, Reward]:
    """Lock the member, then the reward; settle; check the member may redeem it."""
    program = await load_program(uow, program_id)
    locked = await lock_member(uow, program, member_id)
    reward = await uow.rewards.get(program_id, reward_id, lock=True)
    if reward is None:
        raise _reward_not_found(program_id, reward_id)
    await settle(uow, program, locked, now)
    eligibility(reward, await _standing(uow, program, locked, reward, now), now).raise_first(
        reward_id
    )
    return program, locked, reward


async def _new_redemption(
    uow: UnitOfWork,
    program_id: str,
    member_id: str,
    reward: Reward | None,
    points: int,
    state: RedemptionState,
    now: datetime,
    expire_time: datetime | None = None,
    *,
    order_id: str = "",
    discount_minor: int = 0,
    currency_code: str = "",
) -> Redemption:
    redemption = Redemption(
        redemption_id=uuid.uuid4().hex[:20],
        reward_id=reward.reward_id if reward else None,
        points=points,
        state=state,
        create_time=now,
        expire_time=expire_time,
        order_id=order_id,
        discount_minor=discount_minor,
        currency_code=currency_code,
    )
    redemption.events.append(RedemptionEvent(state, now))
    if reward is not None and reward.issues_voucher:
        for _ in range(5):
            code = new_voucher_code()
            if await uow.rewards.claim_voucher(
                program_id, code, member_id, redemption.redemption_id
            ):
                redemption.voucher_code = code
                break
        else:  # 40 random bits colliding five times in a row means something is broken
            raise FailedPrecondition("VOUCHER_CODE_EXHAUSTED", "could not allocate a voucher code")
    await uow.rewards.add_redemption(program_id, member_id, redemption)
    return redemption


async def redeem_reward(
    uow: UnitOfWork, program_id: str, member_id: str, reward_id: str, now: datetime
) -> RedemptionResult:
    """Redeem at once: points taken, one unit of stock taken, the reward issued."""
    program, locked, reward = await _begin_redemption(uow, program_id, member_id, reward_id, now)
    locked.account.redeem(reward.points_cost, now=now, reason=f"REWARD {reward_id}")
    await uow.rewards.change_stock(program_id, reward_id, -1)
    redemption = await _new_redemption(
        uow, program_id, member_id, reward, reward.points_cost, RedemptionState.CONFIRMED, now
    )
    await uow.accounts.save(locked, now)
    return RedemptionResult(
        program_id, member_id, redemption, await balance_view(uow, program, locked, now)
    )


async def reserve_redemption(
    uow: UnitOfWork,
    program_id: str,
    member_id: str,
    reward_id: str,
    hold_seconds: int,
    now: datetime,
) -> RedemptionResult:
    """Hold points and one unit of stock for a checkout."""
    if hold_seconds < 0:
        raise InvalidArgument.for_field("hold_seconds", "must not be negative")
    program, locked, reward = await _begin_redemption(uow, program_id, member_id, reward_id, now)
    expire = now + hold_duration(hold_seconds, program.redemption_hold_seconds)
    redemption = await _new_redemption(
        uow,
        program_id,
        member_id,
        reward,
        reward.points_cost,
        RedemptionState.RESERVED,
        now,
        expire,
    )
    locked.account.reserved += reward.points_cost
    await uow.accounts.save(locked, now)
    return RedemptionResult(
        program_id, member_id, redemption, await balance_view(uow, program, locked, now)
    )


def _redemption_not_found(redemption_id: str) -> NotFound:
    return NotFound("REDEMPTION_NOT_FOUND", f"redemption {redemption_id!r} not found")


async def _locked_redemption(
    uow: UnitOfWork, program_id: str, member_id: str, redemption_id: str, now: datetime
) -> tuple[Program, LockedAccount, Redemption]:
    program = await load_program(uow, program_id)
    locked = await lock_member(uow, program, member_id)
    await settle(uow, program, locked, now)  # records a hold that ran out as EXPIRED
    redemption = await uow.rewards.get_redemption(program_id, member_id, redemption_id)
    if redemption is None:
        raise _redemption_not_found(redemption_id)
    return program, locked, redemption


_FINAL_REASONS = {
    RedemptionState.CONFIRMED: ("ALREADY_CONFIRMED", "the redemption was confirmed already"),
    RedemptionState.FULFILLED: ("ALREADY_CONFIRMED", "the redemption was confirmed and fulfilled"),
    RedemptionState.CANCELLED: ("ALREADY_CANCELLED", "the redemption was cancelled"),
    RedemptionState.EXPIRED: ("HOLD_EXPIRED", "the checkout hold ran out; reserve again"),
}


async def confirm_redemption(
    uow: UnitOfWork, program_id: str, member_id: str, redemption_id: str, now: datetime
) -> RedemptionResult:
    """Turn a hold into a redemption: the held points are spent, the held unit taken."""
    program, locked, redemption = await _locked_redemption(
        uow, program_id, member_id, redemption_id, now
    )
    if redemption.state is not RedemptionState.RESERVED:
        reason, message = _FINAL_REASONS[redemption.state]
        raise FailedPrecondition(reason, message, {"state": redemption.state.value})
    assert redemption.reward_id is not None
    await uow.rewards.get(program_id, redemption.reward_id, lock=True)
    locked.account.reserved -= redemption.points
    locked.account.redeem(redemption.points, now=now, reason=f"REWARD {redemption.reward_id}")
    await uow.rewards.change_stock(program_id, redemption.reward_id, -1)
    redemption.move_to(RedemptionState.CONFIRMED, now)
    await uow.rewards.save_state_change(program_id, member_id, redemption)
    await uow.accounts.save(locked, now)
    return RedemptionResult(
        program_id, member_id, redemption, await balance_view(uow, program, locked, now)
    )


async def cancel_redemption(
    uow: UnitOfWork, program_id: str, member_id: str, redemption_id: str, now: datetime
) -> RedemptionResult:
    """Release a hold, or roll back a confirmed redemption within the program's window."""
    program, locked, redemption = await _locked_redemption(
        uow, program_id, member_id, redemption_id, now
    )
    if redemption.state is RedemptionState.RESERVED:
        locked.account.reserved -= redemption.points
    elif redemption.state is RedemptionState.CONFIRMED:
        window = timedelta(days=program.redemption_cancel_window_days)
        if not window:
            raise FailedPrecondition(
                "ALREADY_CONFIRMED",
                "the redemption was confirmed and the program allows no rollback",
                {"state": redemption.state.value},
            )
        # The window runs from the confirmation (a checkout hold may have come long before).
        confirmed = next(
            (e.time for e in reversed(redemption.events) if e.state is RedemptionState.CONFIRMED),
            redemption.create_time,
        )
        if now > confirmed + window:
            raise FailedPrecondition(
                "CANCEL_WINDOW_PASSED",
                "the redemption can no longer be cancelled",
                {"window_days": str(program.redemption_cancel_window_days)},
            )
        locked.account.restore_redeemed(
            redemption.points,
            now=now,
            reason=f"CANCELLED {redemption.redemption_id}",
            expiry=program.expiry,
        )
        if redemption.reward_id is not None:
            await uow.rewards.get(program_id, redemption.reward_id, lock=True)
            await uow.rewards.change_stock(program_id, redemption.reward_id, +1)
    elif redemption.state is RedemptionState.EXPIRED:
        raise FailedPrecondition("HOLD_EXPIRED", "the checkout hold ran out already")
    else:
        reason, message = _FINAL_REASONS[redemption.state]
        raise FailedPrecondition(reason, message, {"state": redemption.state.value})
    redemption.move_to(RedemptionState.CANCELLED, now)
    await uow.rewards.save_state_change(program_id, member_id, redemption)
    await uow.accounts.save(locked, now)
    return RedemptionResult(
        program_id, member_id, redemption, await balance_view(uow, program, locked, now)
    )


async def fulfill_redemption(
    uow: UnitOfWork, program_id: str, member_id: str, redemption_id: str, now: datetime
) -> RedemptionResult:
    """Record that a physical prize or experience was delivered."""
    program, locked, redemption = await _locked_redemption(
        uow, program_id, member_id, redemption_id, now
    )
    reward = (
        await get_reward(uow, program_id, redemption.reward_id) if redemption.reward_id else None
    )
    if reward is None or reward.issues_voucher or redemption.state is not RedemptionState.CONFIRMED:
        raise FailedPrecondition(
            "NOT_FULFILLABLE", "only a confirmed physical prize or experience can be fulfilled"
        )
    redemption.move_to(RedemptionState.FULFILLED, now)
    await uow.rewards.save_state_change(program_id, member_id, redemption)
    await uow.accounts.save(locked, now)
    return RedemptionResult(
        program_id, member_id, redemption, await balance_view(uow, program, locked, now)
    )


async def get_redemption(
    uow: UnitOfWork, program_id: str, member_id: str, redemption_id: str, now: datetime
) -> Redemption:
    """A redemption with its history; a hold past its time reads as EXPIRED."""
    redemption = await uow.rewards.get_redemption(program_id, member_id, redemption_id)
    if redemption is None:
        await get_program(uow, program_id)
        raise _redemption_not_found(redemption_id)
    if redemption.state is RedemptionState.RESERVED and not redemption.holds_at(now):
        redemption.move_to(RedemptionState.EXPIRED, redemption.expire_time or now)
    return redemption


async def list_redemptions(
    uow: UnitOfWork,
    program_id: str,
    member_id: str,
    before: tuple[datetime, str] | None,
    limit: int,
    now: datetime,
) -> list[Redemption]:
    """A page of the member's redemptions with their histories, newest first."""
    await get_member(uow, program_id, member_id)
    page = await uow.rewards.list_redemptions(program_id, member_id, before, limit)
    events = await uow.rewards.events_of(program_id, member_id, [r.redemption_id for r in page])
    for redemption in page:
        redemption.events = events.get(redemption.redemption_id, [])
        # Read as GetRedemption reads it: a hold past its time is EXPIRED, at its expire time.
        if redemption.state is RedemptionState.RESERVED and not redemption.holds_at(now):
            redemption.move_to(RedemptionState.EXPIRED, redemption.expire_time or now)
    return page


async def redeem_points(
    uow: UnitOfWork,
    program_id: str,
    member_id: str,
    order_id: str,
    order_total_minor: int,
    currency_code: str,
    points: int,
    now: datetime,
) -> RedemptionResult:
    """Pay part of an order with points, at the program's rate and within its limits."""
    program = await load_program(uow, program_id)
    if not order_id or len(order_id) > 200 or not order_id.isprintable():
        raise InvalidArgument.for_field("order_id", "is required: 1-200 printable characters")
    if currency_code != program.currency_code:
        raise InvalidArgument(
            reason="CURRENCY_MISMATCH",
            message=f"order_total.currency_code: the program uses {program.currency_code}",
            metadata={"field": "order_total.currency_code"},
        )
    if not 0 < order_total_minor <= MAX_AMOUNT_MINOR:
        raise InvalidArgument.for_field(
            "order_total.amount_minor", f"must be 1 to {MAX_AMOUNT_MINOR}"
        )
    if not 0 < points <= 10**12:
        raise InvalidArgument.for_field("points", "must be positive")
    discount = points_discount(
        points,
        order_total_minor,
        program.point_value_minor_per_100_points,
        program.min_points_per_redemption,
        program.max_redemption_share_percent,
    )
    locked = await lock_member(uow, program, member_id)
    await settle(uow, program, locked, now)
    locked.account.redeem(points, now=now, reason=f"ORDER {order_id}")
    redemption = await _new_redemption(
        uow,
        program_id,
        member_id,
        None,
        points,
        RedemptionState.CONFIRMED,
        now,
        order_id=order_id,
        discount_minor=discount,
        currency_code=program.currency_code,
    )
    await uow.accounts.save(locked, now)
    return RedemptionResult(
        program_id, member_id, redemption, await balance_view(uow, program, locked, now)
    )
