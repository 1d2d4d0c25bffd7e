"""SegmentService."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, TypeAlias

import grpc

from loyalty_engine.api.converters import segments as conv
from loyalty_engine.api.converters.common import set_timestamp
from loyalty_engine.api.errors import grpc_method, grpc_stream_method
from loyalty_engine.api.transactions import exactly_once, in_transaction
from loyalty_engine.bootstrap import App
from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.names import member_name, parse_child, parse_member, parse_program
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2 as pb
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2_grpc as pb_grpc
from loyalty_engine.services import segments as svc
from loyalty_engine.storage.segments import SegmentPage, vacuumed_around

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]

EXPORT_BATCH = 2000  # members read per statement when streaming one per message
MAX_PAGE_SIZE = 5000


class SegmentServicer(pb_grpc.SegmentServiceServicer):
    """Segments, top customers, insights and metrics."""

    SERVICE = "loyalty.v1.SegmentService"

    def __init__(self, app: App) -> None:
        self.app = app

    @grpc_method
    async def RefreshSegments(
        self, request: pb.RefreshSegmentsRequest, context: Ctx
    ) -> pb.RefreshSegmentsResponse:
        program_id = parse_program(request.program, "program")
        now = self.app.clock()

        def encode(count: int) -> pb.RefreshSegmentsResponse:
            reply = pb.RefreshSegmentsResponse(members_scored=count)
            set_timestamp(reply.compute_time, now)
            return reply

        async with vacuumed_around(self.app.db):
            return await exactly_once(
                self.app,
                method="RefreshSegments",
                request=request,
                request_id=request.request_id,
                program_id=program_id,
                member_id="",
                work=lambda uow: svc.refresh_segments(uow, program_id, now),
                encode=encode,
                response_type=pb.RefreshSegmentsResponse,
            )

    @grpc_method
    async def ListSegments(
        self, request: pb.ListSegmentsRequest, context: Ctx
    ) -> pb.ListSegmentsResponse:
        program_id = parse_program(request.parent, "parent")
        items = await in_transaction(self.app, lambda uow: svc.list_segments(uow, program_id))
        return pb.ListSegmentsResponse(
            segments=[conv.segment_to_proto(program_id, i) for i in items]
        )

    @grpc_stream_method
    async def ListSegmentMembers(
        self, request: pb.ListSegmentMembersRequest, context: Ctx
    ) -> AsyncIterator[pb.ListSegmentMembersResponse]:
        name = parse_child(request.segment, "segments", "segment")
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.for_field("page_size", f"must be 0-{MAX_PAGE_SIZE}")
        page_size = request.page_size or EXPORT_BATCH
        program_id = name.program_id
        read = partial(self._export_page, program_id, name.resource_id, page_size)
        # The next page is read while this one is encoded and sent, so the database and the
        # stream work side by side instead of taking turns.
        reading: asyncio.Future[SegmentPage] | None = asyncio.ensure_future(read(""))
        try:
            while reading is not None:
                page = await reading
                reading = None
                if len(page.members) == page_size:
                    reading = asyncio.ensure_future(read(page.members[-1].member_id))
                if request.page_size:
                    if page.members:
                        reply = pb.ListSegmentMembersResponse()
                        conv.add_segment_members(reply.members, program_id, page)
                        yield reply
                    continue
                for item in page.members:
                    yield pb.ListSegmentMembersResponse(
                        member=member_name(program_id, item.member_id),
                        external_id=item.external_id,
                        scores=conv.scores_to_proto(program_id, page.scores(item)),
                    )
        finally:
            if reading is not None:  # the caller went away, or sending failed
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)

    async def _export_page(
        self, program_id: str, segment_id: str, limit: int, after: str
    ) -> SegmentPage:
        # One statement per page: no transaction around it.
        return await in_transaction(
            self.app,
            lambda uow: svc.segment_members(uow, program_id, segment_id, after, limit),
            autocommit=True,
        )

    @grpc_method
    async def ListTopCustomers(
        self, request: pb.ListTopCustomersRequest, context: Ctx
    ) -> pb.ListTopCustomersResponse:
        program_id = parse_program(request.parent, "parent")
        if request.metric not in conv.METRIC:
            raise InvalidArgument.for_field(
                "metric", "is required: SPEND, ORDERS, POINTS_EARNED or AVERAGE_ORDER_VALUE"
            )
        if request.window not in conv.WINDOW:
            raise InvalidArgument.for_field("window", "is required: 90_DAYS, 12_MONTHS or ALL_TIME")
        limit = request.WhichOneof("limit")
        if limit is None:
            raise InvalidArgument.for_field("limit", "set top_n or top_percent_basis_points")
        top_customers = partial(
            svc.top_customers,
            program_id=program_id,
            metric=conv.METRIC[request.metric],
            window=conv.WINDOW[request.window],
            top_n=request.top_n if limit == "top_n" else None,
            top_percent_bp=request.top_percent_basis_points
            if limit == "top_percent_basis_points"
            else None,
            now=self.app.clock(),
        )
        # Reads only, unless the program was never scored: then the first call computes the
        # scores and commits them. The top N is one statement, so it needs no transaction
        # around it; the top percent counts first and ranks second, from one snapshot.
        top = await in_transaction(
            self.app,
            lambda uow: top_customers(uow, refresh_missing=False),
            autocommit=limit == "top_n",
        )
        if top is None:
            top = await in_transaction(self.app, lambda uow: top_customers(uow), commit=True)
        assert top is not None  # a refreshed program always has an answer, if an empty one
        return pb.ListTopCustomersResponse(
            customers=[
                pb.TopCustomer(
                    rank=c.rank, member=member_name(program_id, c.member_id), value=c.value
                )
                for c in top
            ]
        )

    @grpc_method
    async def GetMemberInsights(
        self, request: pb.GetMemberInsightsRequest, context: Ctx
    ) -> pb.GetMemberInsightsResponse:
        member = parse_member(request.member)
        insights = await in_transaction(
            self.app,
            lambda uow: svc.member_insights(
                uow, member.program_id, member.member_id, self.app.clock()
            ),
        )
        return conv.insights_to_proto(member.program_id, insights)

    @grpc_method
    async def GetProgramMetrics(
        self, request: pb.GetProgramMetricsRequest, context: Ctx
    ) -> pb.GetProgramMetricsResponse:
        program_id = parse_program(request.program, "program")
        metrics = await in_transaction(
            self.app, lambda uow: svc.program_metrics(uow, program_id, self.app.clock())
        )
        return conv.metrics_to_proto(program_id, metrics)
