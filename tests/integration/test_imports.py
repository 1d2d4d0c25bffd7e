"""Bulk import on both backends: members found or enrolled, duplicates, statistics, lines."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from loyalty_engine.domain.earning import LineItem
from loyalty_engine.domain.members import Member
from loyalty_engine.services.imports import ImportRow, import_batch, refresh_statistics_before
from loyalty_engine.services.programs import load_program
from loyalty_engine.storage import schema as t
from tests.conftest import uid


async def _import(app: Any, program_id: str, rows: list[ImportRow], batch_number: int = 1) -> Any:
    async with app.db.unit_of_work() as uow:
        program = await load_program(uow, program_id)
        report = await import_batch(uow, program, rows, app.clock(), batch_number=batch_number)
        await uow.commit()
    return report


async def _scalar(app: Any, query: Any) -> Any:
    async with app.db.unit_of_work() as uow:
        return (await uow.connection.execute(query)).scalar_one()


async def test_batches_enroll_or_find_members_skip_duplicates_and_fold_statistics(
    app, scenario, clock
) -> None:
    program = await scenario.program()
    known = uid("known")
    await scenario.member(program, externalId=known)
    day = timedelta(days=1)
    t0 = clock.now - 400 * day
    fresh = uid("fresh")
    first = [
        ImportRow(1, known, "a1", t0 + 5 * day, 1_000, "EUR"),
        ImportRow(2, fresh, "a2", t0 + 9 * day, 2_500, "EUR", store_id="s1"),
        ImportRow(3, fresh, "a3", t0 + 2 * day, 500, "EUR"),
        ImportRow(4, fresh, "a2", t0 + 3 * day, 700, "EUR"),  # same order twice in a batch
        ImportRow(5, known, "a4", t0, 300, "USD"),  # wrong currency
        ImportRow(6, "", "a5", t0, 300, "EUR"),  # no member
        ImportRow(7, known, "a6", t0, -1, "EUR"),  # negative amount
        ImportRow(
            8,
            fresh,
            "a7",
            t0 + 1 * day,
            1_200,
            "EUR",
            lines=(LineItem("S1", "coffee", 2, 400), LineItem("S2", "tea", 1, 400)),
        ),
    ]
    second = [
        ImportRow(1, fresh, "a3", t0 + 2 * day, 500, "EUR"),  # stored by the first batch
        ImportRow(2, known, "b1", t0 + 30 * day, 4_000, "EUR"),
    ]

    one = await _import(app, program, first)
    two = await _import(app, program, second, batch_number=2)  # analyzes first

    assert (one.imported, one.duplicates, one.error_count) == (4, 1, 3)
    assert sorted((row, reason) for row, reason, _ in one.errors) == [
        (5, "CURRENCY_MISMATCH"),
        (6, "INVALID_FIELD"),
        (7, "INVALID_FIELD"),
    ]
    assert (two.imported, two.duplicates, two.error_count) == (1, 1, 0)
    async with app.db.unit_of_work() as uow:
        ids = await uow.imports.external_ids(program, [known, fresh])
        accounts = {
            r.member_id: r
            for r in await uow.connection.execute(
                sa.select(t.member_accounts).where(t.member_accounts.c.program_id == program)
            )
        }
        members = await uow.connection.execute(
            sa.select(t.members.c.external_id, t.members.c.join_time).where(
                t.members.c.program_id == program
            )
        )
        joined = {r.external_id: r.join_time for r in members}
        lines = (
            await uow.connection.execute(
                sa.select(sa.func.count()).where(t.purchase_lines.c.program_id == program)
            )
        ).scalar_one()
        categories = {
            r.category
            for r in await uow.connection.execute(
                sa.select(t.member_categories.c.category).where(
                    t.member_categories.c.program_id == program
                )
            )
        }
    assert set(ids) == {known, fresh} and len(joined) == 2  # one member per external id
    assert joined[fresh] == t0 + 1 * day  # joined with their first imported purchase
    k, f = accounts[ids[known]], accounts[ids[fresh]]
    assert (k.order_count, k.total_spend_minor) == (2, 5_000)
    assert (k.first_purchase_time, k.last_purchase_time) == (t0 + 5 * day, t0 + 30 * day)
    assert (f.order_count, f.total_spend_minor) == (3, 4_200)
    assert (f.first_purchase_time, f.last_purchase_time) == (t0 + 1 * day, t0 + 9 * day)
    # Each purchase has its lines (one of its total when none were given) for returns.
    assert lines == 4 + 1 + 1
    assert categories == {"coffee", "tea"}


async def test_enrolling_an_external_id_claimed_meanwhile_keeps_the_first_member(
    app, scenario, clock
) -> None:
    program = await scenario.program()
    taken = uid("taken")
    existing = (await scenario.member(program, externalId=taken)).rsplit("/", 1)[1]
    newcomer = uid("new")

    def member(external_id: str) -> Member:
        return Member(
            program_id=program,
            member_id=uid("m"),
            external_id=external_id,
            join_time=clock.now,
            create_time=clock.now,
            update_time=clock.now,
        )

    late = member(taken)  # as if another import enrolled `taken` after our lookup
    async with app.db.unit_of_work() as uow:
        ids = await uow.imports.enroll([late, member(newcomer)])
        await uow.commit()

    assert ids[taken] == existing
    assert newcomer in ids and ids[newcomer] != existing
    count = await _scalar(app, sa.select(sa.func.count()).where(t.members.c.program_id == program))
    assert count == 2  # the late duplicate left no member row behind


def test_statistics_are_refreshed_each_time_the_import_may_have_doubled() -> None:
    assert [n for n in range(1, 40) if refresh_statistics_before(n)] == [2, 3, 5, 9, 17, 33]
