"""RewardService through the real server: the catalog, holds, fulfilment, paging, exactly-once.

The happy paths of redemption live in tests/e2e/test_redemption.py; this file covers the
catalog's validation and updates, the program's hold settings, how holds show in a balance,
how an expired hold is recorded, and retries of every redemption write.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from loyalty_engine.gen.loyalty.v1 import common_pb2
from loyalty_engine.gen.loyalty.v1 import points_service_pb2 as ps
from loyalty_engine.gen.loyalty.v1 import reward_service_pb2 as rp

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(UTC).replace(tzinfo=None))
    return stamp


def at(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def voucher(cost: int = 300, **fields: Any) -> rp.Reward:
    """A 5 EUR voucher with unlimited stock; `stock=` makes it limited."""
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
        if isinstance(value, timestamp_pb2.Timestamp | common_pb2.Money):
            getattr(reward, key).CopyFrom(value)
        else:
            setattr(reward, key, value)
    return reward


def prize(cost: int = 300, **fields: Any) -> rp.Reward:
    reward = voucher(cost, **fields)
    reward.kind = rp.REWARD_KIND_PHYSICAL_PRIZE
    reward.ClearField("discount")
    reward.display_name = "A mug"
    return reward


def create(
    scenario: Any, program: str, reward: rp.Reward, reward_id: str | None = None
) -> Awaitable[rp.CreateRewardResponse]:
    return scenario.client.rewards.CreateReward(
        rp.CreateRewardRequest(
            request_id=uid("r"),
            parent=f"programs/{program}",
            reward_id=reward_id or uid("rw"),
            reward=reward,
        )
    )


async def add_reward(scenario: Any, program: str, reward: rp.Reward, reward_id: str = "") -> str:
    return (await create(scenario, program, reward, reward_id or None)).reward.name


async def member_with_points(scenario: Any, program: str, points: int) -> str:
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


def redeem(scenario: Any, member: str, reward: str, request_id: str = "") -> Any:
    return scenario.client.rewards.RedeemReward(
        rp.RedeemRewardRequest(request_id=request_id or uid("r"), member=member, reward=reward)
    )


def reserve(
    scenario: Any, member: str, reward: str, hold_seconds: int = 0, request_id: str = ""
) -> Any:
    return scenario.client.rewards.ReserveRedemption(
        rp.ReserveRedemptionRequest(
            request_id=request_id or uid("r"),
            member=member,
            reward=reward,
            hold_seconds=hold_seconds,
        )
    )


def confirm(scenario: Any, name: str, request_id: str = "") -> Any:
    return scenario.client.rewards.ConfirmRedemption(
        rp.ConfirmRedemptionRequest(request_id=request_id or uid("r"), name=name)
    )


def cancel(scenario: Any, name: str, request_id: str = "") -> Any:
    return scenario.client.rewards.CancelRedemption(
        rp.CancelRedemptionRequest(request_id=request_id or uid("r"), name=name)
    )


def fulfill(scenario: Any, name: str, request_id: str = "") -> Any:
    return scenario.client.rewards.FulfillRedemption(
        rp.FulfillRedemptionRequest(request_id=request_id or uid("r"), name=name)
    )


async def get_reward(scenario: Any, name: str) -> rp.Reward:
    return (await scenario.client.rewards.GetReward(rp.GetRewardRequest(name=name))).reward


async def get_redemption(scenario: Any, name: str) -> rp.Redemption:
    reply = await scenario.client.rewards.GetRedemption(rp.GetRedemptionRequest(name=name))
    return reply.redemption


def update(scenario: Any, reward: rp.Reward, *paths: str) -> Any:
    return scenario.client.rewards.UpdateReward(
        rp.UpdateRewardRequest(
            request_id=uid("r"),
            reward=reward,
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        )
    )


def events(redemption: rp.Redemption) -> list[tuple[int, datetime]]:
    return [(e.state, at(e.event_time)) for e in redemption.events]


async def all_redemptions(scenario: Any, member: str, page_size: int) -> list[rp.Redemption]:
    found: list[rp.Redemption] = []
    token = ""
    while True:
        page = await scenario.client.rewards.ListRedemptions(
            rp.ListRedemptionsRequest(parent=member, page_size=page_size, page_token=token)
        )
        assert len(page.redemptions) <= page_size
        found.extend(page.redemptions)
        token = page.next_page_token
        if not token:
            return found


# --- the catalog ------------------------------------------------------------------------------


async def test_create_reward_names_each_bad_field(scenario, errors) -> None:
    program = await scenario.program()
    other = await scenario.program()
    await scenario.tier(program, "gold", 0)
    percent = voucher(kind=rp.REWARD_KIND_PERCENT_DISCOUNT)
    percent.ClearField("discount")

    def with_(reward: rp.Reward, **fields: Any) -> rp.Reward:
        copy = rp.Reward()
        copy.CopyFrom(reward)
        for key, value in fields.items():
            if isinstance(value, common_pb2.Money):
                copy.discount.CopyFrom(value)
            else:
                setattr(copy, key, value)
        return copy

    no_amount = voucher()
    no_amount.ClearField("discount")
    cases: list[tuple[rp.Reward, str]] = [
        (with_(voucher(), kind=rp.REWARD_KIND_UNSPECIFIED), "reward.kind"),
        (with_(voucher(), kind=99), "reward.kind"),
        (no_amount, "reward.discount"),
        (with_(voucher(), discount=common_pb2.Money(currency_code="EUR")), "reward.discount"),
        (with_(percent, discount_percent=0), "reward.discount_percent"),
        (with_(percent, discount_percent=101), "reward.discount_percent"),
        (with_(voucher(), kind=rp.REWARD_KIND_FREE_PRODUCT, sku=""), "reward.sku"),
        (with_(voucher(), points_cost=0), "reward.points_cost"),
        (with_(voucher(), display_name=""), "reward.display_name"),
        (with_(voucher(), unlimited_stock=False, stock=-1), "reward.stock"),
        (with_(voucher(), limit_per_member=-1), "reward.limit_per_member"),
        (with_(voucher(), min_tier=f"programs/{program}/tiers/platinum"), "reward.min_tier"),
        (with_(voucher(), min_tier=f"programs/{other}/tiers/gold"), "reward.min_tier"),
        (with_(voucher(), min_tier="gold"), "reward.min_tier"),
        (
            voucher(start_time=ts(scenario.clock.now), end_time=ts(scenario.clock.now)),
            "reward.end_time",
        ),
    ]
    for reward, field in cases:
        code, reason, fields = await errors(create(scenario, program, reward))
        assert (code, fields) == (INVALID, [field]), (reward, reason)

    code, reason, fields = await errors(create(scenario, program, voucher(), reward_id="Bad Id!"))
    assert (code, fields) == (INVALID, ["reward_id"])
    assert (await errors(create(scenario, program, rp.Reward())))[2] != []
    missing = rp.CreateRewardRequest(request_id=uid("r"), parent=f"programs/{program}")
    missing.reward_id = uid("rw")
    assert (await errors(scenario.client.rewards.CreateReward(missing)))[2] == ["reward"]

    usd = voucher(discount=common_pb2.Money(amount_minor=500, currency_code="USD"))
    assert (await errors(create(scenario, program, usd)))[:2] == (INVALID, "CURRENCY_MISMATCH")
    # Nothing was created by the failed calls.
    listed = await scenario.client.rewards.ListRewards(
        rp.ListRewardsRequest(parent=f"programs/{program}")
    )
    assert list(listed.rewards) == []


async def test_create_reward_in_an_unknown_program_is_not_found(scenario, errors) -> None:
    code, reason, _ = await errors(create(scenario, uid("p"), voucher()))
    assert (code, reason) == (NOT_FOUND, "PROGRAM_NOT_FOUND")


async def test_duplicate_reward_id_already_exists_and_a_retry_is_not(scenario, errors) -> None:
    program = await scenario.program()
    request = rp.CreateRewardRequest(
        request_id=uid("r"), parent=f"programs/{program}", reward_id="mug", reward=prize()
    )
    first = await scenario.client.rewards.CreateReward(request)
    assert await scenario.client.rewards.CreateReward(request) == first  # the same request

    again = rp.CreateRewardRequest()
    again.CopyFrom(request)
    again.request_id = uid("r")
    code, reason, _ = await errors(scenario.client.rewards.CreateReward(again))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "REWARD_EXISTS")


async def test_get_reward_returns_what_was_created(scenario, errors) -> None:
    program = await scenario.program()
    await scenario.tier(program, "silver", 0)
    start = scenario.clock.now - timedelta(days=1)
    end = scenario.clock.now + timedelta(days=30)
    sent = voucher(
        450,
        description="Five euros off any order",
        min_tier=f"programs/{program}/tiers/silver",
        start_time=ts(start),
        end_time=ts(end),
        limit_per_member=2,
        stock=25,
    )
    created = (await create(scenario, program, sent, "five-off")).reward

    got = await get_reward(scenario, f"programs/{program}/rewards/five-off")

    assert got == created
    assert got.name == f"programs/{program}/rewards/five-off"
    assert got.state == rp.REWARD_STATE_ACTIVE
    assert (got.points_cost, got.limit_per_member, got.stock, got.unlimited_stock) == (
        450,
        2,
        25,
        False,
    )
    assert (got.discount.amount_minor, got.discount.currency_code) == (500, "EUR")
    assert got.min_tier == f"programs/{program}/tiers/silver"
    assert (at(got.start_time), at(got.end_time)) == (start, end)
    assert got.description == "Five euros off any order"

    code, reason, _ = await errors(get_reward(scenario, f"programs/{program}/rewards/nope"))
    assert (code, reason) == (NOT_FOUND, "REWARD_NOT_FOUND")
    code, _, fields = await errors(get_reward(scenario, f"programs/{program}/tiers/silver"))
    assert (code, fields) == (INVALID, ["name"])


async def test_update_reward_changes_only_the_masked_fields(scenario, errors) -> None:
    program = await scenario.program()
    name = await add_reward(scenario, program, voucher(300, stock=5))

    reply = await update(
        scenario, rp.Reward(name=name, points_cost=250, display_name="ignored"), "points_cost"
    )
    assert reply.reward.points_cost == 250
    assert reply.reward.display_name == "5 EUR voucher"
    assert await get_reward(scenario, name) == reply.reward

    assert (await update(scenario, rp.Reward(name=name, stock=9), "stock")).reward.stock == 9
    unlimited = (
        await update(scenario, rp.Reward(name=name, unlimited_stock=True), "unlimited_stock")
    ).reward
    assert (unlimited.unlimited_stock, unlimited.stock) == (True, 0)
    limited = (
        await update(
            scenario,
            rp.Reward(name=name, stock=3, unlimited_stock=False),
            "stock",
            "unlimited_stock",
        )
    ).reward
    assert (limited.unlimited_stock, limited.stock) == (False, 3)
    assert (await get_reward(scenario, name)).stock == 3


async def test_update_reward_refuses_bad_masks_and_values(scenario, errors) -> None:
    program = await scenario.program()
    name = await add_reward(scenario, program, voucher(300))
    before = await get_reward(scenario, name)

    for paths in [(), ("nope",), ("kind",), ("state",), ("name",), ("points_cost", "nope")]:
        code, reason, fields = await errors(update(scenario, rp.Reward(name=name), *paths))
        assert (code, reason, fields) == (INVALID, "INVALID_UPDATE_MASK", ["update_mask"]), paths
    code, reason, fields = await errors(
        update(scenario, rp.Reward(name=name, kind=rp.REWARD_KIND_PHYSICAL_PRIZE), "kind")
    )
    assert (code, reason) == (INVALID, "INVALID_UPDATE_MASK")
    code, _, fields = await errors(update(scenario, rp.Reward(name=name), "points_cost"))
    assert (code, fields) == (INVALID, ["reward.points_cost"])
    code, _, fields = await errors(update(scenario, rp.Reward(name=name), "discount"))
    assert (code, fields) == (INVALID, ["reward.discount"])
    usd = rp.Reward(name=name, discount=common_pb2.Money(amount_minor=100, currency_code="USD"))
    assert (await errors(update(scenario, usd, "discount")))[1] == "CURRENCY_MISMATCH"
    code, reason, _ = await errors(
        update(scenario, rp.Reward(name=f"programs/{program}/rewards/nope"), "points_cost")
    )
    assert (code, reason) == (NOT_FOUND, "REWARD_NOT_FOUND")

    assert await get_reward(scenario, name) == before


async def test_archived_reward_cannot_be_redeemed_and_is_hidden_from_members(
    scenario, errors
) -> None:
    program = await scenario.program()
    member = await member_with_points(scenario, program, 1_000)
    name = await add_reward(scenario, program, voucher(300))
    kept = await add_reward(scenario, program, voucher(300))

    reply = await scenario.client.rewards.ArchiveReward(
        rp.ArchiveRewardRequest(request_id=uid("r"), name=name)
    )

    assert reply.reward.state == rp.REWARD_STATE_ARCHIVED
    assert (await get_reward(scenario, name)).state == rp.REWARD_STATE_ARCHIVED
    for call in (redeem(scenario, member, name), reserve(scenario, member, name)):
        assert (await errors(call))[:2] == (PRECONDITION, "REWARD_NOT_AVAILABLE")
    seen = await scenario.client.rewards.ListRewards(
        rp.ListRewardsRequest(parent=f"programs/{program}", member=member)
    )
    assert [r.reward.name for r in seen.rewards] == [kept]
    catalog = await scenario.client.rewards.ListRewards(
        rp.ListRewardsRequest(parent=f"programs/{program}")
    )
    assert {r.reward.name: r.reward.state for r in catalog.rewards} == {
        name: rp.REWARD_STATE_ARCHIVED,
        kept: rp.REWARD_STATE_ACTIVE,
    }
    # An update leaves it archived.
    updated = await update(scenario, rp.Reward(name=name, points_cost=10), "points_cost")
    assert updated.reward.state == rp.REWARD_STATE_ARCHIVED
    code, reason, _ = await errors(
        scenario.client.rewards.ArchiveReward(
            rp.ArchiveRewardRequest(request_id=uid("r"), name=f"programs/{program}/rewards/nope")
        )
    )
    assert (code, reason) == (NOT_FOUND, "REWARD_NOT_FOUND")
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 1_000


async def test_validity_window(scenario, clock, errors) -> None:
    program = await scenario.program()
    member = await member_with_points(scenario, program, 1_000)
    later = await add_reward(
        scenario, program, voucher(100, start_time=ts(clock.now + timedelta(days=1)))
    )
    ending = await add_reward(
        scenario, program, voucher(100, end_time=ts(clock.now + timedelta(days=2)))
    )

    assert (await errors(redeem(scenario, member, later)))[:2] == (
        PRECONDITION,
        "REWARD_NOT_AVAILABLE",
    )
    seen = await scenario.client.rewards.ListRewards(
        rp.ListRewardsRequest(parent=f"programs/{program}", member=member)
    )
    by_name = {r.reward.name: r for r in seen.rewards}
    assert list(by_name[later].ineligibilities) == [rp.INELIGIBILITY_NOT_AVAILABLE]
    assert not by_name[later].affordable
    assert by_name[ending].affordable

    clock.advance(days=1)
    assert (await redeem(scenario, member, later)).redemption.state == (
        rp.REDEMPTION_STATE_CONFIRMED
    )
    clock.advance(days=1)
    assert (await errors(redeem(scenario, member, ending)))[1] == "REWARD_NOT_AVAILABLE"
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.available_points == 900


async def test_list_rewards_pages_by_id(scenario, errors) -> None:
    program = await scenario.program()
    ids = [f"reward-{i}" for i in range(7)]
    for reward_id in reversed(ids):
        await add_reward(scenario, program, voucher(100), reward_id)

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await scenario.client.rewards.ListRewards(
            rp.ListRewardsRequest(parent=f"programs/{program}", page_size=3, page_token=token)
        )
        pages += 1
        assert len(page.rewards) <= 3
        seen.extend(r.reward.name.rsplit("/", 1)[1] for r in page.rewards)
        token = page.next_page_token
        if not token:
            break
    assert (seen, pages) == (ids, 3)

    first = await scenario.client.rewards.ListRewards(
        rp.ListRewardsRequest(parent=f"programs/{program}", page_size=7)
    )
    assert (len(first.rewards), first.next_page_token) == (7, "")
    paged = await scenario.client.rewards.ListRewards(
        rp.ListRewardsRequest(parent=f"programs/{program}", page_size=2)
    )
    member = await scenario.member(program)
    for bad in (
        rp.ListRewardsRequest(parent=f"programs/{program}", page_token="garbage"),
        # A token is only good for the query that made it.
        rp.ListRewardsRequest(
            parent=f"programs/{program}", member=member, page_token=paged.next_page_token
        ),
        rp.ListRewardsRequest(parent=f"programs/{program}", page_size=-1),
    ):
        assert (await errors(scenario.client.rewards.ListRewards(bad)))[0] == INVALID


async def test_member_list_pages_past_archived_rewards(scenario) -> None:
    program = await scenario.program()
    member = await member_with_points(scenario, program, 1_000)
    ids = [f"reward-{i}" for i in range(6)]
    for reward_id in ids:
        await add_reward(scenario, program, voucher(100), reward_id)
    for archived in ("reward-0", "reward-2", "reward-3"):
        await scenario.client.rewards.ArchiveReward(
            rp.ArchiveRewardRequest(
                request_id=uid("r"), name=f"programs/{program}/rewards/{archived}"
            )
        )

    seen: list[str] = []
    token = ""
    while True:
        page = await scenario.client.rewards.ListRewards(
            rp.ListRewardsRequest(
                parent=f"programs/{program}", member=member, page_size=2, page_token=token
            )
        )
        assert len(page.rewards) <= 2
        seen.extend(r.reward.name.rsplit("/", 1)[1] for r in page.rewards)
        token = page.next_page_token
        if not token:
            break
    assert seen == ["reward-1", "reward-4", "reward-5"]


# --- fulfilment -------------------------------------------------------------------------------


async def test_physical_prize_is_reserved_confirmed_then_fulfilled(scenario, clock, errors) -> None:
    program = await scenario.program()
    member = await member_with_points(scenario, program, 1_000)
    mug = await add_reward(scenario, program, prize(400, stock=2))
    t0 = clock.now

    held = await reserve(scenario, member, mug)
    assert held.redemption.voucher_code == ""
    t1 = clock.advance(minutes=3)
    confirmed = await confirm(scenario, held.redemption.name)
    assert (await errors(confirm(scenario, held.redemption.name)))[1] == "ALREADY_CONFIRMED"
    t2 = clock.advance(days=4)
    fulfilled = await fulfill(scenario, held.redemption.name)

    assert confirmed.redemption.state == rp.REDEMPTION_STATE_CONFIRMED
    assert fulfilled.redemption.state == rp.REDEMPTION_STATE_FULFILLED
    expected = [
        (rp.REDEMPTION_STATE_RESERVED, t0),
        (rp.REDEMPTION_STATE_CONFIRMED, t1),
        (rp.REDEMPTION_STATE_FULFILLED, t2),
    ]
    assert events(fulfilled.redemption) == expected
    assert events(await get_redemption(scenario, held.redemption.name)) == expected
    code, reason, _ = await errors(fulfill(scenario, held.redemption.name))
    assert (code, reason) == (PRECONDITION, "NOT_FULFILLABLE")
    assert (await errors(cancel(scenario, held.redemption.name)))[1] == "ALREADY_CONFIRMED"

    direct = await redeem(scenario, member, mug)
    t3 = clock.advance(hours=1)
    done = await fulfill(scenario, direct.redemption.name)
    assert events(done.redemption) == [
        (rp.REDEMPTION_STATE_CONFIRMED, t2),
        (rp.REDEMPTION_STATE_FULFILLED, t3),
    ]
    assert (await get_reward(scenario, mug)).stock == 0
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.redeemed_points) == (200, 800)


async def test_only_a_confirmed_prize_or_experience_is_fulfillable(scenario, errors) -> None:
    program = await scenario.program(pointValueMinorPer100Points=100)
    member = await member_with_points(scenario, program, 5_000)
    code_reward = await add_reward(scenario, program, voucher(100))
    mug = await add_reward(scenario, program, prize(100))
    lounge = prize(100)
    lounge.kind = rp.REWARD_KIND_EXPERIENCE
    experience = await add_reward(scenario, program, lounge)

    issued = await redeem(scenario, member, code_reward)
    assert issued.redemption.voucher_code.startswith("RW-")
    held = await reserve(scenario, member, mug)
    paid = await scenario.client.rewards.RedeemPoints(
        rp.RedeemPointsRequest(
            request_id=uid("r"),
            member=member,
            order_id=uid("o"),
            points=100,
            order_total=common_pb2.Money(amount_minor=10_000, currency_code="EUR"),
        )
    )
    for name in (issued.redemption.name, held.redemption.name, paid.redemption.name):
        assert (await errors(fulfill(scenario, name)))[:2] == (PRECONDITION, "NOT_FULFILLABLE")

    went = await redeem(scenario, member, experience)
    assert (await fulfill(scenario, went.redemption.name)).redemption.state == (
        rp.REDEMPTION_STATE_FULFILLED
    )
    code, reason, _ = await errors(fulfill(scenario, f"{member}/redemptions/nope"))
    assert (code, reason) == (NOT_FOUND, "REDEMPTION_NOT_FOUND")
    await scenario.assert_balance_matches_ledger(member)


# --- reading redemptions ----------------------------------------------------------------------


async def test_list_redemptions_pages_newest_first(scenario, clock, errors) -> None:
    program = await scenario.program()
    member = await member_with_points(scenario, program, 10_000)
    reward = await add_reward(scenario, program, voucher(100))
    made: list[str] = []
    for i in range(7):
        if i != 4:  # two redemptions at one instant: the page boundary must not lose either
            clock.advance(minutes=1)
        made.append((await redeem(scenario, member, reward)).redemption.name)

    listed = await all_redemptions(scenario, member, page_size=2)

    names = [r.name for r in listed]
    assert sorted(names) == sorted(made) and len(set(names)) == 7
    newest_first = list(reversed(made))
    assert names[:2] == newest_first[:2]
    assert set(names[2:4]) == set(newest_first[2:4])  # the two made at one instant
    assert names[4:] == newest_first[4:]
    assert [r.name for r in await all_redemptions(scenario, member, page_size=500)] == names

    other = await scenario.member(program)
    first = await scenario.client.rewards.ListRedemptions(
        rp.ListRedemptionsRequest(parent=member, page_size=2)
    )
    for bad in (
        rp.ListRedemptionsRequest(parent=other, page_token=first.next_page_token),
        rp.ListRedemptionsRequest(parent=member, page_token="garbage"),
    ):
        assert (await errors(scenario.client.rewards.ListRedemptions(bad)))[0] == INVALID
    code, reason, _ = await errors(
        scenario.client.rewards.ListRedemptions(
            rp.ListRedemptionsRequest(parent=f"programs/{program}/members/nobody")
        )
    )
    assert (code, reason) == (NOT_FOUND, "MEMBER_NOT_FOUND")
    await scenario.assert_balance_matches_ledger(member)


async def test_another_members_redemption_is_not_found(scenario, errors) -> None:
    program = await scenario.program()
    owner = await member_with_points(scenario, program, 1_000)
    stranger = await member_with_points(scenario, program, 1_000)
    reward = await add_reward(scenario, program, voucher(100))
    held = await reserve(scenario, owner, reward)
    redemption_id = held.redemption.name.rsplit("/", 1)[1]
    borrowed = f"{stranger}/redemptions/{redemption_id}"

    for call in (
        get_redemption(scenario, borrowed),
        confirm(scenario, borrowed),
        cancel(scenario, borrowed),
    ):
        assert (await errors(call))[:2] == (NOT_FOUND, "REDEMPTION_NOT_FOUND")
    assert (await get_redemption(scenario, held.redemption.name)).state == (
        rp.REDEMPTION_STATE_RESERVED
    )
    await scenario.assert_balance_matches_ledger(owner)
    await scenario.assert_balance_matches_ledger(stranger)


# --- holds ------------------------------------------------------------------------------------


async def test_hold_lasts_the_request_then_the_program_then_fifteen_minutes(
    scenario, clock, errors
) -> None:
    configured = await scenario.program(redemptionHoldSeconds=120)
    plain = await scenario.program()
    for program, default in ((configured, 120), (plain, 900)):
        member = await member_with_points(scenario, program, 1_000)
        reward = await add_reward(scenario, program, voucher(100))
        by_default = await reserve(scenario, member, reward)
        asked = await reserve(scenario, member, reward, hold_seconds=45)
        capped = await reserve(scenario, member, reward, hold_seconds=30 * 24 * 3600)
        assert at(by_default.redemption.expire_time) == clock.now + timedelta(seconds=default)
        assert at(asked.redemption.expire_time) == clock.now + timedelta(seconds=45)
        assert at(capped.redemption.expire_time) == clock.now + timedelta(days=7)
        code, _, fields = await errors(reserve(scenario, member, reward, hold_seconds=-1))
        assert (code, fields) == (INVALID, ["hold_seconds"])
        await scenario.assert_balance_matches_ledger(member)


async def test_holds_are_reserved_in_the_balance_and_cannot_be_spent(
    scenario, clock, errors
) -> None:
    program = await scenario.program(pointValueMinorPer100Points=100)
    member = await member_with_points(scenario, program, 1_000)
    reward = await add_reward(scenario, program, voucher(400))

    first = await reserve(scenario, member, reward, hold_seconds=60)
    await reserve(scenario, member, reward, hold_seconds=600)
    assert (first.balance.available_points, first.balance.reserved_points) == (1_000, 400)
    balance = await scenario.balance(member)
    assert (balance.available_points, balance.reserved_points) == (1_000, 800)

    code, reason, _ = await errors(reserve(scenario, member, reward))
    assert (code, reason) == (PRECONDITION, "INSUFFICIENT_POINTS")
    assert (await errors(redeem(scenario, member, reward)))[1] == "INSUFFICIENT_POINTS"
    pay = rp.RedeemPointsRequest(
        request_id=uid("r"),
        member=member,
        order_id=uid("o"),
        points=201,
        order_total=common_pb2.Money(amount_minor=10_000, currency_code="EUR"),
    )
    assert (await errors(scenario.client.rewards.RedeemPoints(pay)))[1] == "INSUFFICIENT_POINTS"
    listed = await scenario.client.rewards.ListRewards(
        rp.ListRewardsRequest(parent=f"programs/{program}", member=member)
    )
    assert [(r.affordable, r.points_short) for r in listed.rewards] == [(False, 200)]

    clock.advance(seconds=60)  # the first hold runs out: its points are free again
    balance = await scenario.balance(member)
    assert (balance.available_points, balance.reserved_points) == (1_000, 400)
    again = await reserve(scenario, member, reward)
    assert again.balance.reserved_points == 800
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.reserved_points, balance.redeemed_points) == (
        1_000,
        800,
        0,
    )


async def test_a_hold_counts_against_the_limit_until_cancelled(scenario, errors) -> None:
    program = await scenario.program()
    member = await member_with_points(scenario, program, 1_000)
    reward = await add_reward(scenario, program, voucher(100, limit_per_member=1))

    held = await reserve(scenario, member, reward)
    assert (await errors(reserve(scenario, member, reward)))[1] == "LIMIT_REACHED"
    await cancel(scenario, held.redemption.name)
    second = await reserve(scenario, member, reward)
    assert second.redemption.state == rp.REDEMPTION_STATE_RESERVED
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.reserved_points) == (1_000, 100)


async def stored_state(app: Any, redemption_name: str) -> tuple[str, list[str]]:
    """The state and event states as written in the database (nothing derived at read)."""
    _, program_id, _, member_id, _, redemption_id = redemption_name.split("/")
    async with app.db.unit_of_work() as uow:
        stored = await uow.rewards.get_redemption(program_id, member_id, redemption_id)
    assert stored is not None
    return stored.state.value, [e.state.value for e in stored.events]


async def test_an_expired_hold_is_recorded_at_its_expire_time_when_the_member_is_touched(
    app, scenario, clock, errors
) -> None:
    program = await scenario.program()
    member = await member_with_points(scenario, program, 1_000)
    reward = await add_reward(scenario, program, voucher(300, stock=1))
    start = clock.now
    held = await reserve(scenario, member, reward, hold_seconds=60)
    expire = start + timedelta(seconds=60)
    assert at(held.redemption.expire_time) == expire

    clock.advance(minutes=30)
    # Read before anything wrote: it reads as expired already.
    before = await get_redemption(scenario, held.redemption.name)
    assert before.state == rp.REDEMPTION_STATE_EXPIRED
    assert events(before)[-1] == (rp.REDEMPTION_STATE_EXPIRED, expire)
    assert await stored_state(app, held.redemption.name) == ("RESERVED", ["RESERVED"])

    await scenario.purchase(member, 1_000)
    assert await stored_state(app, held.redemption.name) == (
        "EXPIRED",
        ["RESERVED", "EXPIRED"],
    )
    clock.advance(minutes=30)

    after = await get_redemption(scenario, held.redemption.name)
    assert after.state == rp.REDEMPTION_STATE_EXPIRED
    assert events(after) == [
        (rp.REDEMPTION_STATE_RESERVED, start),
        (rp.REDEMPTION_STATE_EXPIRED, expire),
    ]
    listed = await all_redemptions(scenario, member, page_size=10)
    assert [r.state for r in listed] == [rp.REDEMPTION_STATE_EXPIRED]
    assert (await errors(confirm(scenario, held.redemption.name)))[1] == "HOLD_EXPIRED"
    assert (await errors(cancel(scenario, held.redemption.name)))[1] == "HOLD_EXPIRED"
    assert (await get_reward(scenario, reward)).stock == 1
    balance = await scenario.assert_balance_matches_ledger(member)
    assert balance.reserved_points == 0


# --- exactly-once -----------------------------------------------------------------------------


async def test_reserve_confirm_and_cancel_retries_take_effect_once(scenario, errors) -> None:
    program = await scenario.program(redemptionCancelWindowDays=7)
    member = await member_with_points(scenario, program, 1_000)
    reward = await add_reward(scenario, program, voucher(300, stock=5))

    held = await reserve(scenario, member, reward, request_id="reserve-1")
    assert await reserve(scenario, member, reward, request_id="reserve-1") == held
    assert len(await all_redemptions(scenario, member, page_size=10)) == 1
    assert (await scenario.balance(member)).reserved_points == 300

    confirmed = await confirm(scenario, held.redemption.name, request_id="confirm-1")
    assert await confirm(scenario, held.redemption.name, request_id="confirm-1") == confirmed
    balance = await scenario.balance(member)
    assert (balance.available_points, balance.reserved_points) == (700, 0)
    assert (await get_reward(scenario, reward)).stock == 4

    cancelled = await cancel(scenario, held.redemption.name, request_id="cancel-1")
    assert await cancel(scenario, held.redemption.name, request_id="cancel-1") == cancelled
    assert cancelled.redemption.state == rp.REDEMPTION_STATE_CANCELLED
    assert [e.state for e in (await get_redemption(scenario, held.redemption.name)).events] == [
        rp.REDEMPTION_STATE_RESERVED,
        rp.REDEMPTION_STATE_CONFIRMED,
        rp.REDEMPTION_STATE_CANCELLED,
    ]
    assert (await get_reward(scenario, reward)).stock == 5
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.reserved_points, balance.redeemed_points) == (
        1_000,
        0,
        0,
    )


async def test_a_changed_request_under_a_used_request_id_is_refused(scenario, errors) -> None:
    program = await scenario.program()
    member = await member_with_points(scenario, program, 1_000)
    reward = await add_reward(scenario, program, voucher(300))
    other_reward = await add_reward(scenario, program, voucher(200))
    held = await reserve(scenario, member, reward, hold_seconds=60, request_id="same")
    second = await reserve(scenario, member, reward)

    for call in (
        reserve(scenario, member, reward, hold_seconds=61, request_id="same"),
        reserve(scenario, member, other_reward, hold_seconds=60, request_id="same"),
        confirm(scenario, held.redemption.name, request_id="same"),
        cancel(scenario, held.redemption.name, request_id="same"),
    ):
        code, reason, _ = await errors(call)
        assert (code, reason) == (INVALID, "REQUEST_ID_REUSED")

    await confirm(scenario, held.redemption.name, request_id="settle-it")
    code, reason, _ = await errors(
        confirm(scenario, second.redemption.name, request_id="settle-it")
    )
    assert (code, reason) == (INVALID, "REQUEST_ID_REUSED")
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.reserved_points) == (700, 300)


async def test_a_refused_request_is_not_stored_and_its_retry_runs_afresh(scenario, errors) -> None:
    program = await scenario.program()
    member = await member_with_points(scenario, program, 100)
    reward = await add_reward(scenario, program, voucher(300))

    refused = await errors(reserve(scenario, member, reward, request_id="checkout-1"))
    assert refused[:2] == (PRECONDITION, "INSUFFICIENT_POINTS")
    await scenario.client.points.AdjustPoints(
        ps.AdjustPointsRequest(
            request_id=uid("r"),
            member=member,
            points=200,
            reason=ps.ADJUSTMENT_REASON_GOODWILL,
            actor="test",
        )
    )
    held = await reserve(scenario, member, reward, request_id="checkout-1")
    assert held.redemption.state == rp.REDEMPTION_STATE_RESERVED
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.reserved_points) == (300, 300)


# --- paying with points -----------------------------------------------------------------------


async def test_redeem_points_refuses_malformed_orders(scenario, errors) -> None:
    program = await scenario.program(pointValueMinorPer100Points=100)
    member = await member_with_points(scenario, program, 1_000)

    def pay(**fields: Any) -> Any:
        request = rp.RedeemPointsRequest(
            request_id=uid("r"),
            member=member,
            order_id=uid("o"),
            points=100,
            order_total=common_pb2.Money(amount_minor=10_000, currency_code="EUR"),
        )
        for key, value in fields.items():
            if key == "order_total" and value is None:
                request.ClearField("order_total")
            elif key == "order_total":
                request.order_total.CopyFrom(value)
            else:
                setattr(request, key, value)
        return scenario.client.rewards.RedeemPoints(request)

    usd = common_pb2.Money(amount_minor=10_000, currency_code="USD")
    assert (await errors(pay(order_total=usd)))[:2] == (INVALID, "CURRENCY_MISMATCH")
    for fields, field in [
        ({"order_id": ""}, "order_id"),
        ({"order_total": None}, "order_total"),
        ({"order_total": common_pb2.Money(currency_code="EUR")}, "order_total.amount_minor"),
        ({"points": 0}, "points"),
        ({"points": -5}, "points"),
    ]:
        code, _, violations = await errors(pay(**fields))
        assert (code, violations) == (INVALID, [field]), fields
    code, reason, _ = await errors(pay(member=f"programs/{program}/members/nobody"))
    assert (code, reason) == (NOT_FOUND, "MEMBER_NOT_FOUND")

    reply = await pay(points=250)
    assert (reply.discount.amount_minor, reply.redemption.points) == (250, 250)
    assert reply.redemption.reward == ""
    assert reply.redemption.state == rp.REDEMPTION_STATE_CONFIRMED
    balance = await scenario.assert_balance_matches_ledger(member)
    assert (balance.available_points, balance.redeemed_points) == (750, 250)


async def test_redeem_reward_of_another_program_is_invalid(scenario, errors) -> None:
    program = await scenario.program()
    other = await scenario.program()
    member = await member_with_points(scenario, program, 1_000)
    foreign = await add_reward(scenario, other, voucher(100))
    code, _, fields = await errors(redeem(scenario, member, foreign))
    assert (code, fields) == (INVALID, ["reward"])
    await scenario.assert_balance_matches_ledger(member)
