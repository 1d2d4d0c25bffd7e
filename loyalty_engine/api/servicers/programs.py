"""ProgramService."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from loyalty_engine.api.converters import keys as keys_conv
from loyalty_engine.api.converters import programs as conv
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
from loyalty_engine.domain.names import check_resource_id, parse_child, parse_program
from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pb
from loyalty_engine.gen.loyalty.v1 import program_service_pb2_grpc as pb_grpc
from loyalty_engine.services import keys as keys_svc
from loyalty_engine.services import programs as svc
from loyalty_engine.services.paging import page_size

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class ProgramServicer(pb_grpc.ProgramServiceServicer):
    """Programs, tiers and earning rules."""

    SERVICE = "loyalty.v1.ProgramService"

    def __init__(self, app: App) -> None:
        self.app = app

    @grpc_method
    async def CreateProgram(
        self, request: pb.CreateProgramRequest, context: Ctx
    ) -> pb.CreateProgramResponse:
        # Checked before exactly_once, which stores the id with the request id.
        program_id = check_resource_id(request.program_id, "program_id")
        program = conv.program_from_proto(program_id, require_field(request, "program", "program"))
        return await exactly_once(
            self.app,
            method="CreateProgram",
            request=request,
            request_id=request.request_id,
            program_id=program_id,
            member_id="",
            work=lambda uow: svc.create_program(uow, program, self.app.clock()),
            encode=lambda p: pb.CreateProgramResponse(program=conv.program_to_proto(p)),
            response_type=pb.CreateProgramResponse,
        )

    @grpc_method
    async def GetProgram(
        self, request: pb.GetProgramRequest, context: Ctx
    ) -> pb.GetProgramResponse:
        program_id = parse_program(request.name)
        program = await in_transaction(self.app, lambda uow: svc.get_program(uow, program_id))
        return pb.GetProgramResponse(program=conv.program_to_proto(program))

    @grpc_method
    async def ListPrograms(
        self, request: pb.ListProgramsRequest, context: Ctx
    ) -> pb.ListProgramsResponse:
        limit = page_size(request.page_size)
        position = decode_page_token(request.page_token, {})
        after = position_after(position)
        programs = await in_transaction(
            self.app, lambda uow: svc.list_programs(uow, after, limit + 1)
        )
        token = (
            encode_page_token({"q": {}, "after": programs[limit - 1].program_id})
            if len(programs) > limit
            else ""
        )
        return pb.ListProgramsResponse(
            programs=[conv.program_to_proto(p) for p in programs[:limit]], next_page_token=token
        )

    @grpc_method
    async def UpdateProgram(
        self, request: pb.UpdateProgramRequest, context: Ctx
    ) -> pb.UpdateProgramResponse:
        incoming = require_field(request, "program", "program")
        program_id = parse_program(incoming.name, "program.name")
        mask = checked_mask(request.update_mask, pb.Program, conv.PROGRAM_UPDATABLE)

        async def work(uow: Any) -> Any:
            current = conv.program_to_proto(await svc.get_program(uow, program_id))
            merged = merge_masked(mask, incoming, current)
            updated = conv.program_from_proto(program_id, merged)
            return await svc.update_program(uow, updated, self.app.clock())

        return await exactly_once(
            self.app,
            method="UpdateProgram",
            request=request,
            request_id=request.request_id,
            program_id=program_id,
            member_id="",
            work=work,
            encode=lambda p: pb.UpdateProgramResponse(program=conv.program_to_proto(p)),
            response_type=pb.UpdateProgramResponse,
        )

    @grpc_method
    async def CreateTier(
        self, request: pb.CreateTierRequest, context: Ctx
    ) -> pb.CreateTierResponse:
        program_id = parse_program(request.parent, "parent")
        tier = conv.tier_from_proto(request.tier_id, require_field(request, "tier", "tier"))
        return await exactly_once(
            self.app,
            method="CreateTier",
            request=request,
            request_id=request.request_id,
            program_id=program_id,
            member_id="",
            work=lambda uow: svc.create_tier(uow, program_id, tier, self.app.clock()),
            encode=lambda t: pb.CreateTierResponse(tier=conv.tier_to_proto(program_id, t)),
            response_type=pb.CreateTierResponse,
        )

    @grpc_method
    async def ListTiers(self, request: pb.ListTiersRequest, context: Ctx) -> pb.ListTiersResponse:
        program_id = parse_program(request.parent, "parent")
        tiers = await in_transaction(self.app, lambda uow: svc.list_tiers(uow, program_id))
        return pb.ListTiersResponse(tiers=[conv.tier_to_proto(program_id, t) for t in tiers])

    @grpc_method
    async def UpdateTier(
        self, request: pb.UpdateTierRequest, context: Ctx
    ) -> pb.UpdateTierResponse:
        incoming = require_field(request, "tier", "tier")
        name = parse_child(incoming.name, "tiers", "tier.name")
        mask = checked_mask(request.update_mask, pb.Tier, conv.TIER_UPDATABLE)

        async def work(uow: Any) -> Any:
            current = conv.tier_to_proto(
                name.program_id, await svc.get_tier(uow, name.program_id, name.resource_id)
            )
            merged = merge_masked(mask, incoming, current)
            return await svc.update_tier(
                uow,
                name.program_id,
                conv.tier_from_proto(name.resource_id, merged),
                self.app.clock(),
            )

        return await exactly_once(
            self.app,
            method="UpdateTier",
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id="",
            work=work,
            encode=lambda t: pb.UpdateTierResponse(tier=conv.tier_to_proto(name.program_id, t)),
            response_type=pb.UpdateTierResponse,
        )

    @grpc_method
    async def DeleteTier(
        self, request: pb.DeleteTierRequest, context: Ctx
    ) -> pb.DeleteTierResponse:
        name = parse_child(request.name, "tiers")
        return await exactly_once(
            self.app,
            method="DeleteTier",
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id="",
            work=lambda uow: svc.delete_tier(uow, name.program_id, name.resource_id),
            encode=lambda _: pb.DeleteTierResponse(),
            response_type=pb.DeleteTierResponse,
        )

    @grpc_method
    async def CreateEarningRule(
        self, request: pb.CreateEarningRuleRequest, context: Ctx
    ) -> pb.CreateEarningRuleResponse:
        program_id = parse_program(request.parent, "parent")
        rule = conv.rule_from_proto(
            request.earning_rule_id, require_field(request, "earning_rule", "earning_rule")
        )
        return await exactly_once(
            self.app,
            method="CreateEarningRule",
            request=request,
            request_id=request.request_id,
            program_id=program_id,
            member_id="",
            work=lambda uow: svc.create_earning_rule(uow, program_id, rule, self.app.clock()),
            encode=lambda r: pb.CreateEarningRuleResponse(
                earning_rule=conv.rule_to_proto(program_id, r)
            ),
            response_type=pb.CreateEarningRuleResponse,
        )

    @grpc_method
    async def GetEarningRule(
        self, request: pb.GetEarningRuleRequest, context: Ctx
    ) -> pb.GetEarningRuleResponse:
        name = parse_child(request.name, "earningRules")
        rule = await in_transaction(
            self.app, lambda uow: svc.get_earning_rule(uow, name.program_id, name.resource_id)
        )
        return pb.GetEarningRuleResponse(earning_rule=conv.rule_to_proto(name.program_id, rule))

    @grpc_method
    async def ListEarningRules(
        self, request: pb.ListEarningRulesRequest, context: Ctx
    ) -> pb.ListEarningRulesResponse:
        program_id = parse_program(request.parent, "parent")
        rules = await in_transaction(self.app, lambda uow: svc.list_earning_rules(uow, program_id))
        return pb.ListEarningRulesResponse(
            earning_rules=[conv.rule_to_proto(program_id, r) for r in rules]
        )

    @grpc_method
    async def UpdateEarningRule(
        self, request: pb.UpdateEarningRuleRequest, context: Ctx
    ) -> pb.UpdateEarningRuleResponse:
        incoming = require_field(request, "earning_rule", "earning_rule")
        name = parse_child(incoming.name, "earningRules", "earning_rule.name")
        mask = checked_mask(request.update_mask, pb.EarningRule, conv.RULE_UPDATABLE)

        async def work(uow: Any) -> Any:
            current = conv.rule_to_proto(
                name.program_id, await svc.get_earning_rule(uow, name.program_id, name.resource_id)
            )
            merged = merge_masked(mask, incoming, current)
            return await svc.update_earning_rule(
                uow,
                name.program_id,
                conv.rule_from_proto(name.resource_id, merged),
                self.app.clock(),
            )

        return await exactly_once(
            self.app,
            method="UpdateEarningRule",
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id="",
            work=work,
            encode=lambda r: pb.UpdateEarningRuleResponse(
                earning_rule=conv.rule_to_proto(name.program_id, r)
            ),
            response_type=pb.UpdateEarningRuleResponse,
        )

    @grpc_method
    async def DeleteEarningRule(
        self, request: pb.DeleteEarningRuleRequest, context: Ctx
    ) -> pb.DeleteEarningRuleResponse:
        name = parse_child(request.name, "earningRules")
        return await exactly_once(
            self.app,
            method="DeleteEarningRule",
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id="",
            work=lambda uow: svc.delete_earning_rule(uow, name.program_id, name.resource_id),
            encode=lambda _: pb.DeleteEarningRuleResponse(),
            response_type=pb.DeleteEarningRuleResponse,
        )

    @grpc_method
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Ctx
    ) -> pb.CreateApiKeyResponse:
        program_id = parse_program(request.parent, "parent")
        incoming = require_field(request, "api_key", "api_key")
        scopes = keys_conv.scopes_from_proto(incoming.scopes)
        expire = optional_datetime(incoming, "expire_time", "api_key.expire_time")
        return await exactly_once(
            self.app,
            method="CreateApiKey",
            request=request,
            request_id=request.request_id,
            program_id=program_id,
            member_id="",
            work=lambda uow: keys_svc.create_key(
                uow, program_id, incoming.label, scopes, self.app.clock(), expire
            ),
            encode=lambda created: pb.CreateApiKeyResponse(
                api_key=keys_conv.key_to_proto(created.key), secret=created.token
            ),
            response_type=pb.CreateApiKeyResponse,
        )

    @grpc_method
    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Ctx
    ) -> pb.ListApiKeysResponse:
        program_id = parse_program(request.parent, "parent")
        limit = page_size(request.page_size)
        query = {"p": program_id}
        position = decode_page_token(request.page_token, query)
        after = position_after(position)
        found = await in_transaction(
            self.app, lambda uow: keys_svc.list_keys(uow, program_id, after, limit + 1)
        )
        token = (
            encode_page_token({"q": query, "after": found[limit - 1].key_id})
            if len(found) > limit
            else ""
        )
        return pb.ListApiKeysResponse(
            api_keys=[keys_conv.key_to_proto(k) for k in found[:limit]], next_page_token=token
        )

    @grpc_method
    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Ctx
    ) -> pb.RevokeApiKeyResponse:
        name = parse_child(request.name, "apiKeys")
        response = await exactly_once(
            self.app,
            method="RevokeApiKey",
            request=request,
            request_id=request.request_id,
            program_id=name.program_id,
            member_id="",
            work=lambda uow: keys_svc.revoke_key(
                uow, name.program_id, name.resource_id, self.app.clock()
            ),
            encode=lambda key: pb.RevokeApiKeyResponse(api_key=keys_conv.key_to_proto(key)),
            response_type=pb.RevokeApiKeyResponse,
        )
        if self.app.auth is not None:
            self.app.auth.forget(name.resource_id)
        return response
