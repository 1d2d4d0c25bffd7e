"""PointsService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any, TypeAlias

import grpc

from loyalty_engine.api.auth import check_streamed_request
from loyalty_engine.api.converters import points as conv
from loyalty_engine.api.converters.common import (
    decode_page_token,
    encode_page_token,
    optional_datetime,
    position_before,
    require_field,
    to_datetime,
)
from loyalty_engine.api.errors import grpc_client_stream_method, grpc_method
from loyalty_engine.api.transactions import exactly_once, in_transaction
from loyalty_engine.bootstrap import App
from loyalty_engine.domain.errors import DomainError, InvalidArgument
from loyalty_engine.domain.names import parse_member, parse_program
from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as pb
from loyalty_engine.gen.loyalty.v1 import points_service_pb2_grpc as pb_grpc
from loyalty_engine.services import points as svc
from loyalty_engine.services.imports import ImportReport, ImportRow, import_batch
from loyalty_engine.services.maintenance import run_maintenance
from loyalty_engine.services.offers import rules_after_purchase
from loyalty_engine.services.paging import page_size
from loyalty_engine.services.programs import load_program

IMPORT_BATCH = 1000

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class PointsServicer(pb_grpc.PointsServiceServicer):
    """Purchases, returns, adjustments, balances and the ledger."""

    SERVICE = "loyalty.v1.PointsService"

    def __init__(self, app: App) -> None:
        self.app = app

    def _count_purchase(self, points: int, offers: int) -> None:
        self.app.telemetry.points_awarded.inc(points)
        self.app.telemetry.offers_issued.inc(offers)

    @grpc_method
    async def RecordPurchase(
        self, request: pb.RecordPurchaseRequest, context: Ctx
    ) -> pb.RecordPurchaseResponse:
        member = parse_member(request.member)
        p = require_field(request, "purchase", "purchase")
        total = require_field(p, "total", "purchase.total")
        if not p.HasField("purchase_time"):
            raise InvalidArgument.for_field("purchase.purchase_time", "is required")
        cmd = svc.RecordPurchase(
            program_id=member.program_id,
            member_id=member.member_id,
            order_id=p.order_id,
            purchase_time=to_datetime(p.purchase_time, "purchase.purchase_time"),
            store_id=p.store_id,
            currency_code=total.currency_code,
            total_minor=total.amount_minor,
            lines=conv.line_items(list(p.line_items)),
        )
        return await exactly_once(
            self.app,
            method="RecordPurchase",
            request=request,
            request_id=request.request_id,
            program_id=member.program_id,
            member_id=member.member_id,
            work=lambda uow: svc.record_purchase(
                uow, cmd, self.app.clock(), partial(rules_after_purchase, self.app.rules.rules)
            ),
            encode=lambda r: conv.purchase_result_to_proto(member.program_id, r),
            response_type=pb.RecordPurchaseResponse,
            on_commit=lambda r: self._count_purchase(r.points_awarded, len(r.offers_issued)),
        )

    @grpc_method
    async def RecordReturn(
        self, request: pb.RecordReturnRequest, context: Ctx
    ) -> pb.RecordReturnResponse:
        member = parse_member(request.member)
        # The rule RecordPurchase applies to order ids; anything else cannot name an order.
        if not 1 <= len(request.order_id) <= svc.MAX_TEXT or not request.order_id.isprintable():
            raise InvalidArgument.for_field(
                "order_id", f"is required: 1-{svc.MAX_TEXT} printable characters"
            )
        if not request.HasField("return_time"):
            raise InvalidArgument.for_field("return_time", "is required")
        cmd = svc.RecordReturn(
            program_id=member.program_id,
            member_id=member.member_id,
            order_id=request.order_id,
            return_id=request.return_id,
            return_time=to_datetime(request.return_time, "return_time"),
            lines=tuple((line.line_index, line.quantity) for line in request.lines),
        )
        return await exactly_once(
            self.app,
            method="RecordReturn",
            request=request,
            request_id=request.request_id,
            program_id=member.program_id,
            member_id=member.member_id,
            work=lambda uow: svc.record_return(uow, cmd, self.app.clock()),
            encode=conv.return_result_to_proto,
            response_type=pb.RecordReturnResponse,
        )

    @grpc_method
    async def AdjustPoints(
        self, request: pb.AdjustPointsRequest, context: Ctx
    ) -> pb.AdjustPointsResponse:
        member = parse_member(request.member)
        if request.reason not in conv.ADJUSTMENT_REASON:
            raise InvalidArgument.for_field(
                "reason", "is required: GOODWILL, SERVICE_RECOVERY or CORRECTION"
            )
        cmd = svc.AdjustPoints(
            program_id=member.program_id,
            member_id=member.member_id,
            points=request.points,
            reason=conv.ADJUSTMENT_REASON[request.reason],
            actor=request.actor,
            note=request.note,
        )
        return await exactly_once(
            self.app,
            method="AdjustPoints",
            request=request,
            request_id=request.request_id,
            program_id=member.program_id,
            member_id=member.member_id,
            work=lambda uow: svc.adjust_points(uow, cmd, self.app.clock()),
            encode=lambda b: pb.AdjustPointsResponse(balance=conv.balance_to_proto(b)),
            response_type=pb.AdjustPointsResponse,
        )

    @grpc_method
    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: Ctx
    ) -> pb.GetBalanceResponse:
        member = parse_member(request.member)
        now = self.app.clock()
        balance = await in_transaction(
            self.app,
            lambda uow: svc.peek_balance(uow, member.program_id, member.member_id, now),
            autocommit=True,
        )
        if balance is None:  # pending points matured, points expire or a tier review is due
            balance = await in_transaction(
                self.app,
                lambda uow: svc.get_balance(uow, member.program_id, member.member_id, now),
                commit=True,
            )
        return pb.GetBalanceResponse(balance=conv.balance_to_proto(balance))

    @grpc_method
    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: Ctx
    ) -> pb.ListLedgerEntriesResponse:
        member = parse_member(request.parent, "parent")
        limit = page_size(request.page_size)
        for i, kind in enumerate(request.kinds):
            if kind not in conv.ENTRY_KIND_FROM_PROTO:
                raise InvalidArgument.for_field(f"kinds[{i}]", "unknown ledger entry kind")
        kinds = [conv.ENTRY_KIND_FROM_PROTO[k] for k in request.kinds]
        start = optional_datetime(request, "start_time", "start_time")
        end = optional_datetime(request, "end_time", "end_time")
        query = {
            "m": request.parent,
            "k": sorted(int(k) for k in request.kinds),
            "s": start.isoformat() if start else "",
            "e": end.isoformat() if end else "",
        }
        position = decode_page_token(request.page_token, query)
        before = position_before(position)
        entries = await in_transaction(
            self.app,
            lambda uow: svc.list_ledger_entries(
                uow,
                member.program_id,
                member.member_id,
                before_seq=before,
                limit=limit + 1,
                kinds=kinds,
                start_time=start,
                end_time=end,
            ),
        )
        token = (
            encode_page_token({"q": query, "before": entries[limit - 1].entry_seq})
            if len(entries) > limit
            else ""
        )
        return pb.ListLedgerEntriesResponse(
            ledger_entries=[
                conv.entry_to_proto(member.program_id, member.member_id, e) for e in entries[:limit]
            ],
            next_page_token=token,
        )

    @grpc_method
    async def ListTierChanges(
        self, request: pb.ListTierChangesRequest, context: Ctx
    ) -> pb.ListTierChangesResponse:
        member = parse_member(request.parent, "parent")
        limit = page_size(request.page_size)
        query = {"m": request.parent}
        before = position_before(decode_page_token(request.page_token, query))
        changes = await in_transaction(
            self.app,
            lambda uow: svc.list_tier_changes(
                uow, member.program_id, member.member_id, before, limit + 1
            ),
        )
        token = (
            encode_page_token({"q": query, "before": changes[limit - 1][0]})
            if len(changes) > limit
            else ""
        )
        return pb.ListTierChangesResponse(
            tier_changes=[
                conv.tier_change_to_proto(member.program_id, c) for _, c in changes[:limit]
            ],
            next_page_token=token,
        )

    @grpc_method
    async def ExpirePoints(
        self, request: pb.ExpirePointsRequest, context: Ctx
    ) -> pb.ExpirePointsResponse:
        program_id = parse_program(request.program, "program")
        report = await run_maintenance(self.app.db.unit_of_work, program_id, self.app.clock())
        self.app.telemetry.points_expired.inc(report.points_expired)
        return pb.ExpirePointsResponse(
            members_changed=report.members_changed,
            points_expired=report.points_expired,
            points_released=report.points_released,
            tier_changes=report.tier_changes,
        )

    @grpc_client_stream_method
    async def ImportPurchases(
        self, request_iterator: AsyncIterator[pb.ImportPurchasesRequest], context: Ctx
    ) -> pb.ImportPurchasesResponse:
        program_id = ""
        report = ImportReport()
        batch: list[ImportRow] = []
        row = batches = 0
        async for request in request_iterator:
            row += 1
            check_streamed_request(request)
            if row == 1:
                program_id = parse_program(request.program, "program")
            elif request.program and request.program != f"programs/{program_id}":
                report.add_error(
                    row, "PROGRAM_MISMATCH", "program: every row must name the first row's program"
                )
                continue
            try:
                batch.append(conv.import_row(row, program_id, request))
            except DomainError as error:
                report.add_error(row, error.reason, error.message)
                continue
            if len(batch) >= IMPORT_BATCH:
                batches += 1
                report.merge(await self._import(program_id, batch, batches))
                batch = []
        if row == 0:
            raise InvalidArgument.for_field("program", "the stream had no rows")
        if batch:
            report.merge(await self._import(program_id, batch, batches + 1))
        return pb.ImportPurchasesResponse(
            imported=report.imported,
            duplicates=report.duplicates,
            errors=[
                pb.ImportError(row=r, reason=reason, message=msg)
                for r, reason, msg in report.errors
            ],
        )

    async def _import(self, program_id: str, batch: list[ImportRow], number: int) -> ImportReport:
        now = self.app.clock()

        async def work(uow: Any) -> ImportReport:
            program = await load_program(uow, program_id)
            return await import_batch(uow, program, batch, now, batch_number=number)

        return await in_transaction(self.app, work, commit=True)
