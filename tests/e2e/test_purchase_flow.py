"""The point-of-sale path end to end: a real server, a real client, both backends."""

from __future__ import annotations

import asyncio

import grpc

from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps


async def test_purchase_awards_points_and_balance_adds_up(scenario, clock) -> None:
    program = await scenario.program()
    member = await scenario.member(program)

    reply = await scenario.purchase(member, 12_345)

    assert reply.points_awarded == 123
    assert [(c.rule, c.points) for c in reply.breakdown] == [("base", 123)]
    assert reply.balance.available_points == 123
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.lifetime_earned_points == 123


async def test_same_request_id_returns_first_response_and_writes_once(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    request = scenario.purchase_request(member, 5_000)

    first = await scenario.client.points.RecordPurchase(request)
    second = await scenario.client.points.RecordPurchase(request)

    assert first == second
    assert len(await scenario.ledger(member)) == 1
    changed = ps.RecordPurchaseRequest()
    changed.CopyFrom(request)
    changed.purchase.total.amount_minor = 6_000
    code, reason, _ = await errors(scenario.client.points.RecordPurchase(changed))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


async def test_second_request_for_recorded_order_is_already_exists(scenario, errors) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    await scenario.purchase(member, 5_000, order_id="order-1")

    code, reason, _ = await errors(scenario.purchase(member, 5_000, order_id="order-1"))

    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "ORDER_ALREADY_RECORDED")
    assert (await scenario.balance(member)).available_points == 50


async def test_concurrent_retries_of_one_request_write_one_entry(scenario) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    request = scenario.purchase_request(member, 2_000)

    replies = await asyncio.gather(
        *(scenario.client.points.RecordPurchase(request) for _ in range(12))
    )

    assert all(r == replies[0] for r in replies)
    assert len(await scenario.ledger(member)) == 1
    assert (await scenario.assert_balance_matches_ledger(member)).available_points == 20


async def test_concurrent_purchases_for_one_member_all_count_once(scenario) -> None:
    program = await scenario.program()
    member = await scenario.member(program)

    await asyncio.gather(*(scenario.purchase(member, 1_000) for _ in range(20)))

    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 200
    assert len(await scenario.ledger(member)) == 20
