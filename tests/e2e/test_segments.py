"""The marketing path: statistics, RFM segments, top customers, insights and metrics."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest

from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2 as sp
from loyalty_engine.gen.loyalty.v1 import segment_service_pb2_grpc
from tests.conftest import error_info


def _stub(scenario):
    return segment_service_pb2_grpc.SegmentServiceStub(scenario.client.channel)


async def _refresh(scenario, program: str) -> int:
    reply = await _stub(scenario).RefreshSegments(
        sp.RefreshSegmentsRequest(
            request_id=f"refresh-{program}-{scenario.clock.now.isoformat()}",
            program=f"programs/{program}",
        )
    )
    return reply.members_scored


async def _refreshed_segment_of(scenario, program: str, size: int) -> str:
    """Refresh the program's scores; the name of its one segment with `size` members."""
    await _refresh(scenario, program)
    listed = await _stub(scenario).ListSegments(
        sp.ListSegmentsRequest(parent=f"programs/{program}")
    )
    (segment,) = [s.name for s in listed.segments if s.member_count == size]
    return segment


async def test_rfm_scores_and_segments_on_a_hand_checked_set(scenario, clock) -> None:
    program = await scenario.program(latePurchaseWindowDays=3650)
    now = clock.now
    # Five members: (days since last purchase, orders, spend per order)
    plan = {
        "champ": (1, 5, 10_000),
        "loyal": (100, 4, 8_000),
        "newbie": (2, 1, 1_000),
        "sleepy": (200, 2, 3_000),
        "lost": (700, 1, 500),
    }
    members = {}
    for key, (days, orders, amount) in plan.items():
        member = await scenario.member(program)
        members[key] = member
        for i in range(orders):
            await scenario.purchase(member, amount, when=now - timedelta(days=days + i))

    assert await _refresh(scenario, program) == 5

    def scores(member):
        return _stub(scenario).GetMemberInsights(sp.GetMemberInsightsRequest(member=member))

    expected = {
        # recency rank by last purchase: lost 1, sleepy 2, loyal 3, newbie 4, champ 5
        # frequency by orders: lost=newbie (1) -> 1, sleepy 3, loyal 4, champ 5
        "champ": (5, 5, "champions"),
        "newbie": (4, 1, "promising"),
        "loyal": (3, 4, "loyal"),
        "sleepy": (2, 3, "at-risk"),
        "lost": (1, 1, "lost"),
    }
    for key, (r, f, segment) in expected.items():
        reply = await scores(members[key])
        assert (reply.scores.recency, reply.scores.frequency) == (r, f), key
        assert reply.scores.segment == f"programs/{program}/segments/{segment}", key

    listed = await _stub(scenario).ListSegments(
        sp.ListSegmentsRequest(parent=f"programs/{program}")
    )
    counts = {s.name.rsplit("/", 1)[1]: s.member_count for s in listed.segments}
    assert len(counts) == 11
    assert sum(counts.values()) == 5
    assert counts["champions"] == 1 and counts["lost"] == 1

    exported = [
        m
        async for m in _stub(scenario).ListSegmentMembers(
            sp.ListSegmentMembersRequest(segment=f"programs/{program}/segments/champions")
        )
    ]
    assert [m.member for m in exported] == [members["champ"]]


async def test_statistics_follow_purchases_and_returns(scenario, clock) -> None:
    program = await scenario.program()
    member = await scenario.member(program)
    await scenario.purchase(member, 3_000, order_id="a", lines=[("S1", "coffee", 3, 1_000)])
    await scenario.purchase(member, 5_000, order_id="b", lines=[("S2", "tea", 1, 5_000)])
    await scenario.client.points.RecordReturn(
        ps.RecordReturnRequest(
            request_id="ret-1",
            member=member,
            order_id="b",
            return_id="r1",
            return_time=scenario.purchase_request(member, 1).purchase.purchase_time,
        )
    )
    await scenario.client.points.RecordReturn(
        ps.RecordReturnRequest(
            request_id="ret-2",
            member=member,
            order_id="a",
            return_id="r2",
            return_time=scenario.purchase_request(member, 1).purchase.purchase_time,
            lines=[ps.ReturnLine(line_index=0, quantity=1)],
        )
    )

    reply = await _stub(scenario).GetMemberInsights(sp.GetMemberInsightsRequest(member=member))

    stats = reply.statistics
    assert stats.order_count == 1  # order b came back in full
    assert stats.total_spend.amount_minor == 2_000
    assert stats.spend_12_months.amount_minor == 2_000 and stats.orders_12_months == 1
    assert list(stats.categories) == ["coffee", "tea"]


async def test_top_customers_n_and_percent_with_ties(scenario, clock, errors) -> None:
    program = await scenario.program()
    spends = [9_000, 7_000, 7_000, 5_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000]
    members = []
    for amount in spends:
        member = await scenario.member(program)
        members.append(member)
        await scenario.purchase(member, amount)
    await _refresh(scenario, program)

    def top(**limit):
        return _stub(scenario).ListTopCustomers(
            sp.ListTopCustomersRequest(
                parent=f"programs/{program}",
                metric=sp.TOP_CUSTOMER_METRIC_SPEND,
                window=sp.TOP_CUSTOMER_WINDOW_12_MONTHS,
                **limit,
            )
        )

    two = await top(top_n=2)
    assert [(c.rank, c.value) for c in two.customers] == [(1, 9_000), (2, 7_000), (2, 7_000)]
    assert two.customers[0].member == members[0]
    four = await top(top_n=4)  # the cut falls between two values: nobody tied with the last
    assert [c.value for c in four.customers] == [9_000, 7_000, 7_000, 5_000]
    five = await top(top_n=5)  # the fifth is tied with the five below it, who all come along
    assert [c.rank for c in five.customers] == [1, 2, 2, 4] + [5] * 6
    assert [c.member for c in five.customers][4:] == sorted(members[4:])  # ties by member id
    everyone = await top(top_n=100)  # more than rank: everyone who does, once each
    assert sorted(c.member for c in everyone.customers) == sorted(members)
    ten_percent = await top(top_percent_basis_points=1_000)
    assert [c.member for c in ten_percent.customers] == [members[0]]
    half = await top(top_percent_basis_points=5_000)
    assert len(half.customers) == 10  # the fifth is tied with everyone below it
    code, reason, fields = await errors(top(top_n=0))
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["top_n"])


async def test_program_metrics(scenario, clock) -> None:
    program = await scenario.program(pointValueMinorPer100Points=50)
    a = await scenario.member(program)
    b = await scenario.member(program)
    await scenario.member(program)
    await scenario.purchase(a, 10_000)
    await scenario.purchase(a, 5_000)
    await scenario.purchase(b, 2_000, when=clock.now - timedelta(days=20))

    reply = await _stub(scenario).GetProgramMetrics(
        sp.GetProgramMetricsRequest(program=f"programs/{program}")
    )

    assert reply.member_count == 3
    assert reply.active_member_count == 2
    assert reply.repeat_purchase_rate_basis_points == 5_000
    assert reply.points_earned == 170
    assert reply.outstanding_points == 170
    assert reply.outstanding_liability.amount_minor == 85
    assert reply.redemption_rate_basis_points == 0


async def test_segment_export_in_pages_matches_the_export_by_member(scenario, clock) -> None:
    program = await scenario.program()
    # Seven members who bought alike land in one segment (ties share their scores).
    for _ in range(7):
        await scenario.purchase(await scenario.member(program), 2_000)
    segment = await _refreshed_segment_of(scenario, program, 7)

    def export(page_size: int):
        return _stub(scenario).ListSegmentMembers(
            sp.ListSegmentMembersRequest(segment=segment, page_size=page_size)
        )

    one_by_one = [m async for m in export(0)]
    pages = [reply async for reply in export(3)]

    assert [len(p.members) for p in pages] == [3, 3, 1]
    assert all(not p.member and not p.HasField("scores") for p in pages)
    paged = [m for p in pages for m in p.members]
    assert [(m.member, m.external_id) for m in paged] == [
        (m.member, m.external_id) for m in one_by_one
    ]
    assert [m.scores for m in paged] == [m.scores for m in one_by_one]
    assert all(m.scores.segment == segment for m in paged)
    assert [len(p.members) for p in [reply async for reply in export(7)]] == [7]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [reply async for reply in export(5001)]
    assert error_info(caught.value) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        ["page_size"],
    )


async def test_an_export_cancelled_midway_gives_back_its_connection(scenario, app) -> None:
    """The server reads the next page while it sends one; a caller who goes away stops it."""
    program = await scenario.program()
    for _ in range(6):
        await scenario.purchase(await scenario.member(program), 2_000)
    segment = await _refreshed_segment_of(scenario, program, 6)
    request = sp.ListSegmentMembersRequest(segment=segment, page_size=1)

    call = _stub(scenario).ListSegmentMembers(request)
    first = await call.read()
    assert len(first.members) == 1
    call.cancel()
    pool = app.db.engine.pool
    for _ in range(200):
        if pool.checkedout() == 0:
            break
        await asyncio.sleep(0.01)
    assert (
        pool.checkedout() == 0
    )  # the read of the next page was stopped and gave back its connection

    pages = [reply async for reply in _stub(scenario).ListSegmentMembers(request)]
    assert [len(p.members) for p in pages] == [1] * 6

    # An error found by the first read reaches the caller as a status.
    missing = sp.ListSegmentMembersRequest(segment=f"programs/{program}-none/segments/loyal")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [reply async for reply in _stub(scenario).ListSegmentMembers(missing)]
    assert error_info(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")


async def test_a_refresh_rescores_what_changed_and_dates_every_score_by_itself(
    scenario, clock
) -> None:
    program = await scenario.program()
    steady, buyer, returner = [await scenario.member(program) for _ in range(3)]
    await scenario.purchase(steady, 4_000)
    await scenario.purchase(buyer, 1_000)
    await scenario.purchase(returner, 9_000, order_id=f"{program}-big")
    await _refresh(scenario, program)
    first = clock.now
    before = (
        await _stub(scenario).GetMemberInsights(sp.GetMemberInsightsRequest(member=buyer))
    ).scores
    assert (before.frequency, before.recency) == (1, 1)  # all three tied

    clock.advance(days=200)  # every purchase leaves the 90-day window
    await scenario.purchase(buyer, 2_000)
    await scenario.purchase(buyer, 2_000)
    await scenario.client.points.RecordReturn(
        ps.RecordReturnRequest(
            request_id=f"{program}-ret",
            member=returner,
            order_id=f"{program}-big",
            return_id="r1",
            return_time=scenario.purchase_request(returner, 1).purchase.purchase_time,
        )
    )
    assert await _refresh(scenario, program) == 3

    async def insights(member):
        return await _stub(scenario).GetMemberInsights(sp.GetMemberInsightsRequest(member=member))

    for member in (steady, buyer, returner):
        reply = await insights(member)
        assert reply.scores.compute_time.ToDatetime().replace(tzinfo=first.tzinfo) == clock.now
        assert reply.scores.compute_time.ToDatetime().replace(tzinfo=first.tzinfo) != first

    async def top(metric, window):
        reply = await _stub(scenario).ListTopCustomers(
            sp.ListTopCustomersRequest(
                parent=f"programs/{program}", metric=metric, window=window, top_n=3
            )
        )
        return [(c.member, c.value) for c in reply.customers]

    assert await top(sp.TOP_CUSTOMER_METRIC_ORDERS, sp.TOP_CUSTOMER_WINDOW_ALL_TIME) == [
        (buyer, 3),
        (steady, 1),
    ]  # the order returned in full no longer counts
    assert await top(sp.TOP_CUSTOMER_METRIC_SPEND, sp.TOP_CUSTOMER_WINDOW_90_DAYS) == [
        (buyer, 4_000)
    ]
    assert await top(
        sp.TOP_CUSTOMER_METRIC_AVERAGE_ORDER_VALUE, sp.TOP_CUSTOMER_WINDOW_ALL_TIME
    ) == [(steady, 4_000), (buyer, 1_666)]
    b = (await insights(buyer)).scores
    assert (b.frequency, b.recency) == (4, 4)  # first of three: 1 + 5 * 2 // 3
