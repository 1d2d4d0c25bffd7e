"""Segments, top customers, member insights and program metrics (the marketing path)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from loyalty_engine.domain.calendar import add_months
from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.names import child_name
from loyalty_engine.domain.segments import SEGMENTS, Segment, segment_by_id
from loyalty_engine.services.members import get_member
from loyalty_engine.services.programs import get_program, load_program
from loyalty_engine.storage.segments import Scores, SegmentPage
from loyalty_engine.storage.unit_of_work import UnitOfWork

METRICS = ("spend", "orders", "points", "aov")
WINDOWS = ("90d", "12m", "all")
MAX_TOP_N = 10_000


@dataclass(frozen=True)
class SegmentCount:
    """A segment and how many members are in it."""

    segment: Segment
    members: int
    compute_time: datetime | None


@dataclass(frozen=True)
class TopCustomer:
    """One ranked customer; equal values share a rank."""

    rank: int
    member_id: str
    value: int


@dataclass(frozen=True)
class MemberInsights:
    """What the engine knows of a member's buying."""

    member_id: str
    first_purchase_time: datetime | None
    last_purchase_time: datetime | None
    order_count: int
    total_spend_minor: int
    spend_12m_minor: int
    orders_12m: int
    categories: list[str]
    tenure_years: int
    currency_code: str
    tier_id: str | None
    scores: Scores | None
    flags: list[str]
    active_offers: list[str]

    @property
    def average_order_minor(self) -> int:
        """Net spend per order (0 without orders)."""
        return self.total_spend_minor // self.order_count if self.order_count > 0 else 0


@dataclass(frozen=True)
class TierMetrics:
    """Members of a tier and their average order value."""

    tier_id: str | None
    members: int
    average_order_minor: int


@dataclass(frozen=True)
class ProgramMetrics:
    """A program's health."""

    currency_code: str
    members: int
    active_members: int
    repeat_purchase_rate_bp: int
    points_earned: int
    points_redeemed: int
    redemption_rate_bp: int
    outstanding_points: int
    outstanding_liability_minor: int
    tiers: list[TierMetrics]


async def refresh_segments(uow: UnitOfWork, program_id: str, now: datetime) -> int:
    """Recompute every member's RFM scores and windowed statistics in one pass."""
    await get_program(uow, program_id)
    return await uow.segments.refresh(
        program_id, now, now - timedelta(days=90), add_months(now, -12)
    )


async def list_segments(uow: UnitOfWork, program_id: str) -> list[SegmentCount]:
    """Every named segment with its member count (0 for empty ones)."""
    await get_program(uow, program_id)
    counts = await uow.segments.segment_counts(program_id)
    when = await uow.segments.last_refresh(program_id)
    return [SegmentCount(s, counts.get(s.segment_id, 0), when) for s in SEGMENTS]


async def segment_members(
    uow: UnitOfWork, program_id: str, segment_id: str, after_id: str, limit: int
) -> SegmentPage:
    """A page of a segment's members, by member id."""
    segment_by_id(segment_id)
    await load_program(uow, program_id)
    return await uow.segments.segment_members(program_id, segment_id, after_id, limit)


async def top_customers(
    uow: UnitOfWork,
    program_id: str,
    metric: str,
    window: str,
    *,
    top_n: int | None = None,
    top_percent_bp: int | None = None,
    now: datetime,
    refresh_missing: bool = True,
) -> list[TopCustomer] | None:
    """The best customers by a metric over a window, as of the last segment refresh.

    Both the top N and the top X percent (of members with a positive value in the window)
    include everyone tied with the last one in, so a cut never splits equal customers.
    A program never refreshed is refreshed first; with `refresh_missing` false the answer
    is then None instead (for a read-only transaction, which the caller retries writable).
    """
    if metric not in METRICS:
        raise InvalidArgument.for_field("metric", f"must be one of {', '.join(METRICS)}")
    if window not in WINDOWS:
        raise InvalidArgument.for_field("window", f"must be one of {', '.join(WINDOWS)}")
    if top_n is not None:
        if not 1 <= top_n <= MAX_TOP_N:
            raise InvalidArgument.for_field("top_n", f"must be 1-{MAX_TOP_N}")
    elif top_percent_bp is not None:
        if not 1 <= top_percent_bp <= 10_000:
            raise InvalidArgument.for_field("top_percent_basis_points", "must be 1-10000")
    else:
        raise InvalidArgument.for_field("limit", "set top_n or top_percent_basis_points")
    await load_program(uow, program_id)
    ranked = await _ranked(uow, program_id, metric, window, top_n, top_percent_bp)
    # Nobody ranked: either nobody has a value in the window, or the program was never
    # scored (asked only then, so that the usual call is one statement).
    if not ranked and await uow.segments.last_refresh(program_id) is None:
        if not refresh_missing:
            return None
        await refresh_segments(uow, program_id, now)
        ranked = await _ranked(uow, program_id, metric, window, top_n, top_percent_bp)
    result: list[TopCustomer] = []
    for position, (member_id, value) in enumerate(ranked, start=1):
        rank = result[-1].rank if result and result[-1].value == value else position
        result.append(TopCustomer(rank, member_id, value))
    return result


async def _ranked(
    uow: UnitOfWork,
    program_id: str,
    metric: str,
    window: str,
    top_n: int | None,
    top_percent_bp: int | None,
) -> list[tuple[str, int]]:
    if top_n is not None:
        limit = top_n
    else:
        assert top_percent_bp is not None
        eligible = await uow.segments.members_with_value(program_id, metric, window)
        limit = math.ceil(eligible * top_percent_bp / 10_000)
        if limit == 0:
            return []
    return await uow.segments.top(program_id, metric, window, limit)


async def active_offer_ids(
    uow: UnitOfWork, program_id: str, member_id: str, now: datetime
) -> list[str]:
    """A member's usable offers, as `programs/{program}/offers/{offer}`."""
    offers = await uow.offers.list_for_member(
        program_id, member_id, active_at=now, before=None, limit=100
    )
    return [child_name(program_id, "offers", o.offer_id) for o in offers]


async def member_insights(
    uow: UnitOfWork, program_id: str, member_id: str, now: datetime
) -> MemberInsights:
    """Statistics, scores, segment, tier, flags and active offers of a member."""
    program = await load_program(uow, program_id)
    member = await get_member(uow, program_id, member_id)
    locked = await uow.accounts.lock(program_id, member_id, for_update=False)
    assert locked is not None
    spend_12m, orders_12m = await uow.segments.window_stats(
        program_id, member_id, add_months(now, -12)
    )
    join = member.join_time or now
    years = now.year - join.year - ((now.month, now.day) < (join.month, join.day))
    return MemberInsights(
        member_id=member_id,
        first_purchase_time=locked.stats.first_purchase_time,
        last_purchase_time=locked.stats.last_purchase_time,
        order_count=locked.stats.order_count,
        total_spend_minor=locked.stats.total_spend_minor,
        spend_12m_minor=spend_12m,
        orders_12m=orders_12m,
        categories=await uow.segments.categories(program_id, member_id),
        tenure_years=max(0, years),
        currency_code=program.currency_code,
        tier_id=locked.tier.tier_id,
        scores=await uow.segments.scores(program_id, member_id),
        flags=sorted(await uow.offers.flags(program_id, member_id)),
        active_offers=await active_offer_ids(uow, program_id, member_id, now),
    )


async def program_metrics(uow: UnitOfWork, program_id: str, now: datetime) -> ProgramMetrics:
    """Members, activity, repeat purchases, redemption and the points liability."""
    program = await get_program(uow, program_id)
    totals = await uow.segments.program_totals(program_id, now - timedelta(days=90))
    tiers = [
        TierMetrics(tier_id, members, spend // orders if orders > 0 else 0)
        for tier_id, members, spend, orders in await uow.segments.tier_totals(program_id)
    ]
    earned, redeemed = totals["earned"], totals["redeemed"]
    return ProgramMetrics(
        currency_code=program.currency_code,
        members=totals["members"],
        active_members=totals["active"],
        repeat_purchase_rate_bp=totals["repeat"] * 10_000 // totals["buyers"]
        if totals["buyers"]
        else 0,
        points_earned=earned,
        points_redeemed=redeemed,
        redemption_rate_bp=redeemed * 10_000 // earned if earned else 0,
        outstanding_points=totals["outstanding"],
        outstanding_liability_minor=totals["outstanding"]
        * program.point_value_minor_per_100_points
        // 100,
        tiers=sorted(tiers, key=lambda t: (t.tier_id is None, t.tier_id or "")),
    )
