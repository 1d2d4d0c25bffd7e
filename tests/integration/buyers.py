"""A program whose members have given buying statistics, set straight on their accounts.

For tests of what a refresh computes from the statistics: they need many members with
exact last purchase times, order counts and spend, not the purchases behind them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loyalty_engine.api.servicers.members import MemberServicer
from loyalty_engine.api.servicers.programs import ProgramServicer
from loyalty_engine.bootstrap import App
from loyalty_engine.gen.loyalty.v1 import member_service_pb2 as mp
from loyalty_engine.gen.loyalty.v1 import program_service_pb2 as pp
from loyalty_engine.storage import schema as t
from tests.conftest import uid

# (last purchase time, orders, net spend in minor units); None: never bought.
Stats = tuple[datetime, int, int] | None


def call(method: Any, servicer: Any, request: Any) -> Any:
    """A servicer method below the transport (no context, no auth)."""
    return method.__wrapped__(servicer, request, None)


async def program_with_buyers(app: App, stats: list[Stats]) -> tuple[str, list[str]]:
    """A new EUR program with a member per entry; returns the program id and member ids."""
    program_id = uid("p")
    await call(
        ProgramServicer.CreateProgram,
        ProgramServicer(app),
        pp.CreateProgramRequest(
            request_id=uid("r"),
            program_id=program_id,
            program=pp.Program(display_name="Buyers", currency_code="EUR"),
        ),
    )
    members = []
    for _ in stats:
        reply = await call(
            MemberServicer.EnrollMember,
            MemberServicer(app),
            mp.EnrollMemberRequest(
                request_id=uid("r"),
                parent=f"programs/{program_id}",
                member=mp.Member(external_id=uid("ext")),
            ),
        )
        members.append(reply.member.name.rsplit("/", 1)[1])
    a = t.member_accounts
    async with app.db.unit_of_work() as uow:
        for member_id, row in zip(members, stats, strict=True):
            if row is None:
                continue
            last_time, orders, spend = row
            await uow.connection.execute(
                a.update()
                .where(a.c.program_id == program_id, a.c.member_id == member_id)
                .values(
                    first_purchase_time=last_time,
                    last_purchase_time=last_time,
                    order_count=orders,
                    total_spend_minor=spend,
                )
            )
        await uow.commit()
    return program_id, members
