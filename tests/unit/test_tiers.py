"""Tiers: immediate upgrades, downgrades only at review, anniversaries that do not drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loyalty_engine.domain.calendar import add_months
from loyalty_engine.domain.errors import InvalidArgument, NotFound
from loyalty_engine.domain.tiers import (
    DowngradeMode,
    QualifyingMetric,
    Tier,
    TierChange,
    TierPolicy,
    TierState,
)

T0 = datetime(2025, 1, 31, 9, 0, tzinfo=UTC)

BRONZE = Tier("bronze", "Bronze", 0, 100)
SILVER = Tier("silver", "Silver", 50_000, 125)
GOLD = Tier("gold", "Gold", 100_000, 150)
PLATINUM = Tier("platinum", "Platinum", 250_000, 200)
TIERS = (BRONZE, SILVER, GOLD, PLATINUM)


def policy(**overrides: object) -> TierPolicy:
    values: dict[str, object] = {"tiers": TIERS, "window_months": 12}
    values.update(overrides)
    return TierPolicy(**values)  # type: ignore[arg-type]


def test_lookup() -> None:
    p = policy()
    assert p.rank("bronze") == 0
    assert p.rank("platinum") == 3
    assert p.tier("gold") is GOLD
    with pytest.raises(NotFound) as caught:
        p.rank("diamond")
    assert caught.value.reason == "TIER_NOT_FOUND"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, BRONZE), (49_999, BRONZE), (50_000, SILVER), (100_000, GOLD), (10**9, PLATINUM)],
)
def test_qualifying_tier(value: int, expected: Tier) -> None:
    assert policy().qualifying_tier(value) is expected


def test_qualifying_tier_below_the_lowest_threshold_and_without_tiers() -> None:
    assert policy(tiers=(SILVER, GOLD)).qualifying_tier(10) is None
    assert TierPolicy().qualifying_tier(10**9) is None


# -- validation ---------------------------------------------------------------------------


def test_default_and_sample_policies_are_valid() -> None:
    TierPolicy().validate()
    policy().validate()


def test_validation_reports_every_bad_field() -> None:
    bad = TierPolicy(
        tiers=(
            Tier("a", "A", -1, 100),
            Tier("a", "", 10, 10_001),
            Tier("c", "C", 10, 100),
        ),
        window_months=0,
        grace_days=3651,
    )
    with pytest.raises(InvalidArgument) as caught:
        bad.validate()
    assert {v.field for v in caught.value.violations} == {
        "tier_policy.tiers[0].threshold",
        "tier_policy.tiers[1].tier_id",
        "tier_policy.tiers[1].name",
        "tier_policy.tiers[1].multiplier_percent",
        "tier_policy.tiers[2].threshold",
        "tier_policy.window_months",
        "tier_policy.grace_days",
    }


@pytest.mark.parametrize("window", [1, 120])
def test_window_bounds_are_inclusive(window: int) -> None:
    policy(window_months=window, grace_days=3650).validate()


def test_window_above_ten_years_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        policy(window_months=121).validate()


# -- upgrades -----------------------------------------------------------------------------


def test_first_tier_ever_is_an_upgrade_with_a_review_date() -> None:
    change = policy().after_purchase(TierState(None, None), 1_000, T0)
    assert change == TierChange(None, "bronze", datetime(2026, 1, 31, 9, tzinfo=UTC), "UPGRADE")
    assert change.changed
    assert change.state == TierState("bronze", change.review_time)


def test_upgrade_skips_tiers_and_restarts_the_window() -> None:
    current = TierState("bronze", datetime(2025, 6, 1, tzinfo=UTC))
    change = policy().after_purchase(current, 120_000, T0)
    assert change.after == "gold"
    assert change.reason == "UPGRADE"
    # Jan 31 + 12 months; the window runs from the upgrading purchase.
    assert change.review_time == datetime(2026, 1, 31, 9, tzinfo=UTC)


def test_purchase_never_downgrades() -> None:
    current = TierState("gold", datetime(2025, 6, 1, tzinfo=UTC))
    change = policy().after_purchase(current, 10, T0)
    assert change == TierChange("gold", "gold", current.review_time, "NONE")
    assert not change.changed


def test_purchase_below_the_lowest_threshold_gives_no_tier() -> None:
    change = policy(tiers=(SILVER, GOLD)).after_purchase(TierState(None, None), 10, T0)
    assert change == TierChange(None, None, None, "NONE")


def test_program_without_tiers() -> None:
    p = TierPolicy()
    assert p.after_purchase(TierState(None, None), 10**9, T0).reason == "NONE"
    assert p.review(TierState(None, None), 0, T0).reason == "NONE"
    assert p.progress(None, 0) is None


# -- reviews ------------------------------------------------------------------------------

REVIEW = datetime(2026, 1, 31, 9, tzinfo=UTC)


def test_nothing_happens_before_the_review_date() -> None:
    state = TierState("gold", REVIEW)
    change = policy().review(state, 0, REVIEW - timedelta(seconds=1))
    assert change == TierChange("gold", "gold", REVIEW, "NONE")


def test_grace_period_delays_the_downgrade() -> None:
    p = policy(grace_days=30)
    state = TierState("gold", REVIEW)
    assert p.review(state, 0, REVIEW + timedelta(days=29)).reason == "NONE"
    change = p.review(state, 0, REVIEW + timedelta(days=30))
    assert change.reason == "DOWNGRADE"
    assert change.after == "silver"
    # The next window still starts on the anniversary, not at the end of the grace.
    assert change.review_time == datetime(2027, 1, 31, 9, tzinfo=UTC)


def test_retained_when_still_qualifying() -> None:
    change = policy().review(TierState("gold", REVIEW), 100_000, REVIEW)
    assert change == TierChange("gold", "gold", datetime(2027, 1, 31, 9, tzinfo=UTC), "RETAINED")
    # Qualifying for more than the current tier at review is still just "retained".
    assert policy().review(TierState("gold", REVIEW), 10**9, REVIEW).after == "gold"


def test_one_step_downgrade() -> None:
    change = policy().review(TierState("platinum", REVIEW), 0, REVIEW)
    assert change.after == "gold"
    assert change.reason == "DOWNGRADE"
    assert change.changed


def test_downgrade_to_qualifying_tier() -> None:
    p = policy(downgrade_mode=DowngradeMode.TO_QUALIFYING)
    assert p.review(TierState("platinum", REVIEW), 60_000, REVIEW).after == "silver"
    assert p.review(TierState("platinum", REVIEW), 0, REVIEW).after == "bronze"


def test_falling_out_of_every_tier_clears_the_review_date() -> None:
    without_base = policy(tiers=(SILVER, GOLD), downgrade_mode=DowngradeMode.TO_QUALIFYING)
    assert without_base.review(TierState("gold", REVIEW), 0, REVIEW) == TierChange(
        "gold", None, None, "DOWNGRADE"
    )
    one_step = policy(tiers=(SILVER, GOLD))
    assert one_step.review(TierState("silver", REVIEW), 0, REVIEW) == TierChange(
        "silver", None, None, "DOWNGRADE"
    )


def test_late_review_advances_by_whole_windows_without_drifting() -> None:
    # Reviewed 2 years and a bit late, 1-month window from Jan 31: stays on month ends.
    p = policy(window_months=1)
    state = TierState("gold", datetime(2025, 1, 31, tzinfo=UTC))
    change = p.review(state, 10**6, datetime(2025, 3, 5, tzinfo=UTC))
    assert change.review_time == datetime(2025, 3, 31, tzinfo=UTC)
    change = p.review(state, 10**6, datetime(2027, 4, 30, tzinfo=UTC))
    assert change.review_time == datetime(2027, 5, 31, tzinfo=UTC)


def test_review_exactly_on_an_anniversary_moves_to_the_next_one() -> None:
    p = policy()
    change = p.review(TierState("gold", REVIEW), 10**6, add_months(REVIEW, 24))
    assert change.review_time == add_months(REVIEW, 36)


@settings(max_examples=200)
@given(
    review=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
    ),
    lag=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)),
    window=st.integers(min_value=1, max_value=120),
)
def test_next_review_is_the_first_anniversary_after_now(
    review: datetime, lag: timedelta, window: int
) -> None:
    now = review + lag
    nxt = policy(window_months=window).next_review_after(review, now)
    k = ((nxt.year - review.year) * 12 + nxt.month - review.month) // window
    assert k >= 1
    assert nxt == add_months(review, k * window)
    assert nxt > now
    assert k == 1 or add_months(review, (k - 1) * window) <= now


def test_unknown_current_tier_is_reported() -> None:
    with pytest.raises(NotFound):
        policy().review(TierState("diamond", REVIEW), 0, REVIEW)


def test_naive_times_are_rejected() -> None:
    with pytest.raises(InvalidArgument):
        policy().after_purchase(TierState(None, None), 0, datetime(2025, 1, 1))
    with pytest.raises(InvalidArgument):
        policy().review(TierState("gold", REVIEW), 0, datetime(2027, 1, 1))


# -- progress -----------------------------------------------------------------------------


def test_progress_towards_the_next_tier_in_money() -> None:
    progress = policy().progress("silver", 96_000)
    assert progress is not None
    assert progress.next_tier is GOLD
    assert progress.needed == 4_000
    assert progress.describe("EUR") == "spend 40.00 EUR more in the next 12 months to reach Gold"


def test_progress_from_no_tier_and_at_the_top() -> None:
    p = policy(tiers=(SILVER, GOLD))
    progress = p.progress(None, 0)
    assert progress is not None and progress.next_tier is SILVER
    assert p.progress("gold", 0) is None


def test_progress_in_points() -> None:
    p = policy(metric=QualifyingMetric.POINTS, window_months=1)
    progress = p.progress("bronze", 49_999)
    assert progress is not None
    assert progress.describe() == "earn 1 more point in the next month to reach Silver"
    progress = p.progress("bronze", 10)
    assert progress is not None
    assert progress.describe() == "earn 49990 more points in the next month to reach Silver"


def test_progress_never_needs_a_negative_amount() -> None:
    progress = policy().progress("bronze", 75_000)
    assert progress is not None
    assert progress.needed == 0
    assert progress.describe("EUR") == "you qualify for Silver"


def test_spend_progress_needs_a_currency() -> None:
    progress = policy().progress("silver", 0)
    assert progress is not None
    with pytest.raises(InvalidArgument):
        progress.describe("")
