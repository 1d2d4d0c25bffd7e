"""Purchases, returns, balances and ledger entries: protobuf <-> domain."""

from __future__ import annotations

from loyalty_engine.api.converters.common import set_timestamp, to_datetime
from loyalty_engine.api.converters.offers import offer_to_proto
from loyalty_engine.domain.earning import LineItem
from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.ledger import EntryKind
from loyalty_engine.domain.names import child_name, member_name
from loyalty_engine.gen.loyalty.v1 import common_pb2
from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as pb
from loyalty_engine.services.imports import ImportRow
from loyalty_engine.services.points import Balance, PurchaseResult, ReturnResult
from loyalty_engine.storage.repositories import StoredEntry, StoredTierChange

ENTRY_KIND = {
    EntryKind.EARN: pb.LEDGER_ENTRY_KIND_EARN,
    EntryKind.PENDING: pb.LEDGER_ENTRY_KIND_PENDING,
    EntryKind.RELEASE: pb.LEDGER_ENTRY_KIND_RELEASE,
    EntryKind.REDEEM: pb.LEDGER_ENTRY_KIND_REDEEM,
    EntryKind.REVERSE: pb.LEDGER_ENTRY_KIND_REVERSE,
    EntryKind.ADJUST: pb.LEDGER_ENTRY_KIND_ADJUST,
    EntryKind.EXPIRE: pb.LEDGER_ENTRY_KIND_EXPIRE,
}
ENTRY_KIND_FROM_PROTO = {v: k for k, v in ENTRY_KIND.items()}

ADJUSTMENT_REASON = {
    pb.ADJUSTMENT_REASON_GOODWILL: "GOODWILL",
    pb.ADJUSTMENT_REASON_SERVICE_RECOVERY: "SERVICE_RECOVERY",
    pb.ADJUSTMENT_REASON_CORRECTION: "CORRECTION",
}


def line_items(items: list[common_pb2.LineItem]) -> tuple[LineItem, ...]:
    """Line items as domain values (validated by the service)."""
    return tuple(
        LineItem(
            sku=i.sku, category=i.category, quantity=i.quantity, unit_price_minor=i.unit_price_minor
        )
        for i in items
    )


def import_row(row: int, program_id: str, request: pb.ImportPurchasesRequest) -> ImportRow:
    """One streamed historical purchase as an import row."""
    p = request.purchase
    if (
        not request.HasField("purchase")
        or not p.HasField("total")
        or not p.HasField("purchase_time")
    ):
        raise InvalidArgument.for_field("purchase", "needs order_id, purchase_time and total")
    return ImportRow(
        row=row,
        member_external_id=request.member_external_id,
        order_id=p.order_id,
        purchase_time=to_datetime(p.purchase_time, "purchase.purchase_time"),
        total_minor=p.total.amount_minor,
        currency_code=p.total.currency_code,
        store_id=p.store_id,
        lines=line_items(list(p.line_items)),
        award_points=request.award_points,
    )


def _tier(program_id: str, tier_id: str | None) -> str:
    return child_name(program_id, "tiers", tier_id) if tier_id else ""


def balance_to_proto(b: Balance) -> pb.Balance:
    """A Balance message."""
    msg = pb.Balance(
        member=member_name(b.program_id, b.member_id),
        available_points=b.available,
        pending_points=b.pending,
        reserved_points=b.reserved,
        lifetime_earned_points=b.lifetime_earned,
        redeemed_points=b.redeemed,
        expired_points=b.expired,
        next_expiry_points=b.next_expiry_points,
        tier=_tier(b.program_id, b.tier_id),
    )
    set_timestamp(msg.next_expiry_time, b.next_expiry_time)
    if b.progress is not None:
        msg.tier_progress.CopyFrom(
            pb.TierProgress(
                next_tier=_tier(b.program_id, b.progress.next_tier.tier_id),
                remaining=b.progress.needed,
                window_months=b.progress.window_months,
                description=_sentence(b.progress.describe(b.currency_code)),
            )
        )
    return msg


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def purchase_result_to_proto(program_id: str, r: PurchaseResult) -> pb.RecordPurchaseResponse:
    """A RecordPurchaseResponse."""
    return pb.RecordPurchaseResponse(
        points_awarded=r.points_awarded,
        breakdown=[
            pb.AwardComponent(rule=c.rule_id, label=c.label, points=c.points) for c in r.breakdown
        ],
        points_pending=r.pending,
        balance=balance_to_proto(r.balance),
        tier_before=_tier(program_id, r.tier_before),
        tier_after=_tier(program_id, r.tier_after),
        offers_issued=[offer_to_proto(program_id, o, o.create_time) for o in r.offers_issued],
    )


def return_result_to_proto(r: ReturnResult) -> pb.RecordReturnResponse:
    """A RecordReturnResponse."""
    return pb.RecordReturnResponse(
        points_reversed=r.points_reversed,
        shortfall_points=r.shortfall,
        refund=common_pb2.Money(amount_minor=r.refund_minor, currency_code=r.currency_code),
        balance=balance_to_proto(r.balance),
    )


def entry_to_proto(program_id: str, member_id: str, stored: StoredEntry) -> pb.LedgerEntry:
    """A LedgerEntry message."""
    e = stored.entry
    msg = pb.LedgerEntry(
        name=f"{member_name(program_id, member_id)}/ledgerEntries/{stored.entry_seq}",
        kind=ENTRY_KIND[e.kind],
        points=e.points,
        pending_points=e.pending_delta,
        balance_after=e.balance_after,
        pending_after=e.pending_after,
        order_id=e.order_id or "",
        reason=e.reason,
        actor=e.actor,
        shortfall_points=e.shortfall,
    )
    set_timestamp(msg.occur_time, e.occurred_time)
    set_timestamp(msg.create_time, stored.create_time)
    return msg


def tier_change_to_proto(program_id: str, change: StoredTierChange) -> pb.TierChange:
    """A TierChange message."""
    msg = pb.TierChange(
        tier_before=_tier(program_id, change.tier_before),
        tier_after=_tier(program_id, change.tier_after),
        reason=change.reason,
    )
    set_timestamp(msg.change_time, change.change_time)
    return msg
