"""Rewards and redemptions: what a member may redeem, and the life of a redemption.

A checkout hold (RESERVED) keeps points and one unit of stock until its expire time. Holds
are never released by a job: whether a hold still counts is derived from its expire time,
so an expired hold stops holding anything the instant it expires, and the next write on
the member merely records it as EXPIRED.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from loyalty_engine.domain.errors import FailedPrecondition, ViolationCollector
from loyalty_engine.domain.money import MAX_AMOUNT_MINOR

DEFAULT_HOLD_SECONDS = 900
MAX_HOLD_SECONDS = 7 * 24 * 3600
MAX_POINTS_COST = 10**9
# No 0/O, 1/I/L: codes are read aloud at tills and typed from receipts.
VOUCHER_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


class RewardKind(StrEnum):
    """What a reward gives."""

    FIXED_DISCOUNT = "FIXED_DISCOUNT"
    PERCENT_DISCOUNT = "PERCENT_DISCOUNT"
    FREE_PRODUCT = "FREE_PRODUCT"
    PHYSICAL_PRIZE = "PHYSICAL_PRIZE"
    EXPERIENCE = "EXPERIENCE"


class RewardState(StrEnum):
    """Whether a reward can be redeemed."""

    ACTIVE = "ACTIVE"
    ARCHIVED = "ARCHIVED"


class RedemptionState(StrEnum):
    """The life of a redemption."""

    RESERVED = "RESERVED"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    FULFILLED = "FULFILLED"


class Ineligibility(StrEnum):
    """Why a member cannot redeem a reward now; each maps to an error reason."""

    POINTS_SHORT = "INSUFFICIENT_POINTS"
    TIER_TOO_LOW = "TIER_TOO_LOW"
    OUT_OF_STOCK = "OUT_OF_STOCK"
    LIMIT_REACHED = "LIMIT_REACHED"
    NOT_AVAILABLE = "REWARD_NOT_AVAILABLE"


@dataclass(frozen=True)
class Reward:
    """A reward of a program's catalog. `stock` None means unlimited."""

    reward_id: str
    display_name: str
    points_cost: int
    kind: RewardKind
    description: str = ""
    discount_minor: int = 0
    discount_currency: str = ""
    discount_percent: int = 0
    sku: str = ""
    min_tier_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    limit_per_member: int = 0
    stock: int | None = None
    state: RewardState = RewardState.ACTIVE

    def validate(self) -> None:
        """Raise one INVALID_ARGUMENT naming every bad field."""
        errors = ViolationCollector()
        if not self.display_name.strip() or len(self.display_name) > 200:
            errors.add("reward.display_name", "must be 1-200 characters")
        if len(self.description) > 2000:
            errors.add("reward.description", "must be at most 2000 characters")
        if not 1 <= self.points_cost <= MAX_POINTS_COST:
            errors.add("reward.points_cost", f"must be between 1 and {MAX_POINTS_COST}")
        if (
            self.kind is RewardKind.FIXED_DISCOUNT
            and not 0 < self.discount_minor <= MAX_AMOUNT_MINOR
        ):
            errors.add("reward.discount", "a fixed discount needs a positive amount")
        if self.kind is RewardKind.PERCENT_DISCOUNT and not 1 <= self.discount_percent <= 100:
            errors.add("reward.discount_percent", "must be 1-100 for a percent discount")
        if self.kind is RewardKind.FREE_PRODUCT and not self.sku.strip():
            errors.add("reward.sku", "is required for a free product")
        if len(self.sku) > 200:
            errors.add("reward.sku", "must be at most 200 characters")
        if self.start_time and self.end_time and self.end_time <= self.start_time:
            errors.add("reward.end_time", "must be after start_time")
        if not 0 <= self.limit_per_member <= 1_000_000:
            errors.add("reward.limit_per_member", "must be 0 (no limit) to 1000000")
        if self.stock is not None and not 0 <= self.stock <= 10**12:
            errors.add("reward.stock", "must not be negative")
        errors.raise_if_any()

    def is_available(self, now: datetime) -> bool:
        """Active and inside its validity window."""
        if self.state is not RewardState.ACTIVE:
            return False
        if self.start_time is not None and now < self.start_time:
            return False
        return self.end_time is None or now < self.end_time

    @property
    def issues_voucher(self) -> bool:
        """Discount rewards give the shop a code to apply."""
        return self.kind in (
            RewardKind.FIXED_DISCOUNT,
            RewardKind.PERCENT_DISCOUNT,
            RewardKind.FREE_PRODUCT,
        )


@dataclass(frozen=True)
class MemberStanding:
    """What eligibility depends on, for one member and one reward, at one instant."""

    spendable_points: int
    tier_rank: int  # -1 for no tier
    required_tier_rank: int  # -1 when the reward has no minimum tier
    member_redemptions: int  # active holds and confirmed redemptions of this reward
    stock_left: int | None  # None for unlimited; held units already subtracted


@dataclass(frozen=True)
class Eligibility:
    """Whether a member can redeem a reward now, and every reason why not."""

    reasons: tuple[Ineligibility, ...]
    points_short: int

    @property
    def ok(self) -> bool:
        """True when nothing stands in the way."""
        return not self.reasons

    def raise_first(self, reward_id: str) -> None:
        """Raise FAILED_PRECONDITION with the most useful reason first."""
        if self.ok:
            return
        reason = self.reasons[0]
        messages = {
            Ineligibility.NOT_AVAILABLE: f"reward {reward_id!r} cannot be redeemed now",
            Ineligibility.TIER_TOO_LOW: f"reward {reward_id!r} needs a higher tier",
            Ineligibility.OUT_OF_STOCK: f"reward {reward_id!r} is out of stock",
            Ineligibility.LIMIT_REACHED: f"the member reached the limit for reward {reward_id!r}",
            Ineligibility.POINTS_SHORT: f"{self.points_short} points short of reward {reward_id!r}",
        }
        metadata = {"reward": reward_id}
        if reason is Ineligibility.POINTS_SHORT:
            metadata["points_short"] = str(self.points_short)
        raise FailedPrecondition(reason.value, messages[reason], metadata)


def eligibility(reward: Reward, standing: MemberStanding, now: datetime) -> Eligibility:
    """Every reason the member cannot redeem `reward` now (none: they can)."""
    reasons: list[Ineligibility] = []
    if not reward.is_available(now):
        reasons.append(Ineligibility.NOT_AVAILABLE)
    if standing.required_tier_rank >= 0 and standing.tier_rank < standing.required_tier_rank:
        reasons.append(Ineligibility.TIER_TOO_LOW)
    if standing.stock_left is not None and standing.stock_left <= 0:
        reasons.append(Ineligibility.OUT_OF_STOCK)
    if reward.limit_per_member and standing.member_redemptions >= reward.limit_per_member:
        reasons.append(Ineligibility.LIMIT_REACHED)
    short = max(0, reward.points_cost - standing.spendable_points)
    if short:
        reasons.append(Ineligibility.POINTS_SHORT)
    return Eligibility(tuple(reasons), short)


@dataclass(frozen=True)
class RedemptionEvent:
    """A state a redemption entered, and when."""

    state: RedemptionState
    time: datetime


@dataclass
class Redemption:
    """A member's redemption of a reward (or of points for a discount, reward_id None)."""

    redemption_id: str
    reward_id: str | None
    points: int
    state: RedemptionState
    create_time: datetime
    expire_time: datetime | None = None
    voucher_code: str = ""
    order_id: str = ""
    discount_minor: int = 0
    currency_code: str = ""
    events: list[RedemptionEvent] = field(default_factory=list)

    def holds_at(self, now: datetime) -> bool:
        """Whether this is a checkout hold still in force at `now`."""
        return (
            self.state is RedemptionState.RESERVED
            and self.expire_time is not None
            and now < self.expire_time
        )

    def move_to(self, state: RedemptionState, when: datetime) -> None:
        """Enter a new state, recording when."""
        self.state = state
        self.events.append(RedemptionEvent(state, when))


def hold_duration(requested_seconds: int, program_default_seconds: int) -> timedelta:
    """How long a checkout hold lasts: the request's, else the program's, else 15 minutes."""
    seconds = requested_seconds or program_default_seconds or DEFAULT_HOLD_SECONDS
    return timedelta(seconds=min(seconds, MAX_HOLD_SECONDS))


def new_voucher_code(prefix: str = "RW") -> str:
    """A hard-to-guess code of unambiguous characters (40 bits), such as RW-7KQ2-9XZD."""
    chars = "".join(secrets.choice(VOUCHER_ALPHABET) for _ in range(8))
    return f"{prefix}-{chars[:4]}-{chars[4:]}"


def points_discount(
    points: int,
    order_total_minor: int,
    value_minor_per_100_points: int,
    min_points: int,
    max_share_percent: int,
) -> int:
    """The discount `points` buy on an order, or FAILED_PRECONDITION (BELOW_MINIMUM, ...)."""
    if points < max(1, min_points):
        raise FailedPrecondition(
            "BELOW_MINIMUM", f"at least {max(1, min_points)} points must be redeemed at once"
        )
    discount = points * value_minor_per_100_points // 100
    if discount <= 0:
        raise FailedPrecondition("BELOW_MINIMUM", "these points are worth less than one minor unit")
    share = max_share_percent or 100
    limit = order_total_minor * share // 100
    if discount > limit:
        raise FailedPrecondition(
            "ABOVE_MAXIMUM_SHARE",
            f"points may pay at most {share}% of the order ({limit} minor units)",
            {"max_discount_minor": str(limit)},
        )
    return discount
