"""Rewards and redemptions: protobuf <-> domain."""

from __future__ import annotations

from loyalty_engine.api.converters.common import optional_datetime, set_timestamp
from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.names import child_name, member_name, parse_child
from loyalty_engine.domain.rewards import (
    Ineligibility,
    Redemption,
    RedemptionState,
    Reward,
    RewardKind,
    RewardState,
)
from loyalty_engine.gen.loyalty.v1 import common_pb2
from loyalty_engine.gen.loyalty.v1 import reward_service_pb2 as pb
from loyalty_engine.services.rewards import MemberReward

KIND = {
    RewardKind.FIXED_DISCOUNT: pb.REWARD_KIND_FIXED_DISCOUNT,
    RewardKind.PERCENT_DISCOUNT: pb.REWARD_KIND_PERCENT_DISCOUNT,
    RewardKind.FREE_PRODUCT: pb.REWARD_KIND_FREE_PRODUCT,
    RewardKind.PHYSICAL_PRIZE: pb.REWARD_KIND_PHYSICAL_PRIZE,
    RewardKind.EXPERIENCE: pb.REWARD_KIND_EXPERIENCE,
}
KIND_FROM_PROTO = {v: k for k, v in KIND.items()}
STATE = {RewardState.ACTIVE: pb.REWARD_STATE_ACTIVE, RewardState.ARCHIVED: pb.REWARD_STATE_ARCHIVED}
REDEMPTION_STATE = {
    RedemptionState.RESERVED: pb.REDEMPTION_STATE_RESERVED,
    RedemptionState.CONFIRMED: pb.REDEMPTION_STATE_CONFIRMED,
    RedemptionState.CANCELLED: pb.REDEMPTION_STATE_CANCELLED,
    RedemptionState.EXPIRED: pb.REDEMPTION_STATE_EXPIRED,
    RedemptionState.FULFILLED: pb.REDEMPTION_STATE_FULFILLED,
}
INELIGIBILITY = {
    Ineligibility.POINTS_SHORT: pb.INELIGIBILITY_POINTS_SHORT,
    Ineligibility.TIER_TOO_LOW: pb.INELIGIBILITY_TIER_TOO_LOW,
    Ineligibility.OUT_OF_STOCK: pb.INELIGIBILITY_OUT_OF_STOCK,
    Ineligibility.LIMIT_REACHED: pb.INELIGIBILITY_LIMIT_REACHED,
    Ineligibility.NOT_AVAILABLE: pb.INELIGIBILITY_NOT_AVAILABLE,
}

REWARD_UPDATABLE = {
    "display_name",
    "description",
    "points_cost",
    "discount",
    "discount_percent",
    "sku",
    "min_tier",
    "start_time",
    "end_time",
    "limit_per_member",
    "stock",
    "unlimited_stock",
}


def reward_from_proto(program_id: str, reward_id: str, r: pb.Reward) -> Reward:
    """A domain Reward."""
    if r.kind not in KIND_FROM_PROTO:
        raise InvalidArgument.for_field("reward.kind", "is required: a known reward kind")
    min_tier = None
    if r.min_tier:
        tier = parse_child(r.min_tier, "tiers", "reward.min_tier")
        if tier.program_id != program_id:
            raise InvalidArgument.for_field("reward.min_tier", "must be a tier of the same program")
        min_tier = tier.resource_id
    if not r.unlimited_stock and r.stock < 0:
        raise InvalidArgument.for_field("reward.stock", "must not be negative")
    return Reward(
        reward_id=reward_id,
        display_name=r.display_name,
        description=r.description,
        points_cost=r.points_cost,
        kind=KIND_FROM_PROTO[r.kind],
        discount_minor=r.discount.amount_minor if r.HasField("discount") else 0,
        discount_currency=r.discount.currency_code if r.HasField("discount") else "",
        discount_percent=r.discount_percent,
        sku=r.sku,
        min_tier_id=min_tier,
        start_time=optional_datetime(r, "start_time", "reward.start_time"),
        end_time=optional_datetime(r, "end_time", "reward.end_time"),
        limit_per_member=r.limit_per_member,
        stock=None if r.unlimited_stock else r.stock,
    )


def reward_to_proto(program_id: str, reward: Reward) -> pb.Reward:
    """A Reward message."""
    msg = pb.Reward(
        name=child_name(program_id, "rewards", reward.reward_id),
        display_name=reward.display_name,
        description=reward.description,
        points_cost=reward.points_cost,
        kind=KIND[reward.kind],
        discount_percent=reward.discount_percent,
        sku=reward.sku,
        min_tier=child_name(program_id, "tiers", reward.min_tier_id) if reward.min_tier_id else "",
        limit_per_member=reward.limit_per_member,
        stock=reward.stock or 0,
        unlimited_stock=reward.stock is None,
        state=STATE[reward.state],
    )
    if reward.discount_minor:
        msg.discount.CopyFrom(
            common_pb2.Money(
                amount_minor=reward.discount_minor, currency_code=reward.discount_currency
            )
        )
    set_timestamp(msg.start_time, reward.start_time)
    set_timestamp(msg.end_time, reward.end_time)
    return msg


def member_reward_to_proto(program_id: str, item: MemberReward) -> pb.MemberReward:
    """A MemberReward message."""
    return pb.MemberReward(
        reward=reward_to_proto(program_id, item.reward),
        affordable=item.eligibility.ok,
        ineligibilities=[INELIGIBILITY[r] for r in item.eligibility.reasons],
        points_short=item.eligibility.points_short,
    )


def redemption_name(program_id: str, member_id: str, redemption_id: str) -> str:
    """`programs/{program}/members/{member}/redemptions/{redemption}`."""
    return f"{member_name(program_id, member_id)}/redemptions/{redemption_id}"


def redemption_to_proto(program_id: str, member_id: str, r: Redemption) -> pb.Redemption:
    """A Redemption message."""
    msg = pb.Redemption(
        name=redemption_name(program_id, member_id, r.redemption_id),
        reward=child_name(program_id, "rewards", r.reward_id) if r.reward_id else "",
        points=r.points,
        state=REDEMPTION_STATE[r.state],
        voucher_code=r.voucher_code,
        events=[pb.RedemptionEvent(state=REDEMPTION_STATE[e.state]) for e in r.events],
    )
    for event, message in zip(r.events, msg.events, strict=True):
        set_timestamp(message.event_time, event.time)
    set_timestamp(msg.expire_time, r.expire_time)
    return msg
