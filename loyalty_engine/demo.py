"""The demo program: tiers, earning rules and a few members, for `make serve` and trying things."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from loyalty_engine.bootstrap import App
from loyalty_engine.domain.earning import EarningPolicy, LineItem, Rounding
from loyalty_engine.domain.ledger import ExpiryMode, ExpiryPolicy
from loyalty_engine.domain.members import Member
from loyalty_engine.domain.program import EarningRule, EarningRuleKind, Program
from loyalty_engine.domain.tiers import Tier, TierPolicy
from loyalty_engine.services import members, points, programs

DEMO_PROGRAM = "demo"


async def seed_demo(app: App) -> bool:
    """Create the demo program unless it exists; True if it was created."""
    now = app.clock()
    async with app.db.unit_of_work() as uow:
        if await uow.programs.get(DEMO_PROGRAM) is not None:
            return False
        await programs.create_program(
            uow,
            Program(
                program_id=DEMO_PROGRAM,
                display_name="Demo Rewards",
                currency_code="EUR",
                earning=EarningPolicy(
                    base_points=1,
                    per_amount_minor=100,
                    rounding=Rounding.FLOOR,
                    excluded_categories=frozenset({"gift_card"}),
                ),
                tier_policy=TierPolicy(window_months=12, grace_days=30),
                expiry=ExpiryPolicy(ExpiryMode.AFTER_EARNING, 24),
                point_value_minor_per_100_points=100,
            ),
            now,
        )
        for tier in (
            Tier("bronze", "Bronze", 0, 100, "Member prices"),
            Tier("silver", "Silver", 50_000, 125, "Free shipping"),
            Tier("gold", "Gold", 150_000, 150, "Free shipping, early access"),
        ):
            await programs.create_tier(uow, DEMO_PROGRAM, tier, now)
        await programs.create_earning_rule(
            uow,
            DEMO_PROGRAM,
            EarningRule(
                "coffee-bonus",
                "Coffee 2x",
                EarningRuleKind.CATEGORY,
                match="coffee",
                multiplier_percent=200,
            ),
            now,
        )
        await programs.create_earning_rule(
            uow,
            DEMO_PROGRAM,
            EarningRule(
                "double-weekend",
                "Double points weekend",
                EarningRuleKind.PROMOTION,
                multiplier_percent=200,
                start_time=now - timedelta(days=1),
                end_time=now + timedelta(days=2),
            ),
            now,
        )
        people = [
            ("john", "C-1001", "John", "Smith", "john@example.com", date(1985, 3, 14), 6),
            ("maria", "C-1002", "Maria", "Garcia", "maria@example.com", date(1990, 11, 2), 2),
            ("li", "C-1003", "Li", "Wei", None, None, 0),
        ]
        for member_id, external_id, given, family, email, birth, years in people:
            await members.enroll_member(
                uow,
                Member(
                    program_id=DEMO_PROGRAM,
                    member_id=member_id,
                    external_id=external_id,
                    given_name=given,
                    family_name=family,
                    email=email,
                    birth_date=birth,
                    join_time=now - timedelta(days=365 * years),
                    marketing_consent=True,
                ),
                now,
            )
        await points.record_purchase(
            uow,
            points.RecordPurchase(
                program_id=DEMO_PROGRAM,
                member_id="john",
                order_id="demo-order-1",
                purchase_time=now - timedelta(days=1),
                store_id="berlin-1",
                currency_code="EUR",
                total_minor=64_50,
                lines=(
                    LineItem("SKU-ESPRESSO", "coffee", 2, 12_25),
                    LineItem("SKU-MUG", "homeware", 1, 40_00),
                ),
            ),
            now,
        )
        await uow.commit()
    return True


def how_to_call(address: str, api_key: str | None = None, *, tls: bool = False) -> str:
    """Instructions printed by `serve` and `demo`."""
    member = f"programs/{DEMO_PROGRAM}/members"
    when = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    purchase = (
        f'{{"request_id": "r-{when}", "member": "{member}/maria", "purchase": {{"order_id": '
        f'"o-{when}", "purchase_time": "{when}", "total": {{"amount_minor": 2500, '
        '"currency_code": "EUR"}}}'
    )
    flags = "" if tls else "-plaintext "
    auth = f"-H 'authorization: Bearer {api_key}' " if api_key else ""
    lines = [f"loyalty-engine is serving on {address}" + ("" if tls else " (plaintext)")]
    if api_key:
        lines.append(f"  demo admin key (shown once): {api_key}")
    lines += [
        f"  list services: grpcurl {flags}{address} list",
        f"  health:        grpcurl {flags}{address} grpc.health.v1.Health/Check",
        f'  a balance:     grpcurl {flags}{auth}-d \'{{"member": "{member}/john"}}\' '
        f"{address} loyalty.v1.PointsService/GetBalance",
        f"  a purchase:    grpcurl {flags}{auth}-d '{purchase}' "
        f"{address} loyalty.v1.PointsService/RecordPurchase",
        "  buf curl works too: buf curl --protocol grpc --http2-prior-knowledge "
        f"{auth.replace('-H', '--header')}http://{address}/loyalty.v1.PointsService/GetBalance "
        "-d '{...}'",
    ]
    return "\n".join(lines)
