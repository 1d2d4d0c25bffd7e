"""Tiers: qualifying for a tier, keeping it, and losing it.

A member qualifies on a value (spend in minor units, or points earned) measured over a
rolling window of ``window_months``; the caller measures it, this module only decides.

* Upgrades happen at once, at the purchase that crosses a threshold
  (:meth:`TierPolicy.after_purchase`); the new tier is then guaranteed for one window:
  its review time is ``purchase_time + window_months``.
* Downgrades happen only at review (:meth:`TierPolicy.review`), once ``now`` has reached
  ``review_time + grace_days``. A member who still qualifies for the current tier (or a
  higher one) keeps it; otherwise they drop one tier (``ONE_STEP``) or straight to the
  tier the value qualifies for (``TO_QUALIFYING``), which is no tier at all if the value is
  below the lowest threshold. Reviews never upgrade: that is the purchase path's job.
* After a review the next review time is the old one advanced by whole windows until it
  lies after ``now``, so review dates stay on the member's original anniversary even when
  reviews run late. A member who drops out of every tier has no review time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from loyalty_engine.domain.calendar import add_days, add_months, require_aware
from loyalty_engine.domain.errors import NotFound, ViolationCollector
from loyalty_engine.domain.money import format_money

MAX_WINDOW_MONTHS = 120
MAX_GRACE_DAYS = 3650
MAX_TIER_MULTIPLIER_PERCENT = 10_000


class QualifyingMetric(StrEnum):
    """What a tier threshold measures."""

    SPEND = "SPEND"
    POINTS = "POINTS"


class DowngradeMode(StrEnum):
    """How far a member falls at a review they fail."""

    ONE_STEP = "ONE_STEP"
    TO_QUALIFYING = "TO_QUALIFYING"


class TierChangeReason(StrEnum):
    """Why a tier decision came out the way it did."""

    UPGRADE = "UPGRADE"
    DOWNGRADE = "DOWNGRADE"
    RETAINED = "RETAINED"
    NONE = "NONE"


@dataclass(frozen=True)
class Tier:
    """One level of the program, reached at ``threshold`` (minor units of spend, or points)."""

    tier_id: str
    name: str
    threshold: int
    multiplier_percent: int = 100
    perks: str = ""


@dataclass(frozen=True)
class TierState:
    """A member's tier and when it is next reviewed (both None: no tier)."""

    tier_id: str | None
    review_time: datetime | None


@dataclass(frozen=True)
class TierChange:
    """The outcome of a tier decision; ``after``/``review_time`` are the new state."""

    before: str | None
    after: str | None
    review_time: datetime | None
    reason: str

    @property
    def changed(self) -> bool:
        """Whether the member's tier differs from before."""
        return self.before != self.after

    @property
    def state(self) -> TierState:
        """The member's tier state after this change."""
        return TierState(self.after, self.review_time)


@dataclass(frozen=True)
class TierProgress:
    """How far a member is from the next tier up."""

    next_tier: Tier
    value: int
    needed: int
    metric: QualifyingMetric
    window_months: int

    def describe(self, currency: str = "") -> str:
        """A sentence for the member; ``currency`` is required when the metric is SPEND."""
        if self.needed == 0:
            return f"you qualify for {self.next_tier.name}"
        window = "month" if self.window_months == 1 else f"{self.window_months} months"
        if self.metric is QualifyingMetric.SPEND:
            amount = format_money(self.needed, currency)
            return f"spend {amount} more in the next {window} to reach {self.next_tier.name}"
        unit = "point" if self.needed == 1 else "points"
        return f"earn {self.needed} more {unit} in the next {window} to reach {self.next_tier.name}"


@dataclass(frozen=True)
class TierPolicy:
    """A program's tiers (ascending by threshold; may be empty) and how they are kept."""

    tiers: tuple[Tier, ...] = ()
    metric: QualifyingMetric = QualifyingMetric.SPEND
    window_months: int = 12
    grace_days: int = 0
    downgrade_mode: DowngradeMode = DowngradeMode.ONE_STEP

    def validate(self, prefix: str = "tier_policy") -> None:
        """Raise one InvalidArgument naming every nonsensical field of the policy."""
        errors = ViolationCollector()
        seen: set[str] = set()
        for i, tier in enumerate(self.tiers):
            path = f"{prefix}.tiers[{i}]"
            if not tier.tier_id:
                errors.add(f"{path}.tier_id", "must not be empty")
            elif tier.tier_id in seen:
                errors.add(f"{path}.tier_id", f"duplicate tier id {tier.tier_id!r}")
            seen.add(tier.tier_id)
            if not tier.name or len(tier.name) > 200 or not tier.name.isprintable():
                errors.add(f"{path}.name", "must be 1-200 printable characters")
            if len(tier.perks) > 2000:
                errors.add(f"{path}.perks", "must be at most 2000 characters")
            if i == 0 and tier.threshold < 0:
                errors.add(f"{path}.threshold", "must not be negative")
            if i > 0 and tier.threshold <= self.tiers[i - 1].threshold:
                errors.add(f"{path}.threshold", "must be greater than the previous tier's")
            if not 0 <= tier.multiplier_percent <= MAX_TIER_MULTIPLIER_PERCENT:
                errors.add(
                    f"{path}.multiplier_percent",
                    f"must be between 0 and {MAX_TIER_MULTIPLIER_PERCENT} (percent)",
                )
        if not isinstance(self.metric, QualifyingMetric):
            errors.add(f"{prefix}.metric", "must be one of " + ", ".join(QualifyingMetric))
        if not 1 <= self.window_months <= MAX_WINDOW_MONTHS:
            errors.add(f"{prefix}.window_months", f"must be between 1 and {MAX_WINDOW_MONTHS}")
        if not 0 <= self.grace_days <= MAX_GRACE_DAYS:
            errors.add(f"{prefix}.grace_days", f"must be between 0 and {MAX_GRACE_DAYS}")
        if not isinstance(self.downgrade_mode, DowngradeMode):
            errors.add(f"{prefix}.downgrade_mode", "must be one of " + ", ".join(DowngradeMode))
        errors.raise_if_any()

    def rank(self, tier_id: str) -> int:
        """Position of ``tier_id`` from the bottom (0 = lowest); NotFound if unknown."""
        for i, tier in enumerate(self.tiers):
            if tier.tier_id == tier_id:
                return i
        raise NotFound(
            reason="TIER_NOT_FOUND",
            message=f"tier {tier_id!r} is not part of the program",
            metadata={"tier_id": tier_id},
        )

    def tier(self, tier_id: str) -> Tier:
        """The tier named ``tier_id``; NotFound if unknown."""
        return self.tiers[self.rank(tier_id)]

    def qualifying_tier(self, value: int) -> Tier | None:
        """The highest tier whose threshold ``value`` reaches, or None."""
        best: Tier | None = None
        for tier in self.tiers:
            if tier.threshold > value:
                break
            best = tier
        return best

    def _rank_of(self, tier_id: str | None) -> int:
        return -1 if tier_id is None else self.rank(tier_id)

    def after_purchase(self, current: TierState, value: int, purchase_time: datetime) -> TierChange:
        """Upgrade at once if ``value`` now qualifies for a higher tier; never downgrade."""
        require_aware(purchase_time, "purchase_time")
        qualifying = self.qualifying_tier(value)
        if qualifying is None or self.rank(qualifying.tier_id) <= self._rank_of(current.tier_id):
            return TierChange(
                current.tier_id, current.tier_id, current.review_time, TierChangeReason.NONE
            )
        return TierChange(
            before=current.tier_id,
            after=qualifying.tier_id,
            review_time=add_months(purchase_time, self.window_months),
            reason=TierChangeReason.UPGRADE,
        )

    def review(self, current: TierState, value: int, now: datetime) -> TierChange:
        """At the review date (plus grace) keep the tier if ``value`` still earns it, else drop."""
        require_aware(now, "now")
        unchanged = TierChange(
            current.tier_id, current.tier_id, current.review_time, TierChangeReason.NONE
        )
        if current.tier_id is None or current.review_time is None:
            return unchanged
        if now < add_days(current.review_time, self.grace_days):
            return unchanged
        current_rank = self.rank(current.tier_id)
        qualifying = self.qualifying_tier(value)
        qualifying_rank = self._rank_of(qualifying.tier_id if qualifying else None)
        next_review = self.next_review_after(current.review_time, now)
        if qualifying_rank >= current_rank:
            return TierChange(
                current.tier_id, current.tier_id, next_review, TierChangeReason.RETAINED
            )
        if self.downgrade_mode is DowngradeMode.ONE_STEP:
            new_rank = current_rank - 1
        else:
            new_rank = qualifying_rank
        after = self.tiers[new_rank].tier_id if new_rank >= 0 else None
        return TierChange(
            before=current.tier_id,
            after=after,
            review_time=next_review if after is not None else None,
            reason=TierChangeReason.DOWNGRADE,
        )

    def next_review_after(self, review_time: datetime, now: datetime) -> datetime:
        """``review_time`` plus the fewest whole windows (at least one) that land after ``now``."""
        months_between = (now.year - review_time.year) * 12 + now.month - review_time.month
        # Start just below the estimate; always from the anchor, so that a month-end
        # anniversary (Jan 31) does not drift to the 28th after passing through February.
        windows = max(1, months_between // self.window_months - 1)
        while add_months(review_time, windows * self.window_months) <= now:
            windows += 1
        return add_months(review_time, windows * self.window_months)

    def progress(self, current_tier_id: str | None, value: int) -> TierProgress | None:
        """Distance to the tier above ``current_tier_id``; None at the top or with no tiers."""
        next_rank = self._rank_of(current_tier_id) + 1
        if next_rank >= len(self.tiers):
            return None
        next_tier = self.tiers[next_rank]
        return TierProgress(
            next_tier=next_tier,
            value=value,
            needed=max(0, next_tier.threshold - value),
            metric=self.metric,
            window_months=self.window_months,
        )
