"""Offers and rule runs: domain <-> protobuf."""

from __future__ import annotations

from datetime import datetime

from loyalty_engine.api.converters.common import set_timestamp
from loyalty_engine.domain.names import child_name, member_name
from loyalty_engine.domain.offers import Offer, OfferKind, OfferState
from loyalty_engine.gen.loyalty.v1 import common_pb2
from loyalty_engine.gen.loyalty.v1 import offer_service_pb2 as pb
from loyalty_engine.services.offers import RuleOutcome

KIND = {
    OfferKind.PERCENT_OFF: pb.OFFER_KIND_PERCENT_OFF,
    OfferKind.AMOUNT_OFF: pb.OFFER_KIND_AMOUNT_OFF,
    OfferKind.BONUS_POINTS: pb.OFFER_KIND_BONUS_POINTS,
    OfferKind.FREE_ITEM: pb.OFFER_KIND_FREE_ITEM,
}
STATE = {
    OfferState.ISSUED: pb.OFFER_STATE_ISSUED,
    OfferState.REDEEMED: pb.OFFER_STATE_REDEEMED,
    OfferState.EXPIRED: pb.OFFER_STATE_EXPIRED,
    OfferState.REVOKED: pb.OFFER_STATE_REVOKED,
}


def money(amount_minor: int, currency_code: str) -> common_pb2.Money:
    """A Money message."""
    return common_pb2.Money(amount_minor=amount_minor, currency_code=currency_code)


def offer_to_proto(program_id: str, offer: Offer, now: datetime) -> pb.Offer:
    """An Offer message; its state as of `now` (an issued offer past its end is EXPIRED)."""
    msg = pb.Offer(
        name=child_name(program_id, "offers", offer.offer_id),
        member=member_name(program_id, offer.member_id),
        rule=offer.rule_id,
        kind=KIND[offer.kind],
        percent_off=offer.percent_off,
        bonus_points=offer.bonus_points,
        sku=offer.sku,
        code=offer.code,
        message=offer.message,
        uses_left=offer.uses_left,
        state=STATE[offer.state_at(now)],
    )
    if offer.amount_off_minor:
        msg.amount_off.CopyFrom(money(offer.amount_off_minor, offer.currency_code))
    if offer.min_order_minor:
        msg.min_order.CopyFrom(money(offer.min_order_minor, offer.currency_code))
    set_timestamp(msg.start_time, offer.start_time)
    set_timestamp(msg.end_time, offer.end_time)
    set_timestamp(msg.create_time, offer.create_time)
    return msg


def outcome_to_proto(program_id: str, outcome: RuleOutcome) -> pb.RuleAction:
    """A RuleAction message."""
    return pb.RuleAction(
        member=member_name(program_id, outcome.member_id),
        rule=outcome.rule_id,
        action=outcome.label,
        offer=child_name(program_id, "offers", outcome.offer_id) if outcome.offer_id else "",
    )
