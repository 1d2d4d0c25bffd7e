"""Checks the ledger through the API after a write scenario.

For every member: the balance equals the sum of the ledger entries (available and
pending, and the last entry's running balance), and the purchase entries (EARN or
PENDING with an order id) are exactly the purchases the clients got acknowledged, each
once. The members checked are every member a purchase was sent for in the scenario, plus
a random sample of the others (which must hold only what earlier checks saw), so every
purchase sent is checked. A purchase whose call failed may or may not be stored (the server may have
committed before the error reached the client); those are counted, not flagged.

Redemptions: no balance is negative (available, reserved, nor any entry's running
balance); every acknowledged redemption is listed once by ListRedemptions, confirmed; the
member's REDEEM entries are as many as the confirmed redemptions and sum to their points,
and the balance's `redeemed_points` equals that sum. A RedeemReward that failed other than
by a business refusal may have been stored: such a redemption is counted, and flagged only
if there are more of them than failed calls. Refusals (INSUFFICIENT_POINTS) wrote nothing,
so they need no check beyond these counts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from loyalty_engine.gen.loyalty.v1 import (
    points_service_pb2,
    points_service_pb2_grpc,
    reward_service_pb2,
    reward_service_pb2_grpc,
)

SAMPLE_UNTOUCHED = 200
PURCHASE_KINDS = (
    points_service_pb2.LEDGER_ENTRY_KIND_EARN,
    points_service_pb2.LEDGER_ENTRY_KIND_PENDING,
)
REDEEM_KIND = points_service_pb2.LEDGER_ENTRY_KIND_REDEEM
CONFIRMED = reward_service_pb2.REDEMPTION_STATE_CONFIRMED
VERIFY_CONCURRENCY = 16


@dataclass
class Verification:
    members_checked: int = 0
    entries_read: int = 0
    purchases_acknowledged: int = 0
    purchases_stored: int = 0
    failed_but_stored: int = 0
    redemptions_acknowledged: int = 0
    redemptions_stored: int = 0
    redemption_entries: int = 0
    redemptions_failed_but_stored: int = 0
    lowest_balance: int | None = None
    seconds: float = 0.0
    discrepancies: list[str] = field(default_factory=list)


def members_to_check(
    count: int, touched: set[int], rng: random.Random, sample: int = SAMPLE_UNTOUCHED
) -> list[int]:
    """Every touched member and up to `sample` untouched ones, in index order."""
    untouched = [i for i in range(count) if i not in touched]
    return sorted(touched | set(rng.sample(untouched, min(sample, len(untouched)))))


async def all_pages(
    method: Any,
    request_type: Any,
    items: str,
    parent: str,
    metadata: tuple[tuple[str, str], ...],
) -> list[Any]:
    """Every item of a paged List call under `parent`, page after page."""
    found: list[Any] = []
    token = ""
    while True:
        page = await method(
            request_type(parent=parent, page_size=500, page_token=token),
            timeout=60,
            metadata=metadata,
        )
        found.extend(getattr(page, items))
        token = page.next_page_token
        if not token:
            return found


async def verify_ledgers(
    channel: grpc.aio.Channel,
    members: list[str],
    indexes: list[int],
    acked: dict[int, set[str]],
    failed: dict[int, set[str]],
    metadata: tuple[tuple[str, str], ...] = (),
    redeemed: dict[int, set[str]] | None = None,
    redeem_failed: dict[int, int] | None = None,
    check_redemptions: bool = True,
) -> Verification:
    """Check the members at `indexes`: balance against ledger, purchases against acks.

    `redeemed` maps a member index to its acknowledged redemptions' names and
    `redeem_failed` to its count of redemption calls that failed (not refusals); with no
    redemptions sent, ListRedemptions is not called (older versions may lack it). A caller
    whose redemptions include holds (reserve, then confirm or cancel) checks them itself and
    passes `check_redemptions=False` (bench/soak.py does, in SQL).
    """
    stub = points_service_pb2_grpc.PointsServiceStub(channel)
    rewards = reward_service_pb2_grpc.RewardServiceStub(channel)
    redeemed = redeemed or {}
    redeem_failed = redeem_failed or {}
    report = Verification()
    started = time.perf_counter()
    todo = iter(indexes)

    async def check(index: int) -> None:
        member = members[index]
        balance = (
            await stub.GetBalance(
                points_service_pb2.GetBalanceRequest(member=member),
                timeout=60,
                metadata=metadata,
            )
        ).balance
        entries = await all_pages(
            stub.ListLedgerEntries,
            points_service_pb2.ListLedgerEntriesRequest,
            "ledger_entries",
            member,
            metadata,
        )
        report.members_checked += 1
        report.entries_read += len(entries)
        problems = []
        available = sum(e.points for e in entries)
        pending = sum(e.pending_points for e in entries)
        if balance.available_points != available:
            problems.append(f"available {balance.available_points} != sum of entries {available}")
        if balance.pending_points != pending:
            problems.append(f"pending {balance.pending_points} != sum of entries {pending}")
        if entries and entries[0].balance_after != balance.available_points:  # newest first
            problems.append(
                f"newest entry's balance_after {entries[0].balance_after} "
                f"!= available {balance.available_points}"
            )
        stored = Counter(e.order_id for e in entries if e.kind in PURCHASE_KINDS and e.order_id)
        mine, lost_calls = acked.get(index, set()), failed.get(index, set())
        report.purchases_acknowledged += len(mine)
        report.purchases_stored += sum(stored.values())
        report.failed_but_stored += len(set(stored) & lost_calls)
        duplicated = sorted(o for o, n in stored.items() if n > 1)
        missing = sorted(mine - set(stored))
        unknown = sorted(set(stored) - mine - lost_calls)
        if duplicated:
            problems.append(f"orders stored more than once: {duplicated[:3]}")
        if missing:
            problems.append(f"{len(missing)} acknowledged purchases not in the ledger")
        if unknown:
            problems.append(f"{len(unknown)} purchases in the ledger nobody sent: {unknown[:3]}")

        # No balance below zero, now or after any entry.
        lowest = min([balance.available_points, *(e.balance_after for e in entries)], default=0)
        if report.lowest_balance is None or lowest < report.lowest_balance:
            report.lowest_balance = lowest
        if lowest < 0:
            problems.append(f"a negative balance: {lowest}")
        if balance.reserved_points < 0:
            problems.append(f"negative reserved points: {balance.reserved_points}")

        # Redemptions against the ledger.
        redeem_entries = [e for e in entries if e.kind == REDEEM_KIND]
        redeemed_points = -sum(e.points for e in redeem_entries)
        report.redemption_entries += len(redeem_entries)
        if balance.redeemed_points != redeemed_points:
            problems.append(
                f"redeemed_points {balance.redeemed_points} != REDEEM entries {redeemed_points}"
            )
        if not check_redemptions:
            report.discrepancies.extend(f"{member}: {p}" for p in problems)
            return
        mine_redeemed = redeemed.get(index, set())
        may_be_stored = redeem_failed.get(index, 0)
        report.redemptions_acknowledged += len(mine_redeemed)
        if mine_redeemed or may_be_stored:
            listed = await list_redemptions(member)
            confirmed = [r for r in listed if r.state == CONFIRMED]
            names = Counter(r.name for r in listed)
            report.redemptions_stored += len(confirmed)
            twice = sorted(n for n, c in names.items() if c > 1)
            not_listed = sorted(mine_redeemed - set(names))
            not_confirmed = sorted(r.name for r in listed if r.state != CONFIRMED)
            extra = len(set(names) - mine_redeemed)
            report.redemptions_failed_but_stored += min(extra, may_be_stored)
            if twice:
                problems.append(f"redemptions listed more than once: {twice[:3]}")
            if not_listed:
                problems.append(f"{len(not_listed)} acknowledged redemptions not listed")
            if not_confirmed:
                problems.append(f"redemptions not confirmed: {not_confirmed[:3]}")
            if extra > may_be_stored:
                problems.append(
                    f"{extra} redemptions nobody got acknowledged, {may_be_stored} calls failed"
                )
            if len(redeem_entries) != len(confirmed):
                problems.append(
                    f"{len(redeem_entries)} REDEEM entries for {len(confirmed)} redemptions"
                )
            if redeemed_points != sum(r.points for r in confirmed):
                problems.append(
                    f"REDEEM entries take {redeemed_points} points, the redemptions "
                    f"{sum(r.points for r in confirmed)}"
                )
        elif redeem_entries:
            problems.append(f"{len(redeem_entries)} REDEEM entries and no redemption sent")
        report.discrepancies.extend(f"{member}: {p}" for p in problems)

    async def list_redemptions(member: str) -> list[reward_service_pb2.Redemption]:
        return await all_pages(
            rewards.ListRedemptions,
            reward_service_pb2.ListRedemptionsRequest,
            "redemptions",
            member,
            metadata,
        )

    async def worker() -> None:
        for index in todo:
            await check(index)

    await asyncio.gather(*(worker() for _ in range(VERIFY_CONCURRENCY)))
    report.seconds = time.perf_counter() - started
    return report
