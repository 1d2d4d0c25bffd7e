"""Members: enrolment, profile changes, lookup and erasure."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime

from loyalty_engine.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from loyalty_engine.domain.members import (
    IdentifierKind,
    Member,
    MemberState,
    normalize_identifier,
    validate_profile,
)
from loyalty_engine.domain.names import check_member_id
from loyalty_engine.services.programs import get_program
from loyalty_engine.storage.repositories import MemberFilter
from loyalty_engine.storage.unit_of_work import UnitOfWork


def member_not_found(program_id: str, member_id: str) -> NotFound:
    """The error for an unknown member."""
    return NotFound(
        "MEMBER_NOT_FOUND",
        f"member {member_id!r} not found",
        {"program": program_id, "member": member_id},
    )


def _normalized(member: Member) -> Member:
    return replace(
        member,
        external_id=member.external_id.strip(),
        email=normalize_identifier(IdentifierKind.EMAIL, member.email) if member.email else None,
        phone=member.phone.strip() if member.phone else None,
        card_number=member.card_number.strip() if member.card_number else None,
    )


async def enroll_member(uow: UnitOfWork, member: Member, now: datetime) -> Member:
    """Enroll a member; every lookup key must be free in the program."""
    await get_program(uow, member.program_id)
    member_id = member.member_id or uuid.uuid4().hex[:20]
    check_member_id(member_id, "member_id")
    member = _normalized(
        replace(
            member,
            member_id=member_id,
            join_time=member.join_time or now,
            state=MemberState.ACTIVE,
            tier_id=None,
            create_time=now,
            update_time=now,
        )
    )
    validate_profile(member, now.date())
    if not await uow.members.add(member):
        raise AlreadyExists("MEMBER_EXISTS", f"member {member_id!r} exists already")
    for kind, value in member.identifiers().items():
        await uow.members.claim_identifier(member.program_id, kind, value, member_id)
    return member


async def get_member(uow: UnitOfWork, program_id: str, member_id: str) -> Member:
    """A member, or NOT_FOUND (also when the program does not exist)."""
    member = await uow.members.get(program_id, member_id)
    if member is None:
        await get_program(uow, program_id)
        raise member_not_found(program_id, member_id)
    return member


async def update_member(uow: UnitOfWork, updated: Member, now: datetime) -> Member:
    """Replace a member's profile, moving lookup keys that changed."""
    current = await get_member(uow, updated.program_id, updated.member_id)
    if current.state is MemberState.ERASED:
        raise FailedPrecondition("MEMBER_ERASED", "the member's personal data was erased")
    updated = _normalized(
        replace(
            updated,
            state=current.state,
            tier_id=current.tier_id,
            create_time=current.create_time,
            update_time=now,
            join_time=updated.join_time or current.join_time,
        )
    )
    validate_profile(updated, now.date())
    old_keys, new_keys = current.identifiers(), updated.identifiers()
    for kind, value in old_keys.items():
        if new_keys.get(kind) != value:
            await uow.members.release_identifier(updated.program_id, kind, value)
    for kind, value in new_keys.items():
        if old_keys.get(kind) != value:
            await uow.members.claim_identifier(updated.program_id, kind, value, updated.member_id)
    await uow.members.update(updated)
    return updated


async def list_members(
    uow: UnitOfWork, program_id: str, after_id: str, limit: int, filters: MemberFilter
) -> list[Member]:
    """Members by id."""
    await get_program(uow, program_id)
    return await uow.members.list_after(program_id, after_id, limit, filters)


async def lookup_member(
    uow: UnitOfWork, program_id: str, kind: IdentifierKind, value: str
) -> Member:
    """The member holding a key, or NOT_FOUND."""
    await get_program(uow, program_id)
    member_id = await uow.members.find_by_identifier(
        program_id, kind, normalize_identifier(kind, value)
    )
    if member_id is None:
        raise NotFound(
            "MEMBER_NOT_FOUND", f"no member with that {kind.value.lower()}", {"program": program_id}
        )
    return await get_member(uow, program_id, member_id)


async def erase_member(uow: UnitOfWork, program_id: str, member_id: str, now: datetime) -> Member:
    """Erase personal data; the ledger, purchases and statistics stay so the books still add up."""
    current = await get_member(uow, program_id, member_id)
    if current.state is MemberState.ERASED:
        return current
    erased = current.erased(now)
    for kind in (IdentifierKind.EMAIL, IdentifierKind.PHONE):
        value = current.identifiers().get(kind)
        if value:
            await uow.members.release_identifier(program_id, kind, value)
    await uow.members.update(erased, erase_time=now)
    return erased
