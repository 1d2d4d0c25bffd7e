"""OfferService: offers issued by the rules, their codes, and running and reloading rules."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any, TypeAlias

import grpc

from loyalty_engine.api.converters import offers as conv
from loyalty_engine.api.converters.common import decode_page_token, encode_page_token, require_field
from loyalty_engine.api.errors import grpc_method
from loyalty_engine.api.transactions import exactly_once, in_transaction, replay
from loyalty_engine.bootstrap import App
from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.names import parse_child, parse_member, parse_program
from loyalty_engine.gen.loyalty.v1 import offer_service_pb2 as pb
from loyalty_engine.gen.loyalty.v1 import offer_service_pb2_grpc as pb_grpc
from loyalty_engine.services import offers as svc
from loyalty_engine.services.paging import page_size
from loyalty_engine.storage.unit_of_work import UnitOfWork

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _same_program(program_id: str, other: str, field: str) -> None:
    if program_id != other:
        raise InvalidArgument.for_field(field, "must name a resource of the same program")


class OfferServicer(pb_grpc.OfferServiceServicer):
    """Offers and rules."""

    SERVICE = "loyalty.v1.OfferService"

    def __init__(self, app: App) -> None:
        self.app = app

    @grpc_method
    async def ListOffers(
        self, request: pb.ListOffersRequest, context: Ctx
    ) -> pb.ListOffersResponse:
        member = parse_member(request.member)
        limit = page_size(request.page_size)
        query = {"m": request.member, "i": request.include_inactive}
        position = decode_page_token(request.page_token, query)
        before = None
        if position is not None:
            try:
                before = (datetime.fromisoformat(str(position["t"])), str(position["id"]))
            except (KeyError, ValueError):
                raise InvalidArgument.for_field(
                    "page_token", "is malformed", reason="INVALID_PAGE_TOKEN"
                ) from None
        now = self.app.clock()
        page = await in_transaction(
            self.app,
            lambda uow: svc.list_offers(
                uow,
                member.program_id,
                member.member_id,
                now,
                include_inactive=request.include_inactive,
                before=before,
                limit=limit + 1,
            ),
        )
        token = ""
        if len(page) > limit:
            last = page[limit - 1]
            token = encode_page_token(
                {"q": query, "t": last.create_time.isoformat(), "id": last.offer_id}
            )
        return pb.ListOffersResponse(
            offers=[conv.offer_to_proto(member.program_id, o, now) for o in page[:limit]],
            next_page_token=token,
        )

    @grpc_method
    async def GetOffer(self, request: pb.GetOfferRequest, context: Ctx) -> pb.GetOfferResponse:
        name = parse_child(request.name, "offers")
        offer = await in_transaction(
            self.app, lambda uow: svc.get_offer(uow, name.program_id, name.resource_id)
        )
        return pb.GetOfferResponse(
            offer=conv.offer_to_proto(name.program_id, offer, self.app.clock())
        )

    @grpc_method
    async def ValidateOfferCode(
        self, request: pb.ValidateOfferCodeRequest, context: Ctx
    ) -> pb.ValidateOfferCodeResponse:
        member = parse_member(request.member)
        total = require_field(request, "order_total", "order_total")
        now = self.app.clock()
        check = await in_transaction(
            self.app,
            lambda uow: svc.validate_offer_code(
                uow,
                member.program_id,
                member.member_id,
                request.code,
                total.amount_minor,
                total.currency_code,
                now,
            ),
        )
        reply = pb.ValidateOfferCodeResponse(
            valid=check.ok,
            reason=check.refusal.value if check.refusal else "",
            discount=conv.money(check.discount_minor, total.currency_code),
        )
        if check.offer is not None:
            reply.offer.CopyFrom(conv.offer_to_proto(member.program_id, check.offer, now))
        return reply

    @grpc_method
    async def RedeemOfferCode(
        self, request: pb.RedeemOfferCodeRequest, context: Ctx
    ) -> pb.RedeemOfferCodeResponse:
        member = parse_member(request.member)
        total = require_field(request, "order_total", "order_total")
        if not 1 <= len(request.order_id) <= 200 or not request.order_id.isprintable():
            raise InvalidArgument.for_field("order_id", "is required: 1-200 printable characters")
        now = self.app.clock()
        return await exactly_once(
            self.app,
            method="RedeemOfferCode",
            request=request,
            request_id=request.request_id,
            program_id=member.program_id,
            member_id=member.member_id,
            work=lambda uow: svc.redeem_offer_code(
                uow,
                member.program_id,
                member.member_id,
                request.code,
                request.order_id,
                total.amount_minor,
                total.currency_code,
                now,
            ),
            encode=lambda r: pb.RedeemOfferCodeResponse(
                discount=conv.money(r.discount_minor, r.currency_code),
                offer=conv.offer_to_proto(member.program_id, r.offer, now),
            ),
            response_type=pb.RedeemOfferCodeResponse,
            on_commit=lambda _: self.app.telemetry.offers_redeemed.inc(),
        )

    @grpc_method
    async def RevokeOffer(
        self, request: pb.RevokeOfferRequest, context: Ctx
    ) -> pb.RevokeOfferResponse:
        name = parse_child(request.name, "offers")
        now = self.app.clock()
        return await exactly_once(
            self.app,
            method="RevokeOffer",
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id="",
            work=lambda uow: svc.revoke_offer(uow, name.program_id, name.resource_id, now),
            encode=lambda o: pb.RevokeOfferResponse(
                offer=conv.offer_to_proto(name.program_id, o, now)
            ),
            response_type=pb.RevokeOfferResponse,
        )

    @grpc_method
    async def RunRules(self, request: pb.RunRulesRequest, context: Ctx) -> pb.RunRulesResponse:
        program_id = parse_program(request.program, "program")
        member_id = segment_id = None
        scope = request.WhichOneof("scope")
        if scope == "member":
            member = parse_member(request.member)
            _same_program(program_id, member.program_id, "member")
            member_id = member.member_id
        elif scope == "segment":
            segment = parse_child(request.segment, "segments", "segment")
            _same_program(program_id, segment.program_id, "segment")
            segment_id = segment.resource_id
        now = self.app.clock()
        rules = self.app.rules.rules

        def encode(report: svc.RunReport) -> pb.RunRulesResponse:
            # `actions` is the report's sample: the first OUTCOME_SAMPLE actions in member
            # order (all of them for a member or a small program), so that the response of
            # a million-member run stays far below the message size limit.
            return pb.RunRulesResponse(
                members_evaluated=report.members_evaluated,
                actions=[conv.outcome_to_proto(program_id, o) for o in report.outcomes],
            )

        def count(report: svc.RunReport) -> None:
            self.app.telemetry.offers_issued.inc(report.offers_issued)

        once = partial(
            exactly_once,
            self.app,
            method="RunRules",
            request=request,
            request_id=request.request_id,
            program_id=program_id,
            member_id="",
            encode=encode,
            response_type=pb.RunRulesResponse,
            on_commit=count,
        )
        if member_id is not None:
            for_member = partial(
                svc.run_rules_for_member,
                rules=rules,
                program_id=program_id,
                member_id=member_id,
                now=now,
                dry_run=request.dry_run,
            )
            if request.dry_run:
                # Never committed: a dry run changes nothing, not even the request id's record.
                return encode(
                    await in_transaction(self.app, lambda uow: for_member(uow), read_only=False)
                )
            return await once(work=lambda uow: for_member(uow))
        # A segment or the whole program: a transaction per page of members, so the request
        # id cannot share one with the effects. Looked up first, recorded after: a retry
        # after a failure part way runs again, which issues nothing twice.
        if not request.dry_run:
            stored = await replay(
                self.app,
                method="RunRules",
                request=request,
                request_id=request.request_id,
                program_id=program_id,
                member_id="",
                response_type=pb.RunRulesResponse,
            )
            if stored is not None:
                return stored
        report = await svc.run_rules(
            self.app.db.unit_of_work,
            rules,
            program_id,
            now,
            segment_id=segment_id,
            dry_run=request.dry_run,
        )
        if request.dry_run:
            return encode(report)

        async def done(_uow: UnitOfWork) -> svc.RunReport:
            return report

        return await once(work=done)

    @grpc_method
    async def ReloadRules(
        self, request: pb.ReloadRulesRequest, context: Ctx
    ) -> pb.ReloadRulesResponse:
        # Reloading is idempotent by nature (it reads the files again), so the request id
        # is not recorded: the rules are the deployment's, not any program's.
        rules = self.app.rules.reload()
        return pb.ReloadRulesResponse(rules=[r.rule_id for r in rules])
