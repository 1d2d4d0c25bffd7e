"""Rules over pages of members, on both backends: the same facts and outcomes as one member
at a time, page boundaries, reruns that issue nothing twice, dry runs that write nothing,
flag changes in rule order, code collisions, the bounded report and the member lock."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from loyalty_engine.bootstrap import App
from loyalty_engine.domain.errors import Aborted
from loyalty_engine.domain.members import Member
from loyalty_engine.domain.program import Program
from loyalty_engine.domain.rules import Rule, Trigger
from loyalty_engine.rule_files import parse_rule
from loyalty_engine.services import offers as svc
from loyalty_engine.services.members import enroll_member
from loyalty_engine.services.points import RecordPurchase, record_purchase
from loyalty_engine.services.programs import create_program, load_program
from loyalty_engine.services.segments import refresh_segments
from loyalty_engine.storage import schema as t
from tests.conftest import uid

TOP = 100_000


async def _program(app: App) -> str:
    program_id = uid("p")
    async with app.db.unit_of_work() as uow:
        await create_program(
            uow,
            Program(
                program_id=program_id,
                display_name="Rules",
                currency_code="EUR",
                late_purchase_window_days=3650,
            ),
            app.clock(),
        )
        await uow.commit()
    return program_id


async def _member(
    app: App,
    program_id: str,
    member_id: str,
    *,
    spends: tuple[int, ...] = (),
    joined_days_ago: int = 30,
    birth_date: date | None = None,
) -> str:
    now = app.clock()
    async with app.db.unit_of_work() as uow:
        await enroll_member(
            uow,
            Member(
                program_id=program_id,
                member_id=member_id,
                external_id=member_id,
                given_name=member_id.upper(),
                birth_date=birth_date,
                join_time=now - timedelta(days=joined_days_ago),
            ),
            now,
        )
        for k, amount in enumerate(spends):
            cmd = RecordPurchase(
                program_id, member_id, f"{member_id}-{k}", now - timedelta(days=k + 1), "web",
                "EUR", amount,
            )  # fmt: skip
            await record_purchase(uow, cmd, now)
        await uow.commit()
    return member_id


async def _population(app: App) -> tuple[str, list[str]]:
    """22 members in id order: two tied at the top by spend, birthdays, long-standing ones,
    one flagged top_customer who no longer is, and two who never bought."""
    program_id = await _program(app)
    today = app.clock().date()
    ids = []
    for i in range(22):
        spends: tuple[int, ...] = ()
        if i in (3, 11):
            spends = (TOP,)  # tied at the top: the 5% cut of 20 buyers is 1, ties included
        elif i not in (7, 15):
            spends = (1000 + 10 * i,) * (1 + i % 2)
        birth = today + timedelta(days=i % 9 - 2) if i % 4 == 0 else None
        ids.append(
            await _member(
                app,
                program_id,
                f"a{i:02d}",
                spends=spends,
                joined_days_ago=4 * 365 + 2 if i % 3 == 0 else 100,
                birth_date=birth.replace(year=1990) if birth else None,
            )
        )
    async with app.db.unit_of_work() as uow:
        await uow.offers.set_flags(
            program_id, [("a05", "top_customer", "top-customers")], app.clock()
        )
        await refresh_segments(uow, program_id, app.clock())
        await uow.commit()
    return program_id, ids


async def _counts(app: App, program_id: str) -> tuple[int, int, int, int]:
    async with app.db.engine.connect() as conn:
        got = []
        for table in (t.offers, t.member_flags, t.offer_events, t.offer_codes):
            query = sa.select(sa.func.count()).where(table.c.program_id == program_id)
            got.append(int((await conn.execute(query)).scalar_one()))
    return got[0], got[1], got[2], got[3]


async def _flags(app: App, program_id: str) -> dict[tuple[str, str], str]:
    f = t.member_flags
    async with app.db.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(f.c.member_id, f.c.flag, f.c.rule_id).where(f.c.program_id == program_id)
        )
        return {(r.member_id, r.flag): r.rule_id for r in rows}


def _outcomes(report: svc.RunReport) -> list[tuple[str, str, str]]:
    return [(o.member_id, o.rule_id, o.label) for o in report.outcomes]


async def test_page_facts_equal_the_facts_of_one_member(app: App) -> None:
    program_id, ids = await _population(app)
    now = app.clock()
    async with app.db.unit_of_work() as uow:
        program = await load_program(uow, program_id)
        ranking = svc.Ranking.of(await uow.offers.spend_distribution(program_id))
        subjects = await uow.offers.active_subjects_after(program_id, "", 100, lock=False)
        page = await svc.load_facts(uow, program, subjects, now, ranking)
        alone = []
        for subject in subjects:
            # Without a ranking, one member's rank is counted in SQL (the purchase path).
            alone += await svc.load_facts(uow, program, [subject], now, None)
    assert [f.member_id for f in page] == ids
    assert page == alone
    by_id = {f.member_id: f for f in page}
    assert (by_id["a03"].top_rank, by_id["a11"].top_rank, by_id["a03"].top_members) == (1, 1, 20)
    assert by_id["a21"].top_rank == 3  # two above it
    assert by_id["a07"].top_rank == 0 and by_id["a07"].orders_12m == 0
    assert (by_id["a02"].orders_12m, by_id["a02"].spend_12m_minor) == (1, 1020)
    assert (by_id["a01"].orders_12m, by_id["a01"].spend_12m_minor) == (2, 2020)
    assert by_id["a05"].flags == {"top_customer"}
    assert by_id["a03"].tenure_years == 4 and by_id["a01"].tenure_years == 0


async def test_runs_over_many_pages_match_one_page_and_one_member_at_a_time(app: App) -> None:
    program_id, ids = await _population(app)
    rules = app.rules.rules
    now = app.clock()

    async def run(page_size: int, dry_run: bool) -> svc.RunReport:
        return await svc.run_rules(
            app.db.unit_of_work, rules, program_id, now,
            dry_run=dry_run, trigger=Trigger.DAILY, page_size=page_size,
        )  # fmt: skip

    one_page = await run(100, dry_run=True)
    pages = await run(3, dry_run=True)  # 22 members: 8 pages, the last one short
    assert _outcomes(pages) == _outcomes(one_page)
    assert pages.action_counts == one_page.action_counts
    assert pages.members_evaluated == one_page.members_evaluated == 22
    async with app.db.unit_of_work() as uow:
        program = await load_program(uow, program_id)
        alone: list[tuple[str, str, str]] = []
        for member_id in ids:
            applied = await svc.apply_rules(
                uow, program, rules, [member_id], now, Trigger.DAILY, dry_run=True
            )
            alone += [(o.member_id, o.rule_id, o.label) for o in applied.outcomes]
    assert _outcomes(pages) == alone
    labels = set(pages.action_counts)
    assert {"SET_FLAG top_customer", "CLEAR_FLAG top_customer"} <= labels
    assert {"ISSUE_OFFER birthday", "ISSUE_OFFER loyalty15"} <= labels
    assert await _counts(app, program_id) == (0, 1, 0, 0)  # dry runs wrote nothing

    real = await run(3, dry_run=False)
    planned = sum(n for k, n in pages.action_counts.items() if k.startswith("ISSUE_OFFER"))
    assert real.action_counts == pages.action_counts
    assert real.offers_issued == planned > 0
    coded = (
        pages.action_counts["ISSUE_OFFER birthday"] + pages.action_counts["ISSUE_OFFER win-back"]
    )
    assert await _counts(app, program_id) == (planned, 2, planned, coded)
    assert await _flags(app, program_id) == {
        ("a03", "top_customer"): "top-customers",
        ("a11", "top_customer"): "top-customers",
    }
    issued = {o.offer_id for o in real.outcomes if o.offer_id}
    async with app.db.engine.connect() as conn:
        o = t.offers
        rows = (
            await conn.execute(
                sa.select(o.c.offer_id, o.c.code, o.c.message, o.c.rule_id).where(
                    o.c.program_id == program_id
                )
            )
        ).all()
    assert {r.offer_id for r in rows} == issued
    codes = [r.code for r in rows if r.rule_id == "birthday"]
    assert len(set(codes)) == len(codes) and all(c.startswith("BDAY-") for c in codes)
    assert all(r.code in r.message for r in rows)

    again = await run(3, dry_run=False)
    assert again.members_evaluated == 22 and again.actions == 0 and again.offers_issued == 0
    assert await _counts(app, program_id) == (planned, 2, planned, coded)


async def test_the_report_counts_everything_and_keeps_a_bounded_sample(app: App) -> None:
    program_id, _ = await _population(app)
    full = await svc.run_rules(
        app.db.unit_of_work, app.rules.rules, program_id, app.clock(), dry_run=True, page_size=4
    )
    small = await svc.run_rules(
        app.db.unit_of_work, app.rules.rules, program_id, app.clock(), dry_run=True,
        page_size=4, sample_size=3,
    )  # fmt: skip
    assert not full.sampled and len(full.outcomes) == full.actions > 3
    assert small.sampled and small.outcomes == full.outcomes[:3]
    assert small.action_counts == full.action_counts


def _rule(text: str) -> Rule:
    return parse_rule(text, "test.yaml")


async def test_flags_change_in_rule_order_within_a_page(app: App) -> None:
    program_id = await _program(app)
    for member_id in ("b1", "b2"):
        await _member(app, program_id, member_id)
    async with app.db.unit_of_work() as uow:
        await uow.offers.set_flags(program_id, [("b1", "vip", "old")], app.clock())
        await uow.commit()
    rules = (
        # b1 holds vip: cleared, then set again (by `grant`); b2: temp set, then cleared.
        _rule("id: drop\nwhen: 'true'\nactions:\n  - clear_flag: vip\n"),
        _rule("id: grant\nwhen: 'true'\nactions:\n  - set_flag: vip\n"),
        _rule("id: tmp\nwhen: '!(\"vip\" in flags)'\nactions:\n  - set_flag: temp\n"),
        _rule("id: untmp\nwhen: '\"temp\" in flags'\nactions:\n  - clear_flag: temp\n"),
    )
    report = await svc.run_rules(app.db.unit_of_work, rules, program_id, app.clock())
    assert _outcomes(report) == [
        ("b1", "drop", "CLEAR_FLAG vip"),
        ("b1", "grant", "SET_FLAG vip"),
        ("b2", "grant", "SET_FLAG vip"),
    ]
    assert await _flags(app, program_id) == {("b1", "vip"): "grant", ("b2", "vip"): "grant"}
    rules = (rules[2], rules[3])
    async with app.db.unit_of_work() as uow:
        await uow.offers.clear_flags(program_id, [("b2", "vip")])
        await uow.commit()
    report = await svc.run_rules(app.db.unit_of_work, rules, program_id, app.clock())
    assert _outcomes(report) == [("b2", "tmp", "SET_FLAG temp"), ("b2", "untmp", "CLEAR_FLAG temp")]
    assert await _flags(app, program_id) == {("b1", "vip"): "grant"}


def _codes(*codes: str) -> Iterator[str]:
    yield from codes
    for n in itertools.count():
        yield f"BDAY-{n:04d}-XXXX"


async def test_codes_drawn_twice_or_taken_are_drawn_again(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    program_id = await _program(app)
    birthday = app.clock().date().replace(year=1990)
    for member_id in ("c1", "c2", "c3"):
        await _member(app, program_id, member_id, birth_date=birthday)
    async with app.db.unit_of_work() as uow:
        # A code already taken, by an offer of another member.
        assert await uow.offers.claim_codes(program_id, [("BDAY-TAKEN", "zz", "o-zz")])
        await uow.commit()
    rules = tuple(r for r in app.rules.rules if r.rule_id == "birthday")
    draws = _codes("BDAY-A", "BDAY-A", "BDAY-A", "BDAY-TAKEN", "BDAY-B")
    monkeypatch.setattr(svc, "new_offer_code", lambda pattern: next(draws))
    report = await svc.run_rules(app.db.unit_of_work, rules, program_id, app.clock())
    # c1 drew A; c2 drew A twice (taken in the page), then TAKEN (taken in the database),
    # so the next round drew it a code again; c3 drew B.
    codes = await _offer_codes(app, program_id)
    assert codes == {"c1": "BDAY-A", "c2": "BDAY-0000-XXXX", "c3": "BDAY-B"}
    assert report.offers_issued == 3


async def _offer_codes(app: App, program_id: str) -> dict[str, str]:
    o = t.offers
    async with app.db.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(o.c.member_id, o.c.code).where(o.c.program_id == program_id)
        )
        return {r.member_id: r.code for r in rows}


async def test_a_page_without_free_codes_is_aborted_whole(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    program_id = await _program(app)
    birthday = app.clock().date().replace(year=1990)
    for member_id in ("d1", "d2"):
        await _member(
            app, program_id, member_id, spends=(1000,), birth_date=birthday, joined_days_ago=2000
        )
    async with app.db.unit_of_work() as uow:
        assert await uow.offers.claim_codes(program_id, [("BDAY-TAKEN", "zz", "o-zz")])
        await uow.commit()
    monkeypatch.setattr(svc, "new_offer_code", lambda pattern: "BDAY-TAKEN")
    with pytest.raises(Aborted) as caught:
        await svc.run_rules(app.db.unit_of_work, app.rules.rules, program_id, app.clock())
    assert caught.value.reason == "CODE_COLLISION"
    # Nothing of the page stayed: not the loyalty15 offers, not the codes.
    assert await _counts(app, program_id) == (0, 0, 0, 1)


async def test_a_page_waits_for_a_member_a_purchase_holds(app: App) -> None:
    program_id = await _program(app)
    birthday = app.clock().date().replace(year=1990)
    await _member(app, program_id, "e1", birth_date=birthday)
    rules = app.rules.rules

    async def run() -> svc.RunReport:
        return await svc.run_rules(app.db.unit_of_work, rules, program_id, app.clock())

    async with app.db.unit_of_work() as purchase:
        locked = await purchase.accounts.lock(program_id, "e1")  # as RecordPurchase does
        running = asyncio.create_task(run())
        await asyncio.sleep(0.5)
        assert not running.done()
        # The purchase's own rule run issues the birthday offer under its lock ...
        assert locked is not None
        issued = await svc.rules_after_purchase(rules, purchase, locked, app.clock())
        await purchase.commit()
    assert [o.rule_id for o in issued] == ["birthday"]
    # ... and the page, let in after it, sees it and issues nothing twice.
    report = await asyncio.wait_for(running, 30)
    assert report.offers_issued == 0 and report.members_evaluated == 1
    assert (await _counts(app, program_id))[0] == 1


def test_ranks_follow_from_the_distribution_of_spend() -> None:
    ranking = svc.Ranking.of([(100, 1), (200, 2), (300, 1)])
    assert ranking.members == 4
    got: dict[int, Any] = {s: ranking.rank(s) for s in (300, 250, 200, 100, 50, 0, -5)}
    assert got == {300: 1, 250: 2, 200: 2, 100: 4, 50: 5, 0: 0, -5: 0}
    assert svc.Ranking.of([]).rank(10) == 1 and svc.Ranking.of([]).members == 0


async def test_a_segment_run_pages_through_the_segment(app: App) -> None:
    program_id, _ = await _population(app)
    async with app.db.unit_of_work() as uow:
        counts = await uow.segments.segment_counts(program_id)
    segment, size = max(counts.items(), key=lambda kv: kv[1])
    assert size > 2
    whole = await svc.run_rules(
        app.db.unit_of_work, app.rules.rules, program_id, app.clock(), segment_id=segment,
        dry_run=True, page_size=100,
    )  # fmt: skip
    paged = await svc.run_rules(
        app.db.unit_of_work, app.rules.rules, program_id, app.clock(), segment_id=segment,
        dry_run=True, page_size=2,
    )  # fmt: skip
    assert whole.members_evaluated == paged.members_evaluated == size
    assert _outcomes(whole) == _outcomes(paged)


async def test_the_purchase_hook_sees_the_member_as_a_fresh_read_would(app: App) -> None:
    """The hook builds its subject from the account the purchase holds, without a query:
    it must equal what `subjects` reads once the purchase is written."""
    program_id = await _program(app)
    birthday = app.clock().date().replace(year=1988)
    await _member(app, program_id, "h1", spends=(2_500,), birth_date=birthday)
    now = app.clock()
    seen: list[svc.RuleSubject] = []

    async def hook(uow: Any, locked: Any, at: Any) -> list[Any]:
        seen.append(svc.subject_of(locked))
        return await svc.rules_after_purchase(app.rules.rules, uow, locked, at)

    async with app.db.unit_of_work() as uow:
        cmd = RecordPurchase(program_id, "h1", uid("o"), now, "web", "EUR", 4_000)
        await record_purchase(uow, cmd, now, hook)
        [read] = await uow.offers.subjects(program_id, ["h1"], lock=False)
        await uow.commit()
    assert seen == [read]
    assert (read.order_count, read.total_spend_minor, read.given_name) == (2, 6_500, "H1")
    assert read.birth_date == birthday and read.last_purchase_time == now
