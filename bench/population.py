"""The bench program and its members, created through the gRPC API."""

from __future__ import annotations

import asyncio
import time

import grpc

from loyalty_engine.gen.loyalty.v1 import (
    member_service_pb2,
    member_service_pb2_grpc,
    program_service_pb2,
    program_service_pb2_grpc,
)

PROGRAM_ID = "bench"
TIERS = (("bronze", 0, 100), ("silver", 500_00, 125), ("gold", 1500_00, 150))
ENROLL_CONCURRENCY = 32


Metadata = tuple[tuple[str, str], ...]


def bearer(token: str | None) -> Metadata:
    """Call metadata carrying an API key (none for versions without keys)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def member_name(index: int) -> str:
    return f"programs/{PROGRAM_ID}/members/m{index:06d}"


async def create_program(channel: grpc.aio.Channel, run_tag: str, operator: Metadata) -> None:
    """An EUR program (created with an operator key): 1 point per 1.00, no more."""
    stub = program_service_pb2_grpc.ProgramServiceStub(channel)
    pp = program_service_pb2
    await stub.CreateProgram(
        pp.CreateProgramRequest(
            request_id=f"{run_tag}-program",
            program_id=PROGRAM_ID,
            program=pp.Program(
                display_name="Bench Rewards",
                currency_code="EUR",
                earning_policy=pp.EarningPolicy(
                    base_points=1, per_amount_minor=100, rounding=pp.ROUNDING_FLOOR
                ),
                tier_policy=pp.TierPolicy(
                    metric=pp.QUALIFYING_METRIC_SPEND, window_months=12, grace_days=30
                ),
                expiry_policy=pp.ExpiryPolicy(mode=pp.EXPIRY_MODE_AFTER_EARNING, months=24),
                point_value_minor_per_100_points=100,
            ),
        ),
        metadata=operator,
    )


async def configure_program(channel: grpc.aio.Channel, run_tag: str, admin: Metadata) -> None:
    """Three tiers by spend, and coffee earns double."""
    stub = program_service_pb2_grpc.ProgramServiceStub(channel)
    pp = program_service_pb2
    for tier_id, threshold, multiplier in TIERS:
        await stub.CreateTier(
            pp.CreateTierRequest(
                request_id=f"{run_tag}-tier-{tier_id}",
                parent=f"programs/{PROGRAM_ID}",
                tier_id=tier_id,
                tier=pp.Tier(
                    display_name=tier_id.title(),
                    threshold=threshold,
                    multiplier_percent=multiplier,
                ),
            ),
            metadata=admin,
        )
    await stub.CreateEarningRule(
        pp.CreateEarningRuleRequest(
            request_id=f"{run_tag}-rule-coffee",
            parent=f"programs/{PROGRAM_ID}",
            earning_rule_id="coffee-double",
            earning_rule=pp.EarningRule(
                display_name="Coffee 2x",
                kind=pp.EARNING_RULE_KIND_CATEGORY,
                match="coffee",
                multiplier_percent=200,
            ),
        ),
        metadata=admin,
    )


async def enroll_members(
    channel: grpc.aio.Channel, count: int, run_tag: str, admin: Metadata
) -> float:
    """Enroll `count` members, ENROLL_CONCURRENCY at a time; returns the seconds it took."""
    stub = member_service_pb2_grpc.MemberServiceStub(channel)
    queue = iter(range(count))
    started = time.perf_counter()

    async def worker() -> None:
        for i in queue:
            await stub.EnrollMember(
                member_service_pb2.EnrollMemberRequest(
                    request_id=f"{run_tag}-enroll-{i}",
                    parent=f"programs/{PROGRAM_ID}",
                    member_id=f"m{i:06d}",
                    member=member_service_pb2.Member(
                        external_id=f"ext-{i:06d}",
                        given_name="Bench",
                        family_name=f"Member {i}",
                        email=f"m{i:06d}@bench.example",
                        marketing_consent=i % 2 == 0,
                    ),
                ),
                timeout=60,
                metadata=admin,
            )

    await asyncio.gather(*(worker() for _ in range(ENROLL_CONCURRENCY)))
    return time.perf_counter() - started
