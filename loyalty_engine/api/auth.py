"""Who may call what: API keys from `authorization: Bearer <key>`, scopes, tenant isolation.

Every RPC but health and reflection needs a key. A key's scopes must allow the method
(else PERMISSION_DENIED), and every resource name in the request must lie in the key's
program (else NOT_FOUND, so a key cannot even learn that another program exists).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from loyalty_engine.domain.errors import NotFound, PermissionDenied, Unauthenticated
from loyalty_engine.domain.keys import OPERATOR_PROGRAM, ApiKey, Scope
from loyalty_engine.storage.database import Database

POS, SHOP, MARKETING, ADMIN = Scope.POS, Scope.SHOP, Scope.MARKETING, Scope.ADMIN
ALL = frozenset({POS, SHOP, MARKETING, ADMIN})

# The scopes that may call each method; the operator scope may call everything.
METHOD_SCOPES: dict[str, frozenset[Scope]] = {
    "ProgramService/CreateProgram": frozenset(),
    "ProgramService/ListPrograms": frozenset(),
    "ProgramService/GetProgram": ALL,
    "ProgramService/UpdateProgram": frozenset({ADMIN}),
    "ProgramService/CreateTier": frozenset({ADMIN}),
    "ProgramService/ListTiers": ALL,
    "ProgramService/UpdateTier": frozenset({ADMIN}),
    "ProgramService/DeleteTier": frozenset({ADMIN}),
    "ProgramService/CreateEarningRule": frozenset({ADMIN}),
    "ProgramService/GetEarningRule": ALL,
    "ProgramService/ListEarningRules": ALL,
    "ProgramService/UpdateEarningRule": frozenset({ADMIN}),
    "ProgramService/DeleteEarningRule": frozenset({ADMIN}),
    "ProgramService/CreateApiKey": frozenset({ADMIN}),
    "ProgramService/ListApiKeys": frozenset({ADMIN}),
    "ProgramService/RevokeApiKey": frozenset({ADMIN}),
    "MemberService/EnrollMember": frozenset({POS, SHOP, ADMIN}),
    "MemberService/GetMember": ALL,
    "MemberService/UpdateMember": frozenset({SHOP, ADMIN}),
    "MemberService/ListMembers": frozenset({MARKETING, ADMIN}),
    "MemberService/LookupMember": frozenset({POS, SHOP, ADMIN}),
    "MemberService/EraseMember": frozenset({ADMIN}),
    "PointsService/RecordPurchase": frozenset({POS, ADMIN}),
    "PointsService/RecordReturn": frozenset({POS, ADMIN}),
    "PointsService/AdjustPoints": frozenset({ADMIN}),
    "PointsService/GetBalance": ALL,
    "PointsService/ListLedgerEntries": frozenset({SHOP, MARKETING, ADMIN}),
    "PointsService/ListTierChanges": frozenset({SHOP, MARKETING, ADMIN}),
    "PointsService/ExpirePoints": frozenset({ADMIN}),
    "PointsService/ImportPurchases": frozenset({ADMIN}),
    "RewardService/CreateReward": frozenset({ADMIN}),
    "RewardService/GetReward": ALL,
    "RewardService/ListRewards": ALL,
    "RewardService/UpdateReward": frozenset({ADMIN}),
    "RewardService/ArchiveReward": frozenset({ADMIN}),
    "RewardService/RedeemReward": frozenset({SHOP, ADMIN}),
    "RewardService/ReserveRedemption": frozenset({SHOP, ADMIN}),
    "RewardService/ConfirmRedemption": frozenset({SHOP, ADMIN}),
    "RewardService/CancelRedemption": frozenset({SHOP, ADMIN}),
    "RewardService/GetRedemption": frozenset({SHOP, ADMIN}),
    "RewardService/ListRedemptions": frozenset({SHOP, ADMIN}),
    "RewardService/RedeemPoints": frozenset({SHOP, ADMIN}),
    "RewardService/FulfillRedemption": frozenset({ADMIN}),
    "OfferService/ListOffers": frozenset({SHOP, ADMIN}),
    "OfferService/GetOffer": frozenset({SHOP, MARKETING, ADMIN}),
    "OfferService/ValidateOfferCode": frozenset({SHOP, ADMIN}),
    "OfferService/RedeemOfferCode": frozenset({SHOP, ADMIN}),
    "OfferService/RevokeOffer": frozenset({MARKETING, ADMIN}),
    "OfferService/RunRules": frozenset({MARKETING, ADMIN}),
    # Rule files are the deployment's, not one program's: reloading them is the operator's call.
    "OfferService/ReloadRules": frozenset(),
    "SegmentService/RefreshSegments": frozenset({MARKETING, ADMIN}),
    "SegmentService/ListSegments": frozenset({MARKETING, ADMIN}),
    "SegmentService/ListSegmentMembers": frozenset({MARKETING, ADMIN}),
    "SegmentService/ListTopCustomers": frozenset({MARKETING, ADMIN}),
    "SegmentService/GetMemberInsights": frozenset({MARKETING, ADMIN}),
    "SegmentService/GetProgramMetrics": frozenset({MARKETING, ADMIN}),
}

CACHE_SECONDS = 5.0

# The key of the call being served, for checks a handler makes itself (streamed requests).
current_key: ContextVar[ApiKey | None] = ContextVar("current_key", default=None)


def short_method(full_method: str) -> str:
    """`/loyalty.v1.PointsService/GetBalance` -> `PointsService/GetBalance`."""
    return full_method.rsplit(".", 1)[-1]


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The key from `authorization: Bearer <key>`; UNAUTHENTICATED when there is none."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise Unauthenticated("MISSING_API_KEY", "send an API key as `authorization: Bearer <key>`")


def referenced_programs(message: Message, depth: int = 0) -> Iterable[str]:
    """Program ids of every resource name (`programs/{program}...`) anywhere in a request."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            values = value if field.is_repeated else [value]
            for text in values:
                if text.startswith("programs/"):
                    yield text.split("/", 2)[1]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            items = value if field.is_repeated else [value]
            for item in items:
                if isinstance(item, Message):
                    yield from referenced_programs(item, depth + 1)


class Authenticator:
    """Authenticates tokens (with a short in-process cache) and authorizes calls."""

    def __init__(self, db: Database, clock: Any) -> None:
        self._db = db
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey]] = {}

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (on revocation, so it stops working at once here)."""
        for token, (_, key) in list(self._cache.items()):
            if key.key_id == key_id:
                del self._cache[token]

    async def identify(self, token: str) -> ApiKey:
        """The key behind a token."""
        from loyalty_engine.services.keys import authenticate

        cached = self._cache.get(token)
        now = self._clock()
        if cached is not None and cached[0] > time.monotonic() and cached[1].usable_at(now):
            return cached[1]
        async with self._db.unit_of_work() as uow:
            key = await authenticate(uow, token, now)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (time.monotonic() + CACHE_SECONDS, key)
        return key

    async def authorize(
        self, full_method: str, request: Message | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ApiKey:
        """The caller's key, if it may call this method on these resources."""
        key = await self.identify(bearer_token(context))
        current_key.set(key)
        if Scope.OPERATOR in key.scopes:
            return key
        allowed = METHOD_SCOPES.get(short_method(full_method), frozenset())
        if not key.scopes & allowed:
            raise PermissionDenied(
                "SCOPE_NOT_ALLOWED",
                f"the key's scopes ({', '.join(sorted(key.scopes))}) "
                f"do not allow {short_method(full_method)}",
            )
        if request is not None:
            check_tenant(key, request)
        return key


def check_streamed_request(request: Message) -> None:
    """Tenant check for one message of a client stream (the method was authorized already)."""
    key = current_key.get()
    if key is not None:
        check_tenant(key, request)


def check_tenant(key: ApiKey, request: Message) -> None:
    """NOT_FOUND unless every resource the request names lies in the key's program."""
    if key.program_id == OPERATOR_PROGRAM:
        return
    for program_id in referenced_programs(request):
        if program_id != key.program_id:
            raise NotFound("PROGRAM_NOT_FOUND", f"program {program_id!r} not found")
