"""RewardService."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from loyalty_engine.api.converters import rewards as conv
from loyalty_engine.api.converters.common import (
    checked_mask,
    decode_page_token,
    encode_page_token,
    merge_masked,
    position_after,
    require_field,
)
from loyalty_engine.api.converters.points import balance_to_proto
from loyalty_engine.api.errors import grpc_method
from loyalty_engine.api.transactions import exactly_once, in_transaction
from loyalty_engine.bootstrap import App
from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.names import (
    MemberChildName,
    parse_child,
    parse_member,
    parse_member_child,
    parse_program,
)
from loyalty_engine.gen.loyalty.v1 import reward_service_pb2 as pb
from loyalty_engine.gen.loyalty.v1 import reward_service_pb2_grpc as pb_grpc
from loyalty_engine.services import rewards as svc
from loyalty_engine.services.paging import page_size

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _same_program(program_id: str, other: str, field: str) -> None:
    if program_id != other:
        raise InvalidArgument.for_field(field, "must name a resource of the same program")


class RewardServicer(pb_grpc.RewardServiceServicer):
    """The rewards catalog and redemption."""

    SERVICE = "loyalty.v1.RewardService"

    def __init__(self, app: App) -> None:
        self.app = app

    @grpc_method
    async def CreateReward(
        self, request: pb.CreateRewardRequest, context: Ctx
    ) -> pb.CreateRewardResponse:
        program_id = parse_program(request.parent, "parent")
        reward = conv.reward_from_proto(
            program_id, request.reward_id, require_field(request, "reward", "reward")
        )
        return await exactly_once(
            self.app,
            method="CreateReward",
            request=request,
            request_id=request.request_id,
            program_id=program_id,
            member_id="",
            work=lambda uow: svc.create_reward(uow, program_id, reward, self.app.clock()),
            encode=lambda r: pb.CreateRewardResponse(reward=conv.reward_to_proto(program_id, r)),
            response_type=pb.CreateRewardResponse,
        )

    @grpc_method
    async def GetReward(self, request: pb.GetRewardRequest, context: Ctx) -> pb.GetRewardResponse:
        name = parse_child(request.name, "rewards")
        reward = await in_transaction(
            self.app, lambda uow: svc.get_reward(uow, name.program_id, name.resource_id)
        )
        return pb.GetRewardResponse(reward=conv.reward_to_proto(name.program_id, reward))

    @grpc_method
    async def ListRewards(
        self, request: pb.ListRewardsRequest, context: Ctx
    ) -> pb.ListRewardsResponse:
        program_id = parse_program(request.parent, "parent")
        member_id = None
        if request.member:
            member = parse_member(request.member)
            _same_program(program_id, member.program_id, "member")
            member_id = member.member_id
        limit = page_size(request.page_size)
        query = {"m": request.member}
        position = decode_page_token(request.page_token, query)
        after = position_after(position)
        items = await in_transaction(
            self.app,
            lambda uow: svc.list_rewards(
                uow, program_id, member_id, after, limit + 1, self.app.clock()
            ),
            commit=True,
        )
        token = (
            encode_page_token({"q": query, "after": items[limit - 1].reward.reward_id})
            if len(items) > limit
            else ""
        )
        return pb.ListRewardsResponse(
            rewards=[conv.member_reward_to_proto(program_id, i) for i in items[:limit]],
            next_page_token=token,
        )

    @grpc_method
    async def UpdateReward(
        self, request: pb.UpdateRewardRequest, context: Ctx
    ) -> pb.UpdateRewardResponse:
        incoming = require_field(request, "reward", "reward")
        name = parse_child(incoming.name, "rewards", "reward.name")
        mask = checked_mask(request.update_mask, pb.Reward, conv.REWARD_UPDATABLE)

        async def work(uow: Any) -> Any:
            current = conv.reward_to_proto(
                name.program_id, await svc.get_reward(uow, name.program_id, name.resource_id)
            )
            merged = merge_masked(mask, incoming, current)
            updated = conv.reward_from_proto(name.program_id, name.resource_id, merged)
            return await svc.update_reward(uow, name.program_id, updated, self.app.clock())

        return await exactly_once(
            self.app,
            method="UpdateReward",
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id="",
            work=work,
            encode=lambda r: pb.UpdateRewardResponse(
                reward=conv.reward_to_proto(name.program_id, r)
            ),
            response_type=pb.UpdateRewardResponse,
        )

    @grpc_method
    async def ArchiveReward(
        self, request: pb.ArchiveRewardRequest, context: Ctx
    ) -> pb.ArchiveRewardResponse:
        name = parse_child(request.name, "rewards")
        return await exactly_once(
            self.app,
            method="ArchiveReward",
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id="",
            work=lambda uow: svc.archive_reward(
                uow, name.program_id, name.resource_id, self.app.clock()
            ),
            encode=lambda r: pb.ArchiveRewardResponse(
                reward=conv.reward_to_proto(name.program_id, r)
            ),
            response_type=pb.ArchiveRewardResponse,
        )

    def _count_redemption(self, kind: str, points: int) -> None:
        self.app.telemetry.redemptions.labels(kind).inc()
        self.app.telemetry.points_redeemed.inc(points)

    def _member_and_reward(self, member_field: str, reward_field: str) -> tuple[str, str, str]:
        member = parse_member(member_field)
        reward = parse_child(reward_field, "rewards", "reward")
        _same_program(member.program_id, reward.program_id, "reward")
        return member.program_id, member.member_id, reward.resource_id

    @grpc_method
    async def RedeemReward(
        self, request: pb.RedeemRewardRequest, context: Ctx
    ) -> pb.RedeemRewardResponse:
        program_id, member_id, reward_id = self._member_and_reward(request.member, request.reward)
        return await exactly_once(
            self.app,
            method="RedeemReward",
            request=request,
            request_id=request.request_id,
            program_id=program_id,
            member_id=member_id,
            work=lambda uow: svc.redeem_reward(
                uow, program_id, member_id, reward_id, self.app.clock()
            ),
            encode=lambda r: pb.RedeemRewardResponse(
                redemption=conv.redemption_to_proto(program_id, member_id, r.redemption),
                balance=balance_to_proto(r.balance),
            ),
            response_type=pb.RedeemRewardResponse,
            on_commit=lambda r: self._count_redemption("reward", r.redemption.points),
        )

    @grpc_method
    async def ReserveRedemption(
        self, request: pb.ReserveRedemptionRequest, context: Ctx
    ) -> pb.ReserveRedemptionResponse:
        program_id, member_id, reward_id = self._member_and_reward(request.member, request.reward)
        return await exactly_once(
            self.app,
            method="ReserveRedemption",
            request=request,
            request_id=request.request_id,
            program_id=program_id,
            member_id=member_id,
            work=lambda uow: svc.reserve_redemption(
                uow, program_id, member_id, reward_id, request.hold_seconds, self.app.clock()
            ),
            encode=lambda r: pb.ReserveRedemptionResponse(
                redemption=conv.redemption_to_proto(program_id, member_id, r.redemption),
                balance=balance_to_proto(r.balance),
            ),
            response_type=pb.ReserveRedemptionResponse,
        )

    async def _change(
        self, method: str, request: Any, action: Any, response_type: Any, on_commit: Any = None
    ) -> Any:
        name: MemberChildName = parse_member_child(request.name, "redemptions")
        return await exactly_once(
            self.app,
            method=method,
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id=name.member_id,
            work=lambda uow: action(
                uow, name.program_id, name.member_id, name.resource_id, self.app.clock()
            ),
            encode=lambda r: response_type(
                redemption=conv.redemption_to_proto(name.program_id, name.member_id, r.redemption)
            ),
            response_type=response_type,
            on_commit=on_commit,
        )

    @grpc_method
    async def ConfirmRedemption(
        self, request: pb.ConfirmRedemptionRequest, context: Ctx
    ) -> pb.ConfirmRedemptionResponse:
        return await self._change(
            "ConfirmRedemption",
            request,
            svc.confirm_redemption,
            pb.ConfirmRedemptionResponse,
            on_commit=lambda r: self._count_redemption("reward", r.redemption.points),
        )

    @grpc_method
    async def CancelRedemption(
        self, request: pb.CancelRedemptionRequest, context: Ctx
    ) -> pb.CancelRedemptionResponse:
        return await self._change(
            "CancelRedemption", request, svc.cancel_redemption, pb.CancelRedemptionResponse
        )

    @grpc_method
    async def FulfillRedemption(
        self, request: pb.FulfillRedemptionRequest, context: Ctx
    ) -> pb.FulfillRedemptionResponse:
        return await self._change(
            "FulfillRedemption", request, svc.fulfill_redemption, pb.FulfillRedemptionResponse
        )

    @grpc_method
    async def GetRedemption(
        self, request: pb.GetRedemptionRequest, context: Ctx
    ) -> pb.GetRedemptionResponse:
        name = parse_member_child(request.name, "redemptions")
        redemption = await in_transaction(
            self.app,
            lambda uow: svc.get_redemption(
                uow, name.program_id, name.member_id, name.resource_id, self.app.clock()
            ),
        )
        return pb.GetRedemptionResponse(
            redemption=conv.redemption_to_proto(name.program_id, name.member_id, redemption)
        )

    @grpc_method
    async def ListRedemptions(
        self, request: pb.ListRedemptionsRequest, context: Ctx
    ) -> pb.ListRedemptionsResponse:
        from datetime import datetime

        member = parse_member(request.parent, "parent")
        limit = page_size(request.page_size)
        query = {"m": request.parent}
        position = decode_page_token(request.page_token, query)
        before = None
        if position is not None:
            try:
                before = (datetime.fromisoformat(str(position["t"])), str(position["id"]))
            except (KeyError, ValueError):
                raise InvalidArgument.for_field(
                    "page_token", "is malformed", reason="INVALID_PAGE_TOKEN"
                ) from None
        page = await in_transaction(
            self.app,
            lambda uow: svc.list_redemptions(
                uow, member.program_id, member.member_id, before, limit + 1, self.app.clock()
            ),
        )
        token = ""
        if len(page) > limit:
            last = page[limit - 1]
            token = encode_page_token(
                {"q": query, "t": last.create_time.isoformat(), "id": last.redemption_id}
            )
        return pb.ListRedemptionsResponse(
            redemptions=[
                conv.redemption_to_proto(member.program_id, member.member_id, r)
                for r in page[:limit]
            ],
            next_page_token=token,
        )

    @grpc_method
    async def RedeemPoints(
        self, request: pb.RedeemPointsRequest, context: Ctx
    ) -> pb.RedeemPointsResponse:
        from loyalty_engine.gen.loyalty.v1 import common_pb2

        member = parse_member(request.member)
        total = require_field(request, "order_total", "order_total")
        return await exactly_once(
            self.app,
            method="RedeemPoints",
            request=request,
            request_id=request.request_id,
            program_id=member.program_id,
            member_id=member.member_id,
            work=lambda uow: svc.redeem_points(
                uow,
                member.program_id,
                member.member_id,
                request.order_id,
                total.amount_minor,
                total.currency_code,
                request.points,
                self.app.clock(),
            ),
            encode=lambda r: pb.RedeemPointsResponse(
                discount=common_pb2.Money(
                    amount_minor=r.redemption.discount_minor,
                    currency_code=r.redemption.currency_code,
                ),
                redemption=conv.redemption_to_proto(
                    member.program_id, member.member_id, r.redemption
                ),
                balance=balance_to_proto(r.balance),
            ),
            response_type=pb.RedeemPointsResponse,
            on_commit=lambda r: self._count_redemption("points", r.redemption.points),
        )
