"""The web-shop path: catalog, one-call redemption, checkout holds, paying with points."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from loyalty_engine.gen.loyalty.v1 import common_pb2
from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps
from loyalty_engine.gen.loyalty.v1 import reward_service_pb2 as rp


def uid(prefix: str) -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _reward(scenario: Any, program: str, cost: int, **fields: Any) -> str:
    reward_id = uid("rw")
    reward = rp.Reward(
        display_name="5 EUR voucher",
        points_cost=cost,
        kind=rp.REWARD_KIND_FIXED_DISCOUNT,
        discount=common_pb2.Money(amount_minor=500, currency_code="EUR"),
        unlimited_stock=True,
    )
    for key, value in fields.items():
        if key == "stock":
            reward.unlimited_stock = False
        setattr(reward, key, value)
    reply = await scenario.client.rewards.CreateReward(
        rp.CreateRewardRequest(
            request_id=uid("r"), parent=f"programs/{program}", reward_id=reward_id, reward=reward
        )
    )
    return reply.reward.name


async def _member_with_points(scenario: Any, program: str, points: int) -> str:
    member = await scenario.member(program)
    await scenario.client.points.AdjustPoints(
        ps.AdjustPointsRequest(
            request_id=uid("r"),
            member=member,
            points=points,
            reason=ps.ADJUSTMENT_REASON_GOODWILL,
            actor="test",
        )
    )
    return member


def _redeem(scenario: Any, member: str, reward: str, request_id: str | None = None) -> Any:
    return scenario.client.rewards.RedeemReward(
        rp.RedeemRewardRequest(request_id=request_id or uid("r"), member=member, reward=reward)
    )


def _reserve(scenario: Any, member: str, reward: str, hold_seconds: int = 0) -> Any:
    return scenario.client.rewards.ReserveRedemption(
        rp.ReserveRedemptionRequest(
            request_id=uid("r"), member=member, reward=reward, hold_seconds=hold_seconds
        )
    )


def _confirm(scenario: Any, name: str) -> Any:
    return scenario.client.rewards.ConfirmRedemption(
        rp.ConfirmRedemptionRequest(request_id=uid("r"), name=name)
    )


def _cancel(scenario: Any, name: str) -> Any:
    return scenario.client.rewards.CancelRedemption(
        rp.CancelRedemptionRequest(request_id=uid("r"), name=name)
    )


async def test_redeem_reward_takes_points_issues_voucher_and_is_exactly_once(scenario) -> None:
    program = await scenario.program()
    reward = await _reward(scenario, program, 300)
    member = await _member_with_points(scenario, program, 1_000)

    first = await _redeem(scenario, member, reward, request_id="redeem-1")
    again = await _redeem(scenario, member, reward, request_id="redeem-1")

    assert first == again
    assert first.redemption.state == rp.REDEMPTION_STATE_CONFIRMED
    assert first.redemption.voucher_code.startswith("RW-")
    assert first.balance.available_points == 700
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.redeemed_points) == (700, 300)


async def test_each_refusal_has_its_own_reason(scenario, errors) -> None:
    program = await scenario.program()
    await scenario.tier(program, "silver", 0)
    await scenario.tier(program, "gold", 100_000)
    poor = await _member_with_points(scenario, program, 10)
    rich = await _member_with_points(scenario, program, 10_000)
    cheap = await _reward(scenario, program, 100)
    gold_only = await _reward(scenario, program, 100, min_tier=f"programs/{program}/tiers/gold")
    limited = await _reward(scenario, program, 100, limit_per_member=1)
    sold_out = await _reward(scenario, program, 100, stock=0)

    assert (await errors(_redeem(scenario, poor, cheap)))[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_POINTS",
    )
    assert (await errors(_redeem(scenario, rich, gold_only)))[1] == "TIER_TOO_LOW"
    assert (await errors(_redeem(scenario, rich, sold_out)))[1] == "OUT_OF_STOCK"
    await _redeem(scenario, rich, limited)
    assert (await errors(_redeem(scenario, rich, limited)))[1] == "LIMIT_REACHED"
    assert (await errors(_redeem(scenario, rich, f"programs/{program}/rewards/nope")))[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "REWARD_NOT_FOUND",
    )
    await scenario.assert_balance_matches_ledger(poor)
    await scenario.assert_balance_matches_ledger(rich)


async def test_list_rewards_for_a_member_says_why_not(scenario) -> None:
    program = await scenario.program()
    member = await _member_with_points(scenario, program, 150)
    affordable = await _reward(scenario, program, 100)
    too_dear = await _reward(scenario, program, 400)

    reply = await scenario.client.rewards.ListRewards(
        rp.ListRewardsRequest(parent=f"programs/{program}", member=member)
    )

    by_name = {r.reward.name: r for r in reply.rewards}
    assert by_name[affordable].affordable
    assert not by_name[too_dear].affordable
    assert list(by_name[too_dear].ineligibilities) == [rp.INELIGIBILITY_POINTS_SHORT]
    assert by_name[too_dear].points_short == 250


async def test_hold_reserves_points_then_confirm_spends_them(scenario) -> None:
    program = await scenario.program()
    reward = await _reward(scenario, program, 400, stock=3)
    member = await _member_with_points(scenario, program, 1_000)

    held = await _reserve(scenario, member, reward)
    assert held.redemption.state == rp.REDEMPTION_STATE_RESERVED
    assert (held.balance.available_points, held.balance.reserved_points) == (1_000, 400)

    confirmed = await _confirm(scenario, held.redemption.name)

    assert confirmed.redemption.state == rp.REDEMPTION_STATE_CONFIRMED
    assert [e.state for e in confirmed.redemption.events] == [
        rp.REDEMPTION_STATE_RESERVED,
        rp.REDEMPTION_STATE_CONFIRMED,
    ]
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.reserved_points) == (600, 0)
    stock = (await scenario.client.rewards.GetReward(rp.GetRewardRequest(name=reward))).reward.stock
    assert stock == 2
    listed = await scenario.client.rewards.ListRedemptions(rp.ListRedemptionsRequest(parent=member))
    assert [r.events for r in listed.redemptions] == [confirmed.redemption.events]


async def test_expired_hold_gives_back_points_and_stock_without_a_job(
    scenario, clock, errors
) -> None:
    program = await scenario.program()
    reward = await _reward(scenario, program, 400, stock=1)
    holder = await _member_with_points(scenario, program, 1_000)
    other = await _member_with_points(scenario, program, 1_000)
    held = await _reserve(scenario, holder, reward, hold_seconds=60)
    assert (await errors(_redeem(scenario, other, reward)))[1] == "OUT_OF_STOCK"

    clock.advance(seconds=61)

    # The other member gets the unit although nothing touched the holder in between.
    assert (
        await _redeem(scenario, other, reward)
    ).redemption.state == rp.REDEMPTION_STATE_CONFIRMED
    code, reason, _ = await errors(_confirm(scenario, held.redemption.name))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED")
    balance = await scenario.assert_balance_matches_ledger(holder)
    assert (balance.available_points, balance.reserved_points) == (1_000, 0)
    got = await scenario.client.rewards.GetRedemption(
        rp.GetRedemptionRequest(name=held.redemption.name)
    )
    assert got.redemption.state == rp.REDEMPTION_STATE_EXPIRED
    listed = await scenario.client.rewards.ListRedemptions(rp.ListRedemptionsRequest(parent=holder))
    assert [r for r in listed.redemptions if r.name == held.redemption.name] == [got.redemption]


async def test_cancel_hold_and_rollback_within_window(scenario, clock, errors) -> None:
    program = await scenario.program(redemptionCancelWindowDays=14)
    reward = await _reward(scenario, program, 300, stock=5)
    member = await _member_with_points(scenario, program, 1_000)

    held = await _reserve(scenario, member, reward)
    cancelled = await _cancel(scenario, held.redemption.name)
    assert cancelled.redemption.state == rp.REDEMPTION_STATE_CANCELLED
    assert (await errors(_confirm(scenario, held.redemption.name)))[1] == "ALREADY_CANCELLED"

    redeemed = await _redeem(scenario, member, reward)
    assert (await scenario.balance(member)).available_points == 700
    rolled_back = await _cancel(scenario, redeemed.redemption.name)
    assert rolled_back.redemption.state == rp.REDEMPTION_STATE_CANCELLED
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.redeemed_points) == (1_000, 0)
    stock = (await scenario.client.rewards.GetReward(rp.GetRewardRequest(name=reward))).reward.stock
    assert stock == 5

    late = await _redeem(scenario, member, reward)
    clock.advance(days=15)
    assert (await errors(_cancel(scenario, late.redemption.name)))[1] == "CANCEL_WINDOW_PASSED"


async def test_redeem_points_pays_part_of_an_order(scenario, errors) -> None:
    program = await scenario.program(
        pointValueMinorPer100Points=100, minPointsPerRedemption=100, maxRedemptionSharePercent=50
    )
    member = await _member_with_points(scenario, program, 5_000)

    def pay(points: int, total: int = 10_000) -> Any:
        return scenario.client.rewards.RedeemPoints(
            rp.RedeemPointsRequest(
                request_id=uid("r"),
                member=member,
                order_id=uid("o"),
                points=points,
                order_total=common_pb2.Money(amount_minor=total, currency_code="EUR"),
            )
        )

    reply = await pay(1_000)
    assert (reply.discount.amount_minor, reply.discount.currency_code) == (1_000, "EUR")
    assert reply.balance.available_points == 4_000
    assert (await errors(pay(50)))[1] == "BELOW_MINIMUM"
    assert (await errors(pay(4_000, total=6_000)))[1] == "ABOVE_MAXIMUM_SHARE"
    await scenario.assert_balance_matches_ledger(member)


# --- correctness under concurrency (PostgreSQL is where it is a real race) --------------


@pytest.mark.parametrize("database_url", ["postgres", "sqlite"], indirect=True)
async def test_double_spend_exactly_floor_b_over_c_succeed(scenario, errors) -> None:
    program = await scenario.program()
    reward = await _reward(scenario, program, 300)
    member = await _member_with_points(scenario, program, 1_000)

    results = await asyncio.gather(
        *(_redeem(scenario, member, reward) for _ in range(8)), return_exceptions=True
    )

    ok = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1_000 // 300
    assert len(failed) == 8 - len(ok)
    assert {(f.code(), _reason(f)) for f in failed} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS")
    }
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 100


@pytest.mark.parametrize("database_url", ["postgres", "sqlite"], indirect=True)
async def test_last_unit_goes_to_exactly_one_member(scenario) -> None:
    program = await scenario.program()
    reward = await _reward(scenario, program, 100, stock=1)
    members = [await _member_with_points(scenario, program, 500) for _ in range(6)]

    results = await asyncio.gather(
        *(_redeem(scenario, m, reward) for m in members), return_exceptions=True
    )

    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert {_reason(r) for r in results if isinstance(r, grpc.aio.AioRpcError)} == {"OUT_OF_STOCK"}
    stock = (await scenario.client.rewards.GetReward(rp.GetRewardRequest(name=reward))).reward.stock
    assert stock == 0


@pytest.mark.parametrize("database_url", ["postgres", "sqlite"], indirect=True)
async def test_confirm_and_cancel_racing_on_one_hold_exactly_one_wins(scenario) -> None:
    program = await scenario.program()
    reward = await _reward(scenario, program, 200, stock=2)
    member = await _member_with_points(scenario, program, 1_000)
    held = await _reserve(scenario, member, reward)

    results = await asyncio.gather(
        _confirm(scenario, held.redemption.name),
        _cancel(scenario, held.redemption.name),
        return_exceptions=True,
    )

    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 1
    assert _reason(losers[0]) in {"ALREADY_CONFIRMED", "ALREADY_CANCELLED"}
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.reserved_points == 0
    assert balance.available_points in {800, 1_000}


def _reason(error: grpc.aio.AioRpcError) -> str:
    from conftest import error_info

    return error_info(error)[1]


async def test_cancel_window_runs_from_the_confirmation_not_the_hold(scenario, clock) -> None:
    program = await scenario.program(redemptionCancelWindowDays=14)
    reward = await _reward(scenario, program, 300, stock=5)
    member = await _member_with_points(scenario, program, 1_000)
    held = await _reserve(scenario, member, reward, hold_seconds=7 * 24 * 3600)
    clock.advance(days=6)
    await _confirm(scenario, held.redemption.name)
    clock.advance(days=10)  # 16 days after the hold, 10 after the confirmation

    cancelled = await _cancel(scenario, held.redemption.name)

    assert cancelled.redemption.state == rp.REDEMPTION_STATE_CANCELLED
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 1_000
