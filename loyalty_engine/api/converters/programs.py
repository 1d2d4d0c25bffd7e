"""Programs, tiers and earning rules: protobuf <-> domain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from loyalty_engine.api.converters.common import optional_datetime, set_timestamp
from loyalty_engine.domain.earning import EarningPolicy, Rounding
from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.ledger import ExpiryMode, ExpiryPolicy, NegativeBalancePolicy
from loyalty_engine.domain.names import child_name, program_name
from loyalty_engine.domain.program import (
    DEFAULT_LATE_PURCHASE_WINDOW_DAYS,
    EarningRule,
    EarningRuleKind,
    Program,
)
from loyalty_engine.domain.tiers import DowngradeMode, QualifyingMetric, Tier, TierPolicy
from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pb

_ROUNDING = {
    pb.ROUNDING_UNSPECIFIED: Rounding.FLOOR,
    pb.ROUNDING_FLOOR: Rounding.FLOOR,
    pb.ROUNDING_CEIL: Rounding.CEIL,
    pb.ROUNDING_HALF_UP: Rounding.HALF_UP,
    pb.ROUNDING_HALF_EVEN: Rounding.HALF_EVEN,
}
_METRIC = {
    pb.QUALIFYING_METRIC_UNSPECIFIED: QualifyingMetric.SPEND,
    pb.QUALIFYING_METRIC_SPEND: QualifyingMetric.SPEND,
    pb.QUALIFYING_METRIC_POINTS: QualifyingMetric.POINTS,
}
_DOWNGRADE = {
    pb.DOWNGRADE_MODE_UNSPECIFIED: DowngradeMode.ONE_STEP,
    pb.DOWNGRADE_MODE_ONE_STEP: DowngradeMode.ONE_STEP,
    pb.DOWNGRADE_MODE_TO_QUALIFYING: DowngradeMode.TO_QUALIFYING,
}
_EXPIRY = {
    pb.EXPIRY_MODE_UNSPECIFIED: ExpiryMode.NEVER,
    pb.EXPIRY_MODE_NEVER: ExpiryMode.NEVER,
    pb.EXPIRY_MODE_AFTER_EARNING: ExpiryMode.AFTER_EARNING,
    pb.EXPIRY_MODE_AFTER_INACTIVITY: ExpiryMode.AFTER_INACTIVITY,
}
_NEGATIVE = {
    pb.NEGATIVE_BALANCE_POLICY_UNSPECIFIED: NegativeBalancePolicy.CLAW_BACK_TO_ZERO,
    pb.NEGATIVE_BALANCE_POLICY_CLAW_BACK_TO_ZERO: NegativeBalancePolicy.CLAW_BACK_TO_ZERO,
    pb.NEGATIVE_BALANCE_POLICY_ALLOW_NEGATIVE: NegativeBalancePolicy.ALLOW_NEGATIVE,
}
T = TypeVar("T")

_RULE_KIND = {
    pb.EARNING_RULE_KIND_CATEGORY: EarningRuleKind.CATEGORY,
    pb.EARNING_RULE_KIND_SKU: EarningRuleKind.SKU,
    pb.EARNING_RULE_KIND_PROMOTION: EarningRuleKind.PROMOTION,
}


def _reverse(table: Mapping[Any, T]) -> dict[T, Any]:
    out: dict[T, Any] = {}
    for number, value in table.items():
        if number != 0:
            out.setdefault(value, number)
    return out


def _lookup(table: Mapping[Any, T], number: int, field: str) -> T:
    if number not in table:
        raise InvalidArgument.for_field(field, f"unknown enum value {number}")
    return table[number]


def program_from_proto(program_id: str, p: pb.Program) -> Program:
    """A domain Program from its message (defaults for unset fields)."""
    e, tp, x = p.earning_policy, p.tier_policy, p.expiry_policy
    return Program(
        program_id=program_id,
        display_name=p.display_name,
        currency_code=p.currency_code,
        earning=EarningPolicy(
            base_points=e.base_points if p.HasField("earning_policy") else 1,
            per_amount_minor=e.per_amount_minor if p.HasField("earning_policy") else 100,
            rounding=_lookup(_ROUNDING, e.rounding, "program.earning_policy.rounding"),
            min_order_minor=e.min_order_minor,
            excluded_categories=frozenset(e.excluded_categories),
        ),
        tier_policy=TierPolicy(
            metric=_lookup(_METRIC, tp.metric, "program.tier_policy.metric"),
            window_months=tp.window_months or 12,
            grace_days=tp.grace_days,
            downgrade_mode=_lookup(
                _DOWNGRADE, tp.downgrade_mode, "program.tier_policy.downgrade_mode"
            ),
        ),
        expiry=ExpiryPolicy(
            mode=_lookup(_EXPIRY, x.mode, "program.expiry_policy.mode"),
            months=x.months,
        ),
        pending_days=p.pending_days,
        negative_balance_policy=_lookup(
            _NEGATIVE, p.negative_balance_policy, "program.negative_balance_policy"
        ),
        late_purchase_window_days=p.late_purchase_window_days or DEFAULT_LATE_PURCHASE_WINDOW_DAYS,
        point_value_minor_per_100_points=p.point_value_minor_per_100_points,
        redemption_hold_seconds=p.redemption_hold_seconds,
        redemption_cancel_window_days=p.redemption_cancel_window_days,
        min_points_per_redemption=p.min_points_per_redemption,
        max_redemption_share_percent=p.max_redemption_share_percent,
    )


def program_to_proto(program: Program) -> pb.Program:
    """A Program message."""
    msg = pb.Program(
        name=program_name(program.program_id),
        display_name=program.display_name,
        currency_code=program.currency_code,
        earning_policy=pb.EarningPolicy(
            base_points=program.earning.base_points,
            per_amount_minor=program.earning.per_amount_minor,
            rounding=_reverse(_ROUNDING)[program.earning.rounding],
            min_order_minor=program.earning.min_order_minor,
            excluded_categories=sorted(program.earning.excluded_categories),
        ),
        tier_policy=pb.TierPolicy(
            metric=_reverse(_METRIC)[program.tier_policy.metric],
            window_months=program.tier_policy.window_months,
            grace_days=program.tier_policy.grace_days,
            downgrade_mode=_reverse(_DOWNGRADE)[program.tier_policy.downgrade_mode],
        ),
        expiry_policy=pb.ExpiryPolicy(
            mode=_reverse(_EXPIRY)[program.expiry.mode],
            months=program.expiry.months,
        ),
        pending_days=program.pending_days,
        negative_balance_policy=_reverse(_NEGATIVE)[program.negative_balance_policy],
        late_purchase_window_days=program.late_purchase_window_days,
        point_value_minor_per_100_points=program.point_value_minor_per_100_points,
        redemption_hold_seconds=program.redemption_hold_seconds,
        redemption_cancel_window_days=program.redemption_cancel_window_days,
        min_points_per_redemption=program.min_points_per_redemption,
        max_redemption_share_percent=program.max_redemption_share_percent,
    )
    set_timestamp(msg.create_time, program.create_time)
    set_timestamp(msg.update_time, program.update_time)
    return msg


PROGRAM_UPDATABLE = {
    "display_name",
    "earning_policy",
    "tier_policy",
    "expiry_policy",
    "pending_days",
    "negative_balance_policy",
    "late_purchase_window_days",
    "point_value_minor_per_100_points",
    "redemption_hold_seconds",
    "redemption_cancel_window_days",
    "min_points_per_redemption",
    "max_redemption_share_percent",
}


def tier_from_proto(tier_id: str, t: pb.Tier) -> Tier:
    """A domain Tier (multiplier 0 means the default 1x)."""
    return Tier(
        tier_id=tier_id,
        name=t.display_name,
        threshold=t.threshold,
        multiplier_percent=t.multiplier_percent or 100,
        perks=t.perks,
    )


def tier_to_proto(program_id: str, tier: Tier) -> pb.Tier:
    """A Tier message."""
    return pb.Tier(
        name=child_name(program_id, "tiers", tier.tier_id),
        display_name=tier.name,
        threshold=tier.threshold,
        multiplier_percent=tier.multiplier_percent,
        perks=tier.perks,
    )


TIER_UPDATABLE = {"display_name", "threshold", "multiplier_percent", "perks"}


def rule_from_proto(rule_id: str, r: pb.EarningRule) -> EarningRule:
    """A domain EarningRule."""
    kind = _lookup(_RULE_KIND, r.kind, "earning_rule.kind")
    return EarningRule(
        rule_id=rule_id,
        display_name=r.display_name,
        kind=kind,
        match=r.match,
        multiplier_percent=r.multiplier_percent or 100,
        bonus_points_per_unit=r.bonus_points_per_unit,
        bonus_points=r.bonus_points,
        start_time=optional_datetime(r, "start_time", "earning_rule.start_time"),
        end_time=optional_datetime(r, "end_time", "earning_rule.end_time"),
        categories=tuple(r.categories),
    )


def rule_to_proto(program_id: str, rule: EarningRule) -> pb.EarningRule:
    """An EarningRule message."""
    msg = pb.EarningRule(
        name=child_name(program_id, "earningRules", rule.rule_id),
        display_name=rule.display_name,
        kind=_reverse(_RULE_KIND)[rule.kind],
        match=rule.match,
        multiplier_percent=rule.multiplier_percent,
        bonus_points_per_unit=rule.bonus_points_per_unit,
        bonus_points=rule.bonus_points,
        categories=list(rule.categories),
    )
    set_timestamp(msg.start_time, rule.start_time)
    set_timestamp(msg.end_time, rule.end_time)
    return msg


RULE_UPDATABLE = {
    "display_name",
    "match",
    "multiplier_percent",
    "bonus_points_per_unit",
    "bonus_points",
    "start_time",
    "end_time",
    "categories",
}
