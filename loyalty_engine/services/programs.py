"""Program configuration: programs, tiers and earning rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from loyalty_engine.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from loyalty_engine.domain.names import check_resource_id
from loyalty_engine.domain.program import EarningRule, Program, with_rules
from loyalty_engine.domain.tiers import Tier
from loyalty_engine.storage.unit_of_work import UnitOfWork


def program_not_found(program_id: str) -> NotFound:
    """The error for an unknown program."""
    return NotFound(
        "PROGRAM_NOT_FOUND", f"program {program_id!r} not found", {"program": program_id}
    )


async def get_program(uow: UnitOfWork, program_id: str) -> Program:
    """A program's own settings, or NOT_FOUND."""
    program = await uow.programs.get(program_id)
    if program is None:
        raise program_not_found(program_id)
    return program


async def load_program(uow: UnitOfWork, program_id: str) -> Program:
    """A program with its tiers and earning rules folded into its policies (briefly cached)."""
    cached = uow.program_cache.get(program_id)
    if cached is not None:
        return cached
    program = await get_program(uow, program_id)
    tiers = await uow.programs.tiers(program_id)
    rules = await uow.programs.earning_rules(program_id)
    loaded = with_rules(program, tiers, rules)
    uow.program_cache.put(loaded)
    return loaded


async def create_program(uow: UnitOfWork, program: Program, now: datetime) -> Program:
    """Create a program with an id of the caller's choosing."""
    check_resource_id(program.program_id, "program_id")
    program.validate()
    program = replace(program, create_time=now, update_time=now)
    if not await uow.programs.add(program):
        raise AlreadyExists("PROGRAM_EXISTS", f"program {program.program_id!r} exists already")
    return program


async def list_programs(uow: UnitOfWork, after_id: str, limit: int) -> list[Program]:
    """Programs by id."""
    return await uow.programs.list_after(after_id, limit)


async def update_program(uow: UnitOfWork, updated: Program, now: datetime) -> Program:
    """Replace a program's settings; its currency cannot change once purchases use it."""
    current = await get_program(uow, updated.program_id)
    if updated.currency_code != current.currency_code:
        raise InvalidArgument.for_field("program.currency_code", "cannot be changed")
    updated.validate()
    updated = replace(updated, create_time=current.create_time, update_time=now)
    uow.program_cache.forget(updated.program_id)
    await uow.programs.update(updated)
    return updated


def _check_tiers(program: Program, tiers: list[Tier]) -> None:
    """The program's tier policy with these tiers must be valid (ascending thresholds, ...)."""
    ordered = tuple(sorted(tiers, key=lambda t: t.threshold))
    replace(program.tier_policy, tiers=ordered).validate("tier")


def _tier_not_found(program_id: str, tier_id: str) -> NotFound:
    return NotFound("TIER_NOT_FOUND", f"tier {tier_id!r} not found", {"program": program_id})


async def create_tier(uow: UnitOfWork, program_id: str, tier: Tier, now: datetime) -> Tier:
    """Add a tier; thresholds must stay strictly increasing across the program's tiers."""
    check_resource_id(tier.tier_id, "tier_id")
    program = await get_program(uow, program_id)
    tiers = await uow.programs.tiers(program_id)
    if any(t.tier_id == tier.tier_id for t in tiers):
        raise AlreadyExists("TIER_EXISTS", f"tier {tier.tier_id!r} exists already")
    _check_tiers(program, [*tiers, tier])
    uow.program_cache.forget(program_id)
    if not await uow.programs.add_tier(program_id, tier, now):
        raise AlreadyExists("TIER_EXISTS", f"tier {tier.tier_id!r} exists already")
    return tier


async def list_tiers(uow: UnitOfWork, program_id: str) -> list[Tier]:
    """The program's tiers, ascending."""
    await get_program(uow, program_id)
    return await uow.programs.tiers(program_id)


async def get_tier(uow: UnitOfWork, program_id: str, tier_id: str) -> Tier:
    """One tier, or NOT_FOUND."""
    for tier in await list_tiers(uow, program_id):
        if tier.tier_id == tier_id:
            return tier
    raise _tier_not_found(program_id, tier_id)


async def update_tier(uow: UnitOfWork, program_id: str, updated: Tier, now: datetime) -> Tier:
    """Replace a tier's settings."""
    program = await get_program(uow, program_id)
    tiers = await uow.programs.tiers(program_id)
    if not any(t.tier_id == updated.tier_id for t in tiers):
        raise _tier_not_found(program_id, updated.tier_id)
    _check_tiers(program, [updated if t.tier_id == updated.tier_id else t for t in tiers])
    uow.program_cache.forget(program_id)
    await uow.programs.update_tier(program_id, updated, now)
    return updated


async def delete_tier(uow: UnitOfWork, program_id: str, tier_id: str) -> None:
    """Delete a tier that no member holds."""
    await get_tier(uow, program_id, tier_id)
    if await uow.programs.tier_in_use(program_id, tier_id):
        raise FailedPrecondition(
            "TIER_IN_USE", f"members hold tier {tier_id!r}; it cannot be deleted"
        )
    uow.program_cache.forget(program_id)
    await uow.programs.delete_tier(program_id, tier_id)


def _rule_not_found(program_id: str, rule_id: str) -> NotFound:
    return NotFound(
        "EARNING_RULE_NOT_FOUND", f"earning rule {rule_id!r} not found", {"program": program_id}
    )


async def create_earning_rule(
    uow: UnitOfWork, program_id: str, rule: EarningRule, now: datetime
) -> EarningRule:
    """Add a category, SKU or promotion rule."""
    check_resource_id(rule.rule_id, "earning_rule_id")
    rule.validate()
    await get_program(uow, program_id)
    uow.program_cache.forget(program_id)
    if not await uow.programs.add_earning_rule(program_id, rule, now):
        raise AlreadyExists("EARNING_RULE_EXISTS", f"earning rule {rule.rule_id!r} exists already")
    return rule


async def get_earning_rule(uow: UnitOfWork, program_id: str, rule_id: str) -> EarningRule:
    """One earning rule, or NOT_FOUND."""
    await get_program(uow, program_id)
    rule = await uow.programs.get_earning_rule(program_id, rule_id)
    if rule is None:
        raise _rule_not_found(program_id, rule_id)
    return rule


async def list_earning_rules(uow: UnitOfWork, program_id: str) -> list[EarningRule]:
    """The program's earning rules."""
    await get_program(uow, program_id)
    return await uow.programs.earning_rules(program_id)


async def update_earning_rule(
    uow: UnitOfWork, program_id: str, updated: EarningRule, now: datetime
) -> EarningRule:
    """Replace an earning rule; its kind cannot change."""
    current = await get_earning_rule(uow, program_id, updated.rule_id)
    if current.kind != updated.kind:
        raise InvalidArgument.for_field("earning_rule.kind", "cannot be changed")
    updated.validate()
    uow.program_cache.forget(program_id)
    await uow.programs.update_earning_rule(program_id, updated, now)
    return updated


async def delete_earning_rule(uow: UnitOfWork, program_id: str, rule_id: str) -> None:
    """Delete an earning rule; points already awarded stay."""
    await get_earning_rule(uow, program_id, rule_id)
    uow.program_cache.forget(program_id)
    await uow.programs.delete_earning_rule(program_id, rule_id)
