"""MemberService."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from loyalty_engine.api.converters import members as conv
from loyalty_engine.api.converters.common import (
    checked_mask,
    decode_page_token,
    encode_page_token,
    merge_masked,
    optional_datetime,
    position_after,
    require_field,
)
from loyalty_engine.api.errors import grpc_method
from loyalty_engine.api.transactions import exactly_once, in_transaction
from loyalty_engine.bootstrap import App
from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.members import IdentifierKind
from loyalty_engine.domain.names import parse_child, parse_member, parse_program
from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as pb
from loyalty_engine.gen.loyalty.v1 import member_service_pb2_grpc as pb_grpc
from loyalty_engine.services import members as svc
from loyalty_engine.services.paging import page_size
from loyalty_engine.storage.repositories import MemberFilter

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_LOOKUP_KEYS = {
    "external_id": IdentifierKind.EXTERNAL_ID,
    "email": IdentifierKind.EMAIL,
    "phone": IdentifierKind.PHONE,
    "card_number": IdentifierKind.CARD_NUMBER,
}


class MemberServicer(pb_grpc.MemberServiceServicer):
    """Members."""

    SERVICE = "loyalty.v1.MemberService"

    def __init__(self, app: App) -> None:
        self.app = app

    @grpc_method
    async def EnrollMember(
        self, request: pb.EnrollMemberRequest, context: Ctx
    ) -> pb.EnrollMemberResponse:
        program_id = parse_program(request.parent, "parent")
        member = conv.member_from_proto(
            program_id, request.member_id, require_field(request, "member", "member")
        )
        return await exactly_once(
            self.app,
            method="EnrollMember",
            request=request,
            request_id=request.request_id,
            program_id=program_id,
            member_id="",
            work=lambda uow: svc.enroll_member(uow, member, self.app.clock()),
            encode=lambda m: pb.EnrollMemberResponse(member=conv.member_to_proto(m)),
            response_type=pb.EnrollMemberResponse,
            batch=True,  # enrollments are many at once on a program's first day
        )

    @grpc_method
    async def GetMember(self, request: pb.GetMemberRequest, context: Ctx) -> pb.GetMemberResponse:
        name = parse_member(request.name, "name")
        member = await in_transaction(
            self.app, lambda uow: svc.get_member(uow, name.program_id, name.member_id)
        )
        return pb.GetMemberResponse(member=conv.member_to_proto(member))

    @grpc_method
    async def UpdateMember(
        self, request: pb.UpdateMemberRequest, context: Ctx
    ) -> pb.UpdateMemberResponse:
        incoming = require_field(request, "member", "member")
        name = parse_member(incoming.name, "member.name")
        mask = checked_mask(request.update_mask, pb.Member, conv.MEMBER_UPDATABLE)

        async def work(uow: Any) -> Any:
            current = conv.member_to_proto(
                await svc.get_member(uow, name.program_id, name.member_id)
            )
            merged = merge_masked(mask, incoming, current)
            updated = conv.member_from_proto(name.program_id, name.member_id, merged)
            return await svc.update_member(uow, updated, self.app.clock())

        return await exactly_once(
            self.app,
            method="UpdateMember",
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id=name.member_id,
            work=work,
            encode=lambda m: pb.UpdateMemberResponse(member=conv.member_to_proto(m)),
            response_type=pb.UpdateMemberResponse,
        )

    @grpc_method
    async def ListMembers(
        self, request: pb.ListMembersRequest, context: Ctx
    ) -> pb.ListMembersResponse:
        program_id = parse_program(request.parent, "parent")
        limit = page_size(request.page_size)
        tier_id = parse_child(request.tier, "tiers", "tier").resource_id if request.tier else None
        if request.state and request.state not in conv.STATE_FROM_PROTO:
            raise InvalidArgument.for_field("state", "unknown member state")
        filters = MemberFilter(
            tier_id=tier_id,
            state=conv.STATE_FROM_PROTO.get(request.state),
            join_time_after=optional_datetime(request, "join_time_after", "join_time_after"),
        )
        query = {
            "tier": request.tier,
            "state": request.state,
            "join": request.join_time_after.ToJsonString()
            if request.HasField("join_time_after")
            else "",
        }
        position = decode_page_token(request.page_token, query)
        after = position_after(position)
        members = await in_transaction(
            self.app, lambda uow: svc.list_members(uow, program_id, after, limit + 1, filters)
        )
        token = (
            encode_page_token({"q": query, "after": members[limit - 1].member_id})
            if len(members) > limit
            else ""
        )
        return pb.ListMembersResponse(
            members=[conv.member_to_proto(m) for m in members[:limit]], next_page_token=token
        )

    @grpc_method
    async def LookupMember(
        self, request: pb.LookupMemberRequest, context: Ctx
    ) -> pb.LookupMemberResponse:
        program_id = parse_program(request.parent, "parent")
        key = request.WhichOneof("key")
        if key is None:
            raise InvalidArgument.for_field(
                "key", "set one of external_id, email, phone, card_number"
            )
        value = getattr(request, key)
        # No stored key holds control characters, and PostgreSQL cannot even compare NUL.
        if not value or len(value) > 320 or not value.isprintable():
            raise InvalidArgument.for_field(key, "must be 1-320 printable characters")
        member = await in_transaction(
            self.app, lambda uow: svc.lookup_member(uow, program_id, _LOOKUP_KEYS[key], value)
        )
        return pb.LookupMemberResponse(member=conv.member_to_proto(member))

    @grpc_method
    async def EraseMember(
        self, request: pb.EraseMemberRequest, context: Ctx
    ) -> pb.EraseMemberResponse:
        name = parse_member(request.name, "name")
        return await exactly_once(
            self.app,
            method="EraseMember",
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id=name.member_id,
            work=lambda uow: svc.erase_member(
                uow, name.program_id, name.member_id, self.app.clock()
            ),
            encode=lambda m: pb.EraseMemberResponse(member=conv.member_to_proto(m)),
            response_type=pb.EraseMemberResponse,
        )
