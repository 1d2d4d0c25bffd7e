"""API keys: protobuf <-> domain."""

from __future__ import annotations

from collections.abc import Iterable

from loyalty_engine.api.converters.common import set_timestamp
from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.domain.keys import OPERATOR_PROGRAM, ApiKey, Scope
from loyalty_engine.domain.names import child_name
from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pb

SCOPES: dict[int, Scope] = {
    pb.API_KEY_SCOPE_POS: Scope.POS,
    pb.API_KEY_SCOPE_SHOP: Scope.SHOP,
    pb.API_KEY_SCOPE_MARKETING: Scope.MARKETING,
    pb.API_KEY_SCOPE_ADMIN: Scope.ADMIN,
}
SCOPES_TO_PROTO: dict[Scope, pb.ApiKeyScope.ValueType] = {
    Scope.POS: pb.API_KEY_SCOPE_POS,
    Scope.SHOP: pb.API_KEY_SCOPE_SHOP,
    Scope.MARKETING: pb.API_KEY_SCOPE_MARKETING,
    Scope.ADMIN: pb.API_KEY_SCOPE_ADMIN,
}


def scopes_from_proto(values: Iterable[int]) -> frozenset[Scope]:
    """Scopes of a key to create; unknown or unset values are refused."""
    scopes = set()
    for i, value in enumerate(values):
        if value not in SCOPES:
            raise InvalidArgument.for_field(
                f"api_key.scopes[{i}]", "must be POS, SHOP, MARKETING or ADMIN"
            )
        scopes.add(SCOPES[value])
    return frozenset(scopes)


def key_to_proto(key: ApiKey) -> pb.ApiKey:
    """An ApiKey message (never the secret)."""
    program = key.program_id if key.program_id != OPERATOR_PROGRAM else "-"
    msg = pb.ApiKey(
        name=child_name(program, "apiKeys", key.key_id),
        label=key.label,
        scopes=[SCOPES_TO_PROTO[s] for s in sorted(key.scopes) if s in SCOPES_TO_PROTO],
    )
    set_timestamp(msg.create_time, key.create_time)
    set_timestamp(msg.expire_time, key.expire_time)
    set_timestamp(msg.revoke_time, key.revoke_time)
    return msg
