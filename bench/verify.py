"""Checks the ledger through the API after a write scenario.

For every member: the balance equals the sum of the ledger entries (available and
pending, and the last entry's running balance), and the purchase entries (EARN or
PENDING with an order id) are exactly the purchases the clients got acknowledged, each
once. The members checked are every member a purchase was sent for in the scenario, plus
a random sample of the others (which must hold only what earlier checks saw), so every
purchase sent is checked. A purchase whose call failed may or may not be stored (the server may have
committed before the error reached the client); those are counted, not flagged.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from loyalty_engine.gen.loyalty.v1 import points_service_pb2, points_service_pb2_grpc

SAMPLE_UNTOUCHED = 200
PURCHASE_KINDS = (
    points_service_pb2.LEDGER_ENTRY_KIND_EARN,
    points_service_pb2.LEDGER_ENTRY_KIND_PENDING,
)
VERIFY_CONCURRENCY = 16


@dataclass
class Verification:
    members_checked: int = 0
    entries_read: int = 0
    purchases_acknowledged: int = 0
    purchases_stored: int = 0
    failed_but_stored: int = 0
    seconds: float = 0.0
    discrepancies: list[str] = field(default_factory=list)


def members_to_check(
    count: int, touched: set[int], rng: random.Random, sample: int = SAMPLE_UNTOUCHED
) -> list[int]:
    """Every touched member and up to `sample` untouched ones, in index order."""
    untouched = [i for i in range(count) if i not in touched]
    return sorted(touched | set(rng.sample(untouched, min(sample, len(untouched)))))


async def verify_ledgers(
    channel: grpc.aio.Channel,
    members: list[str],
    indexes: list[int],
    acked: dict[int, set[str]],
    failed: dict[int, set[str]],
    metadata: tuple[tuple[str, str], ...] = (),
) -> Verification:
    """Check the members at `indexes`: balance against ledger, purchases against acks."""
    stub = points_service_pb2_grpc.PointsServiceStub(channel)
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
        entries = []
        token = ""
        while True:
            page = await stub.ListLedgerEntries(
                points_service_pb2.ListLedgerEntriesRequest(
                    parent=member, page_size=500, page_token=token
                ),
                timeout=60,
                metadata=metadata,
            )
            entries.extend(page.ledger_entries)
            token = page.next_page_token
            if not token:
                break
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
        report.discrepancies.extend(f"{member}: {p}" for p in problems)

    async def worker() -> None:
        for index in todo:
            await check(index)

    await asyncio.gather(*(worker() for _ in range(VERIFY_CONCURRENCY)))
    report.seconds = time.perf_counter() - started
    return report
