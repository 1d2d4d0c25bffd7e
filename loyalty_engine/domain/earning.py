"""Earning rules: how many points a purchase earns, and which rule earned each of them.

Semantics of :func:`compute_award`:

* Lines whose category is in ``policy.excluded_categories`` earn nothing and do not count
  towards the eligible amount. If the eligible amount is below ``policy.min_order_minor``
  the whole order earns nothing.
* Per eligible line, ``base = amount_minor * base_points / per_amount_minor``, kept as an
  exact fraction.
* Multipliers are additive on the base, never compounded, so a 2x tier, a 2x product rule
  and a 3x promotion give ``1 + 1 + 1 + 2 = 5`` times the base, not 12. Each applicable
  multiplier ``m`` (the tier's; every product rule matching the line by category or SKU;
  every promotion active at the purchase time whose categories include the line's, or that
  lists no categories) adds ``base * (m - 100) / 100`` as its own component.
* Fixed bonuses: a matching product rule adds ``bonus_points_per_unit * quantity`` to its
  line; an active promotion adds ``bonus_points`` once per order (not to any line) if at
  least one eligible line with a positive amount matches it.
* A multiplier below 100 gives a negative component. A line never earns less than zero:
  if its negative components outweigh its positive ones, the negative ones are scaled down
  proportionally so the line nets exactly zero. A 0x rule therefore cancels its line but
  cannot eat the points of other lines.
* Rounding (``policy.rounding``) happens once, on the exact order total. The rounded total
  is then shared out exactly, with the largest-remainder method (ties go to the earlier
  index), twice: over the components (base, tier, product rules, promotions, in that
  order) and over the lines (order-level bonuses are kept whole and apart). Per-line
  rounding would lose or invent points; this way ``sum(line_points) + order_level_points
  == total == sum(component points)`` always holds.
* Promotions are active on the half-open interval ``[start_time, end_time)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from fractions import Fraction

from loyalty_engine.domain.calendar import require_aware
from loyalty_engine.domain.errors import InvalidArgument, ViolationCollector
from loyalty_engine.domain.money import MAX_AMOUNT_MINOR

MAX_MULTIPLIER_PERCENT = 10_000
# Generous bounds that still reject typos (an extra zero or three) in a policy.
MAX_BASE_POINTS = 1_000_000
MAX_BONUS_POINTS = 10_000_000


class Rounding(StrEnum):
    """How the exact (fractional) order total becomes whole points."""

    FLOOR = "FLOOR"
    CEIL = "CEIL"
    HALF_UP = "HALF_UP"
    HALF_EVEN = "HALF_EVEN"


class ProductRuleKind(StrEnum):
    """What a product rule's ``match`` is compared with."""

    CATEGORY = "CATEGORY"
    SKU = "SKU"


@dataclass(frozen=True)
class LineItem:
    """One line of a purchase: ``quantity`` units of ``sku`` at ``unit_price_minor`` each."""

    sku: str
    category: str
    quantity: int
    unit_price_minor: int

    @property
    def amount_minor(self) -> int:
        """The line total in minor units."""
        return self.quantity * self.unit_price_minor


@dataclass(frozen=True)
class ProductRule:
    """Extra points on a category or SKU: a multiplier on the base and/or a bonus per unit."""

    rule_id: str
    name: str
    kind: ProductRuleKind
    match: str
    multiplier_percent: int = 100
    bonus_points_per_unit: int = 0

    def matches(self, line: LineItem) -> bool:
        """Whether this rule applies to ``line``."""
        if self.kind is ProductRuleKind.SKU:
            return line.sku == self.match
        return line.category == self.match


@dataclass(frozen=True)
class Promotion:
    """A time-boxed campaign: a multiplier on matching lines and/or a bonus per order."""

    promotion_id: str
    name: str
    start_time: datetime
    end_time: datetime
    multiplier_percent: int = 100
    bonus_points: int = 0
    categories: frozenset[str] = frozenset()

    def is_active(self, at: datetime) -> bool:
        """Whether ``at`` falls in ``[start_time, end_time)``."""
        return self.start_time <= at < self.end_time

    def matches(self, line: LineItem) -> bool:
        """Whether the promotion covers ``line``'s category (no categories = every one)."""
        return not self.categories or line.category in self.categories


@dataclass(frozen=True)
class EarningPolicy:
    """A program's earning rules: ``base_points`` per ``per_amount_minor`` spent, plus extras."""

    base_points: int = 1
    per_amount_minor: int = 100
    rounding: Rounding = Rounding.FLOOR
    min_order_minor: int = 0
    excluded_categories: frozenset[str] = frozenset()
    product_rules: tuple[ProductRule, ...] = ()
    promotions: tuple[Promotion, ...] = ()

    def validate(self, prefix: str = "earning_policy") -> None:
        """Raise one InvalidArgument naming every nonsensical field of the policy."""
        errors = ViolationCollector()
        if not 0 <= self.base_points <= MAX_BASE_POINTS:
            errors.add(f"{prefix}.base_points", f"must be between 0 and {MAX_BASE_POINTS}")
        if not 0 < self.per_amount_minor <= MAX_AMOUNT_MINOR:
            errors.add(f"{prefix}.per_amount_minor", f"must be between 1 and {MAX_AMOUNT_MINOR}")
        if not isinstance(self.rounding, Rounding):
            errors.add(f"{prefix}.rounding", "must be one of " + ", ".join(Rounding))
        if not 0 <= self.min_order_minor <= MAX_AMOUNT_MINOR:
            errors.add(f"{prefix}.min_order_minor", f"must be between 0 and {MAX_AMOUNT_MINOR}")
        if any(not category for category in self.excluded_categories):
            errors.add(f"{prefix}.excluded_categories", "must not contain an empty category")
        self._validate_product_rules(prefix, errors)
        self._validate_promotions(prefix, errors)
        errors.raise_if_any()

    def _validate_product_rules(self, prefix: str, errors: ViolationCollector) -> None:
        seen: set[str] = set()
        for i, rule in enumerate(self.product_rules):
            path = f"{prefix}.product_rules[{i}]"
            if not rule.rule_id:
                errors.add(f"{path}.rule_id", "must not be empty")
            elif rule.rule_id in seen:
                errors.add(f"{path}.rule_id", f"duplicate rule id {rule.rule_id!r}")
            seen.add(rule.rule_id)
            if not isinstance(rule.kind, ProductRuleKind):
                errors.add(f"{path}.kind", "must be one of " + ", ".join(ProductRuleKind))
            if not rule.match:
                errors.add(f"{path}.match", "must not be empty")
            _check_multiplier(errors, f"{path}.multiplier_percent", rule.multiplier_percent)
            if not 0 <= rule.bonus_points_per_unit <= MAX_BONUS_POINTS:
                errors.add(
                    f"{path}.bonus_points_per_unit", f"must be between 0 and {MAX_BONUS_POINTS}"
                )

    def _validate_promotions(self, prefix: str, errors: ViolationCollector) -> None:
        seen: set[str] = set()
        for i, promo in enumerate(self.promotions):
            path = f"{prefix}.promotions[{i}]"
            if not promo.promotion_id:
                errors.add(f"{path}.promotion_id", "must not be empty")
            elif promo.promotion_id in seen:
                errors.add(f"{path}.promotion_id", f"duplicate promotion id {promo.promotion_id!r}")
            seen.add(promo.promotion_id)
            aware = True
            for name, value in (("start_time", promo.start_time), ("end_time", promo.end_time)):
                if value.tzinfo is None or value.utcoffset() is None:
                    errors.add(f"{path}.{name}", "must be a timezone-aware (UTC) time")
                    aware = False
            if aware and promo.end_time <= promo.start_time:
                errors.add(f"{path}.end_time", "must be after start_time")
            _check_multiplier(errors, f"{path}.multiplier_percent", promo.multiplier_percent)
            if not 0 <= promo.bonus_points <= MAX_BONUS_POINTS:
                errors.add(f"{path}.bonus_points", f"must be between 0 and {MAX_BONUS_POINTS}")
            if any(not category for category in promo.categories):
                errors.add(f"{path}.categories", "must not contain an empty category")


def _check_multiplier(errors: ViolationCollector, path: str, value: int) -> None:
    if not 0 <= value <= MAX_MULTIPLIER_PERCENT:
        errors.add(path, f"must be between 0 and {MAX_MULTIPLIER_PERCENT} (percent)")


@dataclass(frozen=True)
class AwardComponent:
    """Points earned by one rule (``base``, ``tier:<id>``, ``product:<id>``, ``promotion:<id>``)."""

    rule_id: str
    label: str
    points: int


@dataclass(frozen=True)
class PointsAward:
    """What a purchase earns, broken down by rule and by line; the parts add up exactly."""

    total: int
    components: tuple[AwardComponent, ...]
    line_points: tuple[int, ...]
    order_level_points: int
    eligible_amount_minor: int


def format_multiplier(percent: int) -> str:
    """Render a multiplier for people: 150 -> ``"1.5x"``, 200 -> ``"2x"``."""
    whole, fraction = divmod(percent, 100)
    if fraction == 0:
        return f"{whole}x"
    return f"{whole}.{fraction:02d}".rstrip("0") + "x"


def round_points(value: Fraction, rounding: Rounding) -> int:
    """Round an exact points value to a whole number of points."""
    if rounding is Rounding.FLOOR:
        return math.floor(value)
    if rounding is Rounding.CEIL:
        return math.ceil(value)
    if rounding is Rounding.HALF_UP:
        # Half away from zero, the shop-counter rule; totals are never negative anyway.
        half_up = math.floor(abs(value) + Fraction(1, 2))
        return half_up if value >= 0 else -half_up
    return round(value)  # Fraction.__round__ rounds half to even


def allocate_largest_remainder(total: int, exact: Sequence[Fraction]) -> list[int]:
    """Share the integer ``total`` over ``exact`` values that sum to about ``total``.

    Each share is the floor of its exact value or one more; the extra points go to the
    largest fractional remainders, ties to the lower index. ``total`` must lie between
    the sum of the floors and that sum plus ``len(exact)``.
    """
    floors = [math.floor(value) for value in exact]
    extra = total - sum(floors)
    if not 0 <= extra <= len(exact):
        raise ValueError(f"cannot allocate {total} over values summing to {sum(exact)}")
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in by_remainder[:extra]:
        floors[i] += 1
    return floors


def cumulative_share(points: int, part: int, whole: int) -> int:
    """``floor(points * part / whole)``: the points attributable to ``part`` of ``whole`` units.

    Reversing a line whose returned quantity goes from ``a`` to ``b`` (of ``q`` bought)
    takes ``cumulative_share(p, b, q) - cumulative_share(p, a, q)``; the differences
    telescope, so returning everything in any number of steps reverses exactly ``p``.
    """
    if whole <= 0:
        raise InvalidArgument.for_field("whole", "must be positive")
    if not 0 <= part <= whole:
        raise InvalidArgument.for_field("part", f"must be between 0 and {whole}")
    return points * part // whole


def _validate_lines(lines: Sequence[LineItem]) -> None:
    errors = ViolationCollector()
    for i, line in enumerate(lines):
        if line.quantity <= 0:
            errors.add(f"lines[{i}].quantity", "must be positive")
        if line.unit_price_minor < 0:
            errors.add(f"lines[{i}].unit_price_minor", "must not be negative")
        elif line.amount_minor > MAX_AMOUNT_MINOR:
            errors.add(f"lines[{i}]", f"amount must not exceed {MAX_AMOUNT_MINOR} minor units")
        if not line.category:
            errors.add(f"lines[{i}].category", "must not be empty")
    errors.raise_if_any()


def _net_non_negative(contributions: dict[str, Fraction]) -> dict[str, Fraction]:
    """Scale a line's negative contributions down so that the line nets to at least zero."""
    positive = sum((v for v in contributions.values() if v > 0), Fraction(0))
    negative = -sum((v for v in contributions.values() if v < 0), Fraction(0))
    if negative <= positive:
        return contributions
    scale = positive / negative
    return {key: (v * scale if v < 0 else v) for key, v in contributions.items()}


def compute_award(
    policy: EarningPolicy,
    lines: Sequence[LineItem],
    purchase_time: datetime,
    tier_multiplier_percent: int = 100,
    tier_id: str | None = None,
    tier_name: str = "",
) -> PointsAward:
    """Points a purchase earns under ``policy`` (see the module docstring for the rules)."""
    policy.validate()
    require_aware(purchase_time, "purchase_time")
    _validate_lines(lines)
    if not 0 <= tier_multiplier_percent <= MAX_MULTIPLIER_PERCENT:
        raise InvalidArgument.for_field(
            "tier_multiplier_percent", f"must be between 0 and {MAX_MULTIPLIER_PERCENT}"
        )

    eligible = [line.category not in policy.excluded_categories for line in lines]
    eligible_amount = sum(line.amount_minor for line, ok in zip(lines, eligible, strict=True) if ok)
    if eligible_amount < policy.min_order_minor:
        return PointsAward(0, (), (0,) * len(lines), 0, eligible_amount)

    tier_key = f"tier:{tier_id}" if tier_id else "tier"
    labels: dict[str, str] = {"base": "Base points"}
    if tier_multiplier_percent != 100:
        tier_label = tier_name or tier_id or "Tier"
        labels[tier_key] = f"{tier_label} tier {format_multiplier(tier_multiplier_percent)}"
    for rule in policy.product_rules:
        labels[f"product:{rule.rule_id}"] = rule.name or rule.rule_id
    active = [promo for promo in policy.promotions if promo.is_active(purchase_time)]
    for promo in active:
        labels[f"promotion:{promo.promotion_id}"] = promo.name or promo.promotion_id
    # Component totals in label order: base, tier, product rules, promotions.
    component_exact: dict[str, Fraction] = dict.fromkeys(labels, Fraction(0))

    line_exact: list[Fraction] = []
    for line, ok in zip(lines, eligible, strict=True):
        if not ok:
            line_exact.append(Fraction(0))
            continue
        base = Fraction(line.amount_minor * policy.base_points, policy.per_amount_minor)
        contributions: dict[str, Fraction] = {"base": base}
        if tier_multiplier_percent != 100:
            contributions[tier_key] = base * (tier_multiplier_percent - 100) / 100
        for rule in policy.product_rules:
            if rule.matches(line):
                key = f"product:{rule.rule_id}"
                extra = base * (rule.multiplier_percent - 100) / 100
                contributions[key] = extra + rule.bonus_points_per_unit * line.quantity
        for promo in active:
            if promo.matches(line):
                key = f"promotion:{promo.promotion_id}"
                contributions[key] = base * (promo.multiplier_percent - 100) / 100
        contributions = _net_non_negative(contributions)
        for key, value in contributions.items():
            component_exact[key] += value
        line_exact.append(sum(contributions.values(), Fraction(0)))

    order_level = 0
    for promo in active:
        if promo.bonus_points and any(
            ok and line.amount_minor > 0 and promo.matches(line)
            for line, ok in zip(lines, eligible, strict=True)
        ):
            order_level += promo.bonus_points
            component_exact[f"promotion:{promo.promotion_id}"] += promo.bonus_points

    exact_total = sum(line_exact, Fraction(0)) + order_level
    total = max(0, round_points(exact_total, policy.rounding))
    keys = list(component_exact)
    component_points = allocate_largest_remainder(total, [component_exact[k] for k in keys])
    line_points = allocate_largest_remainder(total - order_level, line_exact)
    components = tuple(
        AwardComponent(rule_id=key, label=labels[key], points=points)
        for key, points in zip(keys, component_points, strict=True)
        if points != 0
    )
    return PointsAward(
        total=total,
        components=components,
        line_points=tuple(line_points),
        order_level_points=order_level,
        eligible_amount_minor=eligible_amount,
    )
