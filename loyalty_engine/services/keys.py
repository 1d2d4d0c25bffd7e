"""API keys: creation (the secret is shown once), listing, revocation and authentication."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from loyalty_engine.domain.errors import InvalidArgument, NotFound, Unauthenticated
from loyalty_engine.domain.keys import (
    OPERATOR_PROGRAM,
    ApiKey,
    Scope,
    hash_secret,
    new_key_material,
    parse_token,
    secret_matches,
)
from loyalty_engine.services.programs import get_program
from loyalty_engine.storage.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class CreatedKey:
    """A new key and the token to hand out (never stored, never shown again)."""

    key: ApiKey
    token: str


async def create_key(
    uow: UnitOfWork,
    program_id: str,
    label: str,
    scopes: frozenset[Scope],
    now: datetime,
    expire_time: datetime | None = None,
) -> CreatedKey:
    """Create a key for a program (or, with program_id "", an operator key)."""
    if program_id != OPERATOR_PROGRAM:
        await get_program(uow, program_id)
    if expire_time is not None and expire_time <= now:
        raise InvalidArgument.for_field("api_key.expire_time", "must be in the future")
    key_id, secret, token = new_key_material()
    key = ApiKey(
        program_id=program_id,
        key_id=key_id,
        label=label,
        scopes=scopes,
        secret_hash=hash_secret(secret),
        create_time=now,
        expire_time=expire_time,
    )
    key.validate()
    await uow.keys.add(key)
    return CreatedKey(key, token)


async def list_keys(uow: UnitOfWork, program_id: str, after_id: str, limit: int) -> list[ApiKey]:
    """A program's keys, without secrets."""
    await get_program(uow, program_id)
    return await uow.keys.list_after(program_id, after_id, limit)


async def revoke_key(uow: UnitOfWork, program_id: str, key_id: str, now: datetime) -> ApiKey:
    """Revoke a key at once."""
    key = await uow.keys.by_id(key_id)
    if key is None or key.program_id != program_id:
        raise NotFound("API_KEY_NOT_FOUND", f"API key {key_id!r} not found")
    await uow.keys.revoke(program_id, key_id, now)
    found = await uow.keys.by_id(key_id)
    assert found is not None
    return found


async def authenticate(uow: UnitOfWork, token: str, now: datetime) -> ApiKey:
    """The key a presented token stands for; UNAUTHENTICATED if unknown, revoked or expired."""
    key_id, secret = parse_token(token)
    key = await uow.keys.by_id(key_id)
    if key is None or not secret_matches(key, secret):
        raise Unauthenticated("INVALID_API_KEY", "the API key is not valid")
    if not key.usable_at(now):
        raise Unauthenticated("API_KEY_REVOKED", "the API key was revoked or has expired")
    return key
