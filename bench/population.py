"""The bench program and its members, created through the gRPC API."""

from __future__ import annotations

import asyncio
import time

import grpc

from loyalty_engine.gen.loyalty.v1 import (
    common_pb2,
    member_service_pb2,
    member_service_pb2_grpc,
    points_service_pb2,
    points_service_pb2_grpc,
    program_service_pb2,
    program_service_pb2_grpc,
    reward_service_pb2,
    reward_service_pb2_grpc,
)

PROGRAM_ID = "bench"
TIERS = (("bronze", 0, 100), ("silver", 500_00, 125), ("gold", 1500_00, 150))
ENROLL_CONCURRENCY = 128
REWARD_ID = "bench-voucher"
# What the bench reward costs: a 5 EUR voucher for 100 points.
REWARD_COST = 100
# Progress lines while enrolling a large population (every this many members).
ENROLL_PROGRESS_EVERY = 10_000


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
    done = 0

    async def worker() -> None:
        nonlocal done
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
            done += 1
            if done % ENROLL_PROGRESS_EVERY == 0 and count > ENROLL_PROGRESS_EVERY:
                elapsed = time.perf_counter() - started
                print(
                    f"  enrolled {done:,} of {count:,} in {elapsed:.0f}s ({done / elapsed:,.0f}/s)",
                    flush=True,
                )

    await asyncio.gather(*(worker() for _ in range(ENROLL_CONCURRENCY)))
    return time.perf_counter() - started


async def create_reward(
    channel: grpc.aio.Channel,
    run_tag: str,
    admin: Metadata,
    *,
    reward_id: str = REWARD_ID,
    points_cost: int = REWARD_COST,
) -> str | None:
    """The catalog's bench reward (a 5 EUR voucher, unlimited stock, no tier, no limit);
    its name.

    None when this version of the service has no RewardService (UNIMPLEMENTED).
    """
    stub = reward_service_pb2_grpc.RewardServiceStub(channel)
    rp = reward_service_pb2
    try:
        reply = await stub.CreateReward(
            rp.CreateRewardRequest(
                request_id=f"{run_tag}-reward",
                parent=f"programs/{PROGRAM_ID}",
                reward_id=reward_id,
                reward=rp.Reward(
                    display_name="5 EUR voucher",
                    points_cost=points_cost,
                    kind=rp.REWARD_KIND_FIXED_DISCOUNT,
                    discount=common_pb2.Money(amount_minor=500, currency_code="EUR"),
                    unlimited_stock=True,
                ),
            ),
            timeout=60,
            metadata=admin,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise
    return str(reply.reward.name)


async def fund_members(
    channel: grpc.aio.Channel,
    members: list[str],
    points: int,
    request_prefix: str,
    admin: Metadata,
) -> float:
    """Credit `points` to each member with AdjustPoints (goodwill); the seconds it took."""
    stub = points_service_pb2_grpc.PointsServiceStub(channel)
    queue = iter(members)
    started = time.perf_counter()

    async def worker() -> None:
        for member in queue:
            await stub.AdjustPoints(
                points_service_pb2.AdjustPointsRequest(
                    request_id=f"{request_prefix}-{member.rsplit('/', 1)[1]}",
                    member=member,
                    points=points,
                    reason=points_service_pb2.ADJUSTMENT_REASON_GOODWILL,
                    actor="bench",
                    note="points to redeem in the benchmark",
                ),
                timeout=60,
                metadata=admin,
            )

    await asyncio.gather(*(worker() for _ in range(min(ENROLL_CONCURRENCY, len(members)))))
    return time.perf_counter() - started
