"""Segments, top customers, insights and metrics: domain -> protobuf."""

from __future__ import annotations

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from loyalty_engine.api.converters.common import set_timestamp
from loyalty_engine.domain.names import child_name, member_name
from loyalty_engine.gen.loyalty.v1 import common_pb2
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2 as pb
from loyalty_engine.services.segments import MemberInsights, ProgramMetrics, SegmentCount
from loyalty_engine.storage.segments import Scores, SegmentPage

METRIC = {
    pb.TOP_CUSTOMER_METRIC_SPEND: "spend",
    pb.TOP_CUSTOMER_METRIC_ORDERS: "orders",
    pb.TOP_CUSTOMER_METRIC_POINTS_EARNED: "points",
    pb.TOP_CUSTOMER_METRIC_AVERAGE_ORDER_VALUE: "aov",
}
WINDOW = {
    pb.TOP_CUSTOMER_WINDOW_90_DAYS: "90d",
    pb.TOP_CUSTOMER_WINDOW_12_MONTHS: "12m",
    pb.TOP_CUSTOMER_WINDOW_ALL_TIME: "all",
}


def segment_to_proto(program_id: str, item: SegmentCount) -> pb.Segment:
    """A Segment message."""
    msg = pb.Segment(
        name=child_name(program_id, "segments", item.segment.segment_id),
        display_name=item.segment.name,
        member_count=item.members,
    )
    set_timestamp(msg.compute_time, item.compute_time)
    return msg


def scores_to_proto(program_id: str, scores: Scores) -> pb.RfmScores:
    """An RfmScores message."""
    msg = pb.RfmScores(
        recency=scores.recency,
        frequency=scores.frequency,
        monetary=scores.monetary,
        segment=child_name(program_id, "segments", scores.segment_id),
    )
    set_timestamp(msg.compute_time, scores.compute_time)
    return msg


def add_segment_members(
    out: RepeatedCompositeFieldContainer[pb.SegmentMember], program_id: str, page: SegmentPage
) -> None:
    """Append a page of exported members to a repeated field.

    The members of a page share the segment and the refresh, so those are made once per page;
    each member is then added in place (building a message and copying it into the list
    took three times as long).
    """
    if not page.members:
        return
    template = scores_to_proto(program_id, page.scores(page.members[0]))
    segment, when = template.segment, template.compute_time
    prefix = member_name(program_id, "")
    add = out.add
    for member_id, external_id, recency, frequency, monetary in page.members:
        scores = add(member=prefix + member_id, external_id=external_id).scores
        scores.recency, scores.frequency, scores.monetary = recency, frequency, monetary
        scores.segment = segment
        scores.compute_time.CopyFrom(when)


def _money(amount: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency_code=currency)


def insights_to_proto(program_id: str, i: MemberInsights) -> pb.GetMemberInsightsResponse:
    """A GetMemberInsightsResponse."""
    stats = pb.MemberStatistics(
        order_count=i.order_count,
        total_spend=_money(i.total_spend_minor, i.currency_code),
        average_order_value=_money(i.average_order_minor, i.currency_code),
        spend_12_months=_money(i.spend_12m_minor, i.currency_code),
        orders_12_months=i.orders_12m,
        categories=i.categories,
        tenure_years=i.tenure_years,
    )
    set_timestamp(stats.first_purchase_time, i.first_purchase_time)
    set_timestamp(stats.last_purchase_time, i.last_purchase_time)
    msg = pb.GetMemberInsightsResponse(
        member=member_name(program_id, i.member_id),
        statistics=stats,
        tier=child_name(program_id, "tiers", i.tier_id) if i.tier_id else "",
        flags=i.flags,
        active_offers=i.active_offers,
    )
    if i.scores is not None:
        msg.scores.CopyFrom(scores_to_proto(program_id, i.scores))
    return msg


def metrics_to_proto(program_id: str, m: ProgramMetrics) -> pb.GetProgramMetricsResponse:
    """A GetProgramMetricsResponse."""
    return pb.GetProgramMetricsResponse(
        member_count=m.members,
        active_member_count=m.active_members,
        repeat_purchase_rate_basis_points=m.repeat_purchase_rate_bp,
        points_earned=m.points_earned,
        points_redeemed=m.points_redeemed,
        redemption_rate_basis_points=m.redemption_rate_bp,
        outstanding_points=m.outstanding_points,
        outstanding_liability=_money(m.outstanding_liability_minor, m.currency_code),
        tiers=[
            pb.TierMetrics(
                tier=child_name(program_id, "tiers", t.tier_id) if t.tier_id else "",
                member_count=t.members,
                average_order_value=_money(t.average_order_minor, m.currency_code),
            )
            for t in m.tiers
        ],
    )
