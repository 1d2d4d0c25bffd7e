"""A program's configuration: the policies every purchase, return and expiry follows."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from loyalty_engine.domain.earning import EarningPolicy, ProductRule, ProductRuleKind, Promotion
from loyalty_engine.domain.errors import ViolationCollector
from loyalty_engine.domain.ledger import ExpiryPolicy, NegativeBalancePolicy
from loyalty_engine.domain.money import CURRENCY_EXPONENTS, MAX_AMOUNT_MINOR
from loyalty_engine.domain.rewards import MAX_HOLD_SECONDS
from loyalty_engine.domain.tiers import Tier, TierPolicy

DEFAULT_LATE_PURCHASE_WINDOW_DAYS = 30
MAX_LATE_PURCHASE_WINDOW_DAYS = 3650
MAX_PENDING_DAYS = 365


@dataclass(frozen=True)
class Program:
    """A tenant and its policies; tiers and earning rules are loaded beside it."""

    program_id: str
    display_name: str
    currency_code: str
    earning: EarningPolicy = field(default_factory=EarningPolicy)
    tier_policy: TierPolicy = field(default_factory=TierPolicy)
    expiry: ExpiryPolicy = field(default_factory=ExpiryPolicy)
    pending_days: int = 0
    negative_balance_policy: NegativeBalancePolicy = NegativeBalancePolicy.CLAW_BACK_TO_ZERO
    late_purchase_window_days: int = DEFAULT_LATE_PURCHASE_WINDOW_DAYS
    point_value_minor_per_100_points: int = 100
    redemption_hold_seconds: int = 0
    redemption_cancel_window_days: int = 0
    min_points_per_redemption: int = 0
    max_redemption_share_percent: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None

    def validate(self) -> None:
        """Raise one INVALID_ARGUMENT naming every bad setting."""
        errors = ViolationCollector()
        if not self.display_name.strip() or len(self.display_name) > 200:
            errors.add("program.display_name", "must be 1-200 characters")
        if self.currency_code not in CURRENCY_EXPONENTS:
            errors.add(
                "program.currency_code", "must be an ISO 4217 code", reason="UNKNOWN_CURRENCY"
            )
        if not 0 <= self.pending_days <= MAX_PENDING_DAYS:
            errors.add("program.pending_days", f"must be 0-{MAX_PENDING_DAYS}")
        if not 1 <= self.late_purchase_window_days <= MAX_LATE_PURCHASE_WINDOW_DAYS:
            errors.add(
                "program.late_purchase_window_days", f"must be 1-{MAX_LATE_PURCHASE_WINDOW_DAYS}"
            )
        if not 0 <= self.point_value_minor_per_100_points <= MAX_AMOUNT_MINOR:
            errors.add("program.point_value_minor_per_100_points", "must be 0 or more")
        if not 0 <= self.redemption_hold_seconds <= MAX_HOLD_SECONDS:
            errors.add("program.redemption_hold_seconds", f"must be 0-{MAX_HOLD_SECONDS}")
        if not 0 <= self.redemption_cancel_window_days <= 3650:
            errors.add("program.redemption_cancel_window_days", "must be 0-3650")
        if not 0 <= self.min_points_per_redemption <= 10**9:
            errors.add("program.min_points_per_redemption", "must be 0-1000000000")
        if not 0 <= self.max_redemption_share_percent <= 100:
            errors.add("program.max_redemption_share_percent", "must be 0-100")
        errors.raise_if_any()
        self.earning.validate("program.earning_policy")
        replace(self.tier_policy, tiers=()).validate("program.tier_policy")
        self.expiry.validate("program.expiry_policy")


class EarningRuleKind(StrEnum):
    """What an earning rule matches: a category, a SKU, or a time-boxed promotion."""

    CATEGORY = "CATEGORY"
    SKU = "SKU"
    PROMOTION = "PROMOTION"


@dataclass(frozen=True)
class EarningRule:
    """An earning rule as configured; becomes a ProductRule or a Promotion of the policy."""

    rule_id: str
    display_name: str
    kind: EarningRuleKind
    match: str = ""
    multiplier_percent: int = 100
    bonus_points_per_unit: int = 0
    bonus_points: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    categories: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise one INVALID_ARGUMENT naming every bad field (via the policy's own checks)."""
        errors = ViolationCollector()
        if not self.display_name.strip() or len(self.display_name) > 200:
            errors.add("earning_rule.display_name", "must be 1-200 characters")
        if self.kind is EarningRuleKind.PROMOTION:
            if self.start_time is None:
                errors.add("earning_rule.start_time", "is required for a promotion")
            if self.end_time is None:
                errors.add("earning_rule.end_time", "is required for a promotion")
            if self.bonus_points_per_unit:
                errors.add("earning_rule.bonus_points_per_unit", "is for category and SKU rules")
        else:
            if not self.match.strip() or len(self.match) > 200:
                errors.add("earning_rule.match", "must name a category or SKU (1-200 characters)")
            if self.bonus_points:
                errors.add("earning_rule.bonus_points", "is for promotions")
            if self.categories:
                errors.add("earning_rule.categories", "is for promotions")
        errors.raise_if_any()
        part = self.to_policy_part()
        if isinstance(part, Promotion):
            EarningPolicy(promotions=(part,)).validate("earning_rule")
        else:
            EarningPolicy(product_rules=(part,)).validate("earning_rule")

    def to_policy_part(self) -> ProductRule | Promotion:
        """The earning-policy piece this rule stands for."""
        if self.kind is EarningRuleKind.PROMOTION:
            assert self.start_time is not None and self.end_time is not None
            return Promotion(
                promotion_id=self.rule_id,
                name=self.display_name,
                start_time=self.start_time,
                end_time=self.end_time,
                multiplier_percent=self.multiplier_percent,
                bonus_points=self.bonus_points,
                categories=frozenset(self.categories),
            )
        return ProductRule(
            rule_id=self.rule_id,
            name=self.display_name,
            kind=ProductRuleKind(self.kind.value),
            match=self.match,
            multiplier_percent=self.multiplier_percent,
            bonus_points_per_unit=self.bonus_points_per_unit,
        )


def with_rules(program: Program, tiers: list[Tier], rules: list[EarningRule]) -> Program:
    """The program with its tiers and earning rules folded into its policies."""
    products = tuple(p for r in rules if isinstance(p := r.to_policy_part(), ProductRule))
    promotions = tuple(p for r in rules if isinstance(p := r.to_policy_part(), Promotion))
    ordered = tuple(sorted(tiers, key=lambda t: (t.threshold, t.tier_id)))
    return replace(
        program,
        earning=replace(program.earning, product_rules=products, promotions=promotions),
        tier_policy=replace(program.tier_policy, tiers=ordered),
    )
