"""The periodic pass inside `serve`: expiry, segment refresh and the daily rules."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from loyalty_engine.cli import _maintenance_loop
from loyalty_engine.gen.loyalty.v1 import offer_service_pb2 as op
from loyalty_engine.gen.loyalty.v1 import offer_service_pb2_grpc, segment_service_pb2_grpc
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2 as sp


async def test_the_periodic_pass_expires_refreshes_and_issues_birthday_offers(
    scenario, app, clock
) -> None:
    program = await scenario.program(
        expiryPolicy={"mode": "EXPIRY_MODE_AFTER_EARNING", "months": 12}
    )
    born = (clock.now + timedelta(days=180)).date()  # far from the birthday when buying
    member = await scenario.member(
        program, birthDate={"year": 1990, "month": born.month, "day": born.day}
    )
    await scenario.purchase(member, 10_000)
    offers = offer_service_pb2_grpc.OfferServiceStub(scenario.client.channel)
    segments = segment_service_pb2_grpc.SegmentServiceStub(scenario.client.channel)
    assert not (await offers.ListOffers(op.ListOffersRequest(member=member))).offers
    clock.advance(days=178)  # two days to the birthday; nothing has touched the member since
    app.settings = app.settings.model_copy(update={"maintenance_interval_seconds": 0.01})

    loop = asyncio.create_task(_maintenance_loop(app))
    try:
        for _ in range(1200):
            listed = await offers.ListOffers(op.ListOffersRequest(member=member))
            scored = await segments.ListSegments(
                sp.ListSegmentsRequest(parent=f"programs/{program}")
            )
            if listed.offers and sum(s.member_count for s in scored.segments) == 1:
                break
            await asyncio.sleep(0.05)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

    assert [o.code[:5] for o in listed.offers] == ["BDAY-"]
    assert sum(s.member_count for s in scored.segments) == 1
    clock.advance(days=200)  # past the 12-month expiry: the pass expires the points
    # The pass walks every program of the (shared, per-run) database: wait for ours.
    loop = asyncio.create_task(_maintenance_loop(app))
    try:
        for _ in range(600):
            entries = await scenario.ledger(member)
            if any(e.kind == 7 for e in entries):
                break
            await asyncio.sleep(0.1)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert [e.points for e in entries if e.kind == 7] == [-100]  # EXPIRE, written by the pass
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.expired_points) == (0, 100)
