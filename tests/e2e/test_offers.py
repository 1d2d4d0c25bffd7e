"""Rules and offers through gRPC: purchase-time offers, codes, exactly-once, limits, dry runs."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc

from loyalty_engine.gen.loyalty.v1 import (
    common_pb2,
    offer_service_pb2_grpc,
    segment_service_pb2_grpc,
)
from loyalty_engine.gen.loyalty.v1 import offer_service_pb2 as op
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2 as sp
from tests.conftest import uid


def _offers(scenario):
    return offer_service_pb2_grpc.OfferServiceStub(scenario.client.channel)


def _eur(amount: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount, currency_code="EUR")


async def _loyal_member(scenario, clock, **fields):
    program = await scenario.program(latePurchaseWindowDays=3650)
    joined = (clock.now - timedelta(days=4 * 365 + 2)).isoformat().replace("+00:00", "Z")
    member = await scenario.member(program, givenName="Ada", joinTime=joined, **fields)
    return program, member


async def test_a_purchase_issues_loyalty15_with_a_personal_message(scenario, clock) -> None:
    _program, member = await _loyal_member(scenario, clock)
    reply = await scenario.purchase(member, 5000)
    assert [o.rule for o in reply.offers_issued] == ["loyalty15"]
    offer = reply.offers_issued[0]
    assert offer.code == "LOYALTY15" and offer.percent_off == 15
    assert offer.message == (
        "Dear Ada, we appreciate your continued support over the past 4 years. "
        "Enjoy 15% off with code LOYALTY15."
    )
    # Once a year: the next purchase issues nothing.
    assert not (await scenario.purchase(member, 5000)).offers_issued
    listed = await _offers(scenario).ListOffers(op.ListOffersRequest(member=member))
    assert [o.name for o in listed.offers] == [offer.name]
    insights = await segment_service_pb2_grpc.SegmentServiceStub(
        scenario.client.channel
    ).GetMemberInsights(sp.GetMemberInsightsRequest(member=member))
    assert list(insights.active_offers) == [offer.name]


async def test_validate_redeem_exactly_once_and_revoke(scenario, clock, errors) -> None:
    _program, member = await _loyal_member(scenario, clock)
    offer = (await scenario.purchase(member, 5000)).offers_issued[0]
    stub = _offers(scenario)
    check = await stub.ValidateOfferCode(
        op.ValidateOfferCodeRequest(member=member, code="loyalty15", order_total=_eur(2000))
    )
    assert check.valid and check.discount.amount_minor == 300
    missing = await stub.ValidateOfferCode(
        op.ValidateOfferCodeRequest(member=member, code="NOPE", order_total=_eur(2000))
    )
    assert (missing.valid, missing.reason) == (False, "OFFER_CODE_NOT_FOUND")
    request = op.RedeemOfferCodeRequest(
        request_id=uid("r"),
        member=member,
        code="LOYALTY15",
        order_id="o-1",
        order_total=_eur(2000),
    )
    first = await stub.RedeemOfferCode(request)
    again = await stub.RedeemOfferCode(request)
    assert first == again and first.discount.amount_minor == 300
    assert first.offer.state == op.OFFER_STATE_REDEEMED and first.offer.uses_left == 0
    request.request_id = uid("r")
    assert (await errors(stub.RedeemOfferCode(request)))[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "USAGE_LIMIT_REACHED",
    )
    revoked = await stub.RevokeOffer(op.RevokeOfferRequest(request_id=uid("r"), name=offer.name))
    assert revoked.offer.state == op.OFFER_STATE_REVOKED
    request.request_id = uid("r")
    assert (await errors(stub.RedeemOfferCode(request)))[1] == "OFFER_REVOKED"
    got = await stub.GetOffer(op.GetOfferRequest(name=offer.name))
    assert got.offer.state == op.OFFER_STATE_REVOKED
    active = await stub.ListOffers(op.ListOffersRequest(member=member))
    assert not active.offers
    everything = await stub.ListOffers(op.ListOffersRequest(member=member, include_inactive=True))
    assert len(everything.offers) == 1


async def test_expired_and_below_minimum(scenario, clock, errors) -> None:
    _program, member = await _loyal_member(scenario, clock)
    await scenario.purchase(member, 5000)
    stub = _offers(scenario)
    clock.advance(days=31)
    check = await stub.ValidateOfferCode(
        op.ValidateOfferCodeRequest(member=member, code="LOYALTY15", order_total=_eur(2000))
    )
    assert (check.valid, check.reason) == (False, "OFFER_EXPIRED")
    assert check.offer.state == op.OFFER_STATE_EXPIRED


async def test_concurrent_redemptions_of_the_last_use_one_wins(scenario, clock) -> None:
    _program, member = await _loyal_member(scenario, clock)
    await scenario.purchase(member, 5000)
    stub = _offers(scenario)

    async def redeem(i: int):
        try:
            return await stub.RedeemOfferCode(
                op.RedeemOfferCodeRequest(
                    request_id=uid("r"),
                    member=member,
                    code="LOYALTY15",
                    order_id=f"o-{i}",
                    order_total=_eur(2000),
                )
            )
        except grpc.aio.AioRpcError as exc:
            return exc

    results = await asyncio.gather(*(redeem(i) for i in range(8)))
    wins = [r for r in results if not isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1, results
    assert all(
        r.code() == grpc.StatusCode.FAILED_PRECONDITION
        for r in results
        if isinstance(r, grpc.aio.AioRpcError)
    )


async def test_run_rules_dry_run_changes_nothing(scenario, clock) -> None:
    program = await scenario.program(latePurchaseWindowDays=3650)
    born = (clock.now + timedelta(days=3)).date()
    member = await scenario.member(
        program, birthDate={"year": 1990, "month": born.month, "day": born.day}
    )
    stub = _offers(scenario)
    dry = await stub.RunRules(
        op.RunRulesRequest(request_id=uid("r"), program=f"programs/{program}", dry_run=True)
    )
    assert [(a.member, a.action) for a in dry.actions] == [(member, "ISSUE_OFFER birthday")]
    assert not (await stub.ListOffers(op.ListOffersRequest(member=member))).offers
    real = await stub.RunRules(
        op.RunRulesRequest(request_id=uid("r"), program=f"programs/{program}", member=member)
    )
    assert real.members_evaluated == 1 and real.actions[0].offer
    offer = (await stub.GetOffer(op.GetOfferRequest(name=real.actions[0].offer))).offer
    assert offer.code.startswith("BDAY-") and "Happy birthday, member!" in offer.message
    again = await stub.RunRules(
        op.RunRulesRequest(request_id=uid("r"), program=f"programs/{program}", member=member)
    )
    assert not again.actions


async def test_top_customers_flag_matches_list_top_customers(scenario, clock) -> None:
    program = await scenario.program(latePurchaseWindowDays=3650)
    members = [await scenario.member(program) for _ in range(21)]
    for i, member in enumerate(members):
        # Two members tie at the top: the 5% cut (ceil(21 * 5%) = 2) includes both.
        await scenario.purchase(member, 100_000 if i < 2 else 1000 + i)
    stub = _offers(scenario)
    segments = segment_service_pb2_grpc.SegmentServiceStub(scenario.client.channel)
    await segments.RefreshSegments(
        sp.RefreshSegmentsRequest(request_id=uid("r"), program=f"programs/{program}")
    )
    report = await stub.RunRules(
        op.RunRulesRequest(request_id=uid("r"), program=f"programs/{program}")
    )
    flagged = sorted(a.member for a in report.actions if a.action == "SET_FLAG top_customer")
    top = await segments.ListTopCustomers(
        sp.ListTopCustomersRequest(
            parent=f"programs/{program}",
            metric=sp.TOP_CUSTOMER_METRIC_SPEND,
            window=sp.TOP_CUSTOMER_WINDOW_12_MONTHS,
            top_percent_basis_points=500,
        )
    )
    assert flagged == sorted(c.member for c in top.customers) == sorted(members[:2])


async def test_reload_rules_refuses_a_bad_set(scenario, client, app, tmp_path, errors) -> None:
    stub = _offers(scenario)
    reply = await stub.ReloadRules(op.ReloadRulesRequest(request_id=uid("r")))
    assert list(reply.rules) == ["top-customers", "birthday", "loyalty15", "win-back"]
    before = app.rules.rules
    (tmp_path / "bad.yaml").write_text("id: bad\nwhen: 'x >'\nactions:\n  - set_flag: b\n")
    directory, app.rules.directory = app.rules.directory, tmp_path
    try:
        code, reason, _ = await errors(stub.ReloadRules(op.ReloadRulesRequest(request_id=uid("r"))))
    finally:
        app.rules.directory = directory
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RULE_SET")
    assert app.rules.rules is before


async def test_run_rules_for_a_program_replays_its_first_response(scenario, clock, errors) -> None:
    program = await scenario.program(latePurchaseWindowDays=3650)
    born = (clock.now + timedelta(days=2)).date()
    member = await scenario.member(
        program, birthDate={"year": 1990, "month": born.month, "day": born.day}
    )
    stub = _offers(scenario)
    request = op.RunRulesRequest(request_id=uid("r"), program=f"programs/{program}")
    first = await stub.RunRules(request)
    assert [(a.member, a.action) for a in first.actions] == [(member, "ISSUE_OFFER birthday")]
    assert first.actions[0].offer
    # The same request id answers what the first run did (a new run would do nothing).
    assert await stub.RunRules(request) == first
    assert not (
        await stub.RunRules(op.RunRulesRequest(request_id=uid("r"), program=f"programs/{program}"))
    ).actions
    request.member = member  # the same id for another request
    code, reason, _ = await errors(stub.RunRules(request))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    request.segment = f"programs/{program}/segments/champions"  # a page-by-page run again
    code, reason, _ = await errors(stub.RunRules(request))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
