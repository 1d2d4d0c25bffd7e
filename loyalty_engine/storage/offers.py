"""Member flags, offers, their codes, events and usage counters, in SQLAlchemy Core.

Uses are taken with conditional updates (`SET uses = uses + 1 WHERE uses < limit`): the
row lock the UPDATE takes (PostgreSQL) or the single writer (SQLite) makes the check and
the increment one step, so two redemptions of the last use can never both succeed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from loyalty_engine.domain.members import MemberState
from loyalty_engine.domain.offers import Offer, OfferKind, OfferState
from loyalty_engine.domain.rules import PastOffers
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.repositories import _Repository


@dataclass(frozen=True)
class RuleSubject:
    """A member as the rules see them: the profile and the account's running statistics."""

    member_id: str
    state: MemberState
    given_name: str | None
    has_email: bool
    birth_date: date | None
    join_time: datetime | None
    create_time: datetime | None
    marketing_consent: bool
    tier_id: str | None
    order_count: int
    total_spend_minor: int
    last_purchase_time: datetime | None


def spanning(column: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """`column BETWEEN :lo AND :hi`: the range of member ids a page spans, for the page's
    queries (callers keep its ids); `span` gives the parameters.

    A page is a run of ids in order (or a segment's, spread a little wider): a range is one
    index range scan. A long IN list of parameters is not: PostgreSQL's plan for it cannot
    hash the list, and on a table without fresh statistics it compares every row with every
    id (half a second a page at 20,000 members, growing with the table). The statements are
    built once and bound per call: building one costs more CPU than a page of one member.
    """
    return column.between(sa.bindparam("lo"), sa.bindparam("hi"))


def span(program_id: str, member_ids: Sequence[str]) -> dict[str, Any]:
    """The parameters of a statement over a program's page of members (`spanning`)."""
    return {"program_id": program_id, "lo": min(member_ids), "hi": max(member_ids)}


def _in_program(column: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    return column == sa.bindparam("program_id")


_flags_of = sa.select(t.member_flags.c.member_id, t.member_flags.c.flag).where(
    _in_program(t.member_flags.c.program_id), spanning(t.member_flags.c.member_id)
)
_past_offers_of = sa.select(
    t.offers.c.member_id, t.offers.c.rule_id, t.offers.c.period_key, t.offers.c.create_time
).where(_in_program(t.offers.c.program_id), spanning(t.offers.c.member_id))


@functools.cache
def _subjects_of(dialect: str, lock: bool) -> sa.Select[Any]:
    a = t.member_accounts
    return _subjects_statement(dialect, lock).where(
        spanning(a.c.member_id), a.c.member_id.in_(sa.bindparam("ids", expanding=True))
    )


def _subjects_statement(dialect: str, lock: bool) -> sa.Select[Any]:
    m, a = t.members, t.member_accounts
    stmt = (
        sa.select(
            m.c.member_id,
            m.c.state,
            m.c.given_name,
            m.c.email,
            m.c.birth_date,
            m.c.join_time,
            m.c.create_time,
            m.c.marketing_consent,
            a.c.tier_id,
            a.c.order_count,
            a.c.total_spend_minor,
            a.c.last_purchase_time,
        )
        .select_from(
            a.join(m, sa.and_(m.c.program_id == a.c.program_id, m.c.member_id == a.c.member_id))
        )
        .where(_in_program(a.c.program_id))
        .order_by(a.c.member_id)
    )
    # The same row lock as every write of a member's account (purchases, redemptions),
    # taken in member id order so that two runs over overlapping pages cannot deadlock.
    # SQLite needs none: BEGIN IMMEDIATE already serializes writers.
    if lock and dialect == "postgresql":
        stmt = stmt.with_for_update(of=a)
    return stmt


def _subject_from_row(row: Any) -> RuleSubject:
    return RuleSubject(
        member_id=row.member_id,
        state=MemberState(row.state),
        given_name=row.given_name,
        has_email=bool(row.email),
        birth_date=row.birth_date,
        join_time=row.join_time,
        create_time=row.create_time,
        marketing_consent=row.marketing_consent,
        tier_id=row.tier_id,
        order_count=row.order_count,
        total_spend_minor=row.total_spend_minor,
        last_purchase_time=row.last_purchase_time,
    )


def _offer_values(program_id: str, offer: Offer) -> dict[str, Any]:
    return {
        "program_id": program_id,
        "member_id": offer.member_id,
        "offer_id": offer.offer_id,
        "rule_id": offer.rule_id,
        "period_key": offer.period_key,
        "kind": offer.kind.value,
        "code": offer.code,
        "message": offer.message,
        "percent_off": offer.percent_off,
        "amount_off_minor": offer.amount_off_minor,
        "currency_code": offer.currency_code,
        "bonus_points": offer.bonus_points,
        "sku": offer.sku,
        "min_order_minor": offer.min_order_minor,
        "uses_per_member": offer.uses_per_member,
        "total_uses": offer.total_uses,
        "uses": offer.uses,
        "state": offer.state.value,
        "start_time": offer.start_time,
        "end_time": offer.end_time,
        "create_time": offer.create_time,
    }


def _offer_from_row(row: Any) -> Offer:
    return Offer(
        offer_id=row.offer_id,
        member_id=row.member_id,
        rule_id=row.rule_id,
        kind=OfferKind(row.kind),
        code=row.code,
        message=row.message,
        start_time=row.start_time,
        end_time=row.end_time,
        period_key=row.period_key,
        create_time=row.create_time,
        percent_off=row.percent_off,
        amount_off_minor=row.amount_off_minor,
        currency_code=row.currency_code,
        bonus_points=row.bonus_points,
        sku=row.sku,
        min_order_minor=row.min_order_minor,
        uses_per_member=row.uses_per_member,
        total_uses=row.total_uses,
        uses=row.uses,
        state=OfferState(row.state),
        redeem_time=row.redeem_time,
        revoke_time=row.revoke_time,
    )


class OfferRepository(_Repository):
    """Flags and offers of members."""

    # --- flags -----------------------------------------------------------------------------

    async def flags(self, program_id: str, member_id: str) -> set[str]:
        """The flags a member holds."""
        return (await self.flags_of(program_id, [member_id])).get(member_id, set())

    async def flags_of(self, program_id: str, member_ids: Sequence[str]) -> dict[str, set[str]]:
        """The flags each of some members holds (members without flags are left out)."""
        if not member_ids:
            return {}
        rows = await self.conn.execute(_flags_of, span(program_id, member_ids))
        wanted, held = set(member_ids), dict[str, set[str]]()
        for r in rows:
            if r.member_id in wanted:
                held.setdefault(r.member_id, set()).add(r.flag)
        return held

    async def set_flags(
        self, program_id: str, flags: Iterable[tuple[str, str, str]], now: datetime
    ) -> None:
        """Set flags, given as (member id, flag, rule id); a flag already set is kept."""
        rows = [
            {
                "program_id": program_id,
                "member_id": member_id,
                "flag": flag,
                "rule_id": rule_id,
                "set_time": now,
            }
            for member_id, flag, rule_id in flags
        ]
        if rows:
            await self.conn.execute(self.insert_ignoring_conflicts(t.member_flags), rows)

    async def clear_flags(self, program_id: str, flags: Iterable[tuple[str, str]]) -> None:
        """Clear flags, given as (member id, flag): one statement per flag."""
        by_flag: dict[str, list[str]] = {}
        for member_id, flag in flags:
            by_flag.setdefault(flag, []).append(member_id)
        f = t.member_flags
        for flag, member_ids in sorted(by_flag.items()):
            await self.conn.execute(
                f.delete().where(
                    _in_program(f.c.program_id),
                    spanning(f.c.member_id),
                    f.c.member_id.in_(member_ids),
                    f.c.flag == flag,
                ),
                span(program_id, member_ids),
            )

    # --- the members a rule run looks at ---------------------------------------------------

    async def subjects(
        self, program_id: str, member_ids: Sequence[str], *, lock: bool
    ) -> list[RuleSubject]:
        """Some members (any state) by id, in id order; `lock` takes their account rows."""
        if not member_ids:
            return []
        rows = await self.conn.execute(
            _subjects_of(self.dialect, lock), {**span(program_id, member_ids), "ids": member_ids}
        )
        return [_subject_from_row(r) for r in rows]

    async def active_subjects_after(
        self, program_id: str, after_id: str, limit: int, *, lock: bool
    ) -> list[RuleSubject]:
        """The next page of active members by id after `after_id`; `lock` takes their rows."""
        stmt = (
            _subjects_statement(self.dialect, lock)
            .where(
                t.member_accounts.c.member_id > after_id,
                # Said of both tables, so that neither is read from its start.
                t.members.c.member_id > after_id,
                t.members.c.state == MemberState.ACTIVE.value,
            )
            .limit(limit)
        )
        rows = await self.conn.execute(stmt, {"program_id": program_id})
        return [_subject_from_row(r) for r in rows]

    # --- ranks -----------------------------------------------------------------------------

    async def spend_rank(self, program_id: str, member_id: str) -> tuple[int, int]:
        """The member's rank by 12-month spend (0 without spend) and members with spend."""
        s = t.member_scores
        mine = (
            await self.conn.execute(
                sa.select(s.c.spend_12m).where(
                    s.c.program_id == program_id, s.c.member_id == member_id
                )
            )
        ).scalar()
        members = (
            await self.conn.execute(
                sa.select(sa.func.count()).where(
                    s.c.program_id == program_id, s.c.spend_12m > t.RANKS
                )
            )
        ).scalar_one()
        if not mine or mine <= 0:
            return 0, int(members)
        above = (
            await self.conn.execute(
                sa.select(sa.func.count()).where(s.c.program_id == program_id, s.c.spend_12m > mine)
            )
        ).scalar_one()
        return int(above) + 1, int(members)

    async def spend_distribution(self, program_id: str) -> list[tuple[int, int]]:
        """How many members have each 12-month spend (as scored), for spend > 0, ascending.

        Compact where a map of every member's rank is not: the ranks of a page of members
        follow from it and their own spend.
        """
        s = t.member_scores
        rows = await self.conn.execute(
            sa.select(s.c.spend_12m, sa.func.count())
            .where(s.c.program_id == program_id, s.c.spend_12m > t.RANKS)
            .group_by(s.c.spend_12m)
            .order_by(s.c.spend_12m)
        )
        return [(int(r[0]), int(r[1])) for r in rows]

    # --- offers ----------------------------------------------------------------------------

    async def past_offers_of(
        self, program_id: str, member_ids: Sequence[str]
    ) -> dict[str, dict[str, PastOffers]]:
        """Per member and rule: the latest issue time and the periods it used."""
        if not member_ids:
            return {}
        rows = await self.conn.execute(_past_offers_of, span(program_id, member_ids))
        wanted, seen = set(member_ids), dict[tuple[str, str], tuple[datetime, set[str]]]()
        for row in rows:
            if row.member_id not in wanted:
                continue
            key = (row.member_id, row.rule_id)
            last, keys = seen.get(key, (row.create_time, set()))
            keys.add(row.period_key)
            seen[key] = (max(last, row.create_time), keys)
        past: dict[str, dict[str, PastOffers]] = {}
        for (member_id, rule_id), (last, keys) in seen.items():
            past.setdefault(member_id, {})[rule_id] = PastOffers(last, frozenset(keys))
        return past

    async def claim_codes(
        self, program_id: str, claims: Iterable[tuple[str, str, str]]
    ) -> set[str]:
        """Claim unique codes, given as (code, member id, offer id); the codes claimed.

        A code missing from the answer was taken (the rare collision): draw another.
        """
        rows = [
            {"program_id": program_id, "code": code, "member_id": member_id, "offer_id": offer_id}
            for code, member_id, offer_id in claims
        ]
        if not rows:
            return set()
        c = t.offer_codes
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(c).returning(c.c.code), rows
        )
        return {r.code for r in result}

    async def release_codes(self, program_id: str, claims: Iterable[tuple[str, str]]) -> None:
        """Free codes, given as (code, offer id), claimed for offers that were not issued."""
        c = t.offer_codes
        rows = [{"p": program_id, "c": code, "o": offer_id} for code, offer_id in claims]
        if rows:
            await self.conn.execute(
                c.delete().where(
                    c.c.program_id == sa.bindparam("p"),
                    c.c.code == sa.bindparam("c"),
                    c.c.offer_id == sa.bindparam("o"),
                ),
                rows,
            )

    async def add_many(self, program_id: str, offers: Sequence[Offer]) -> set[str]:
        """Insert offers and their ISSUED events; the ids inserted (a taken period is skipped)."""
        if not offers:
            return set()
        o = t.offers
        rows = await self.conn.execute(
            self.insert_ignoring_conflicts(o).returning(o.c.offer_id),
            [_offer_values(program_id, offer) for offer in offers],
        )
        inserted = {r.offer_id for r in rows}
        if inserted:
            # A new offer has no events yet: its ISSUED event is the first.
            await self.conn.execute(
                t.offer_events.insert(),
                [
                    {
                        "program_id": program_id,
                        "member_id": offer.member_id,
                        "offer_id": offer.offer_id,
                        "seq": 1,
                        "state": OfferState.ISSUED.value,
                        "event_time": offer.create_time,
                        "order_id": "",
                        "discount_minor": 0,
                    }
                    for offer in offers
                    if offer.offer_id in inserted
                ],
            )
        return inserted

    async def add_event(
        self,
        program_id: str,
        offer: Offer,
        state: OfferState,
        when: datetime,
        order_id: str = "",
        discount_minor: int = 0,
    ) -> None:
        """Record a step of the offer's life."""
        e = t.offer_events
        key = (
            (e.c.program_id == program_id)
            & (e.c.member_id == offer.member_id)
            & (e.c.offer_id == offer.offer_id)
        )
        next_seq = (
            sa.select(sa.func.coalesce(sa.func.max(e.c.seq), 0) + 1).where(key).scalar_subquery()
        )
        await self.conn.execute(
            e.insert().values(
                program_id=program_id,
                member_id=offer.member_id,
                offer_id=offer.offer_id,
                seq=next_seq,
                state=state.value,
                event_time=when,
                order_id=order_id,
                discount_minor=discount_minor,
            )
        )

    async def events(self, program_id: str, offer: Offer) -> list[tuple[OfferState, datetime]]:
        """The offer's recorded steps, oldest first."""
        e = t.offer_events
        rows = await self.conn.execute(
            sa.select(e.c.state, e.c.event_time)
            .where(
                e.c.program_id == program_id,
                e.c.member_id == offer.member_id,
                e.c.offer_id == offer.offer_id,
            )
            .order_by(e.c.seq)
        )
        return [(OfferState(r.state), r.event_time) for r in rows]

    async def get(self, program_id: str, offer_id: str) -> Offer | None:
        """An offer by id."""
        o = t.offers
        row = (
            await self.conn.execute(
                sa.select(o).where(o.c.program_id == program_id, o.c.offer_id == offer_id)
            )
        ).first()
        return _offer_from_row(row) if row else None

    async def find_by_code(self, program_id: str, member_id: str, code: str) -> Offer | None:
        """The member's offer with this code: the one still issued, else the latest."""
        o = t.offers
        row = (
            await self.conn.execute(
                sa.select(o)
                .where(o.c.program_id == program_id, o.c.member_id == member_id, o.c.code == code)
                .order_by(
                    sa.case((o.c.state == OfferState.ISSUED.value, 0), else_=1),
                    o.c.end_time.desc(),
                )
                .limit(1)
            )
        ).first()
        return _offer_from_row(row) if row else None

    async def list_for_member(
        self,
        program_id: str,
        member_id: str,
        *,
        active_at: datetime | None,
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Offer]:
        """The member's offers, newest first; `active_at` keeps only usable ones."""
        o = t.offers
        stmt = sa.select(o).where(o.c.program_id == program_id, o.c.member_id == member_id)
        if active_at is not None:
            stmt = stmt.where(
                o.c.state == OfferState.ISSUED.value,
                o.c.end_time > active_at,
                o.c.uses < o.c.uses_per_member,
            )
        if before is not None:
            stmt = stmt.where(
                sa.or_(
                    o.c.create_time < before[0],
                    sa.and_(o.c.create_time == before[0], o.c.offer_id < before[1]),
                )
            )
        rows = await self.conn.execute(
            stmt.order_by(o.c.create_time.desc(), o.c.offer_id.desc()).limit(limit)
        )
        return [_offer_from_row(r) for r in rows]

    async def take_member_use(
        self, program_id: str, offer: Offer, now: datetime, used_up: bool
    ) -> bool:
        """Take one of the member's uses if one is left; False if none is."""
        o = t.offers
        values: dict[str, Any] = {"uses": o.c.uses + 1}
        if used_up:
            values.update(state=OfferState.REDEEMED.value, redeem_time=now)
        result = await self.conn.execute(
            o.update()
            .where(
                o.c.program_id == program_id,
                o.c.member_id == offer.member_id,
                o.c.offer_id == offer.offer_id,
                o.c.state == OfferState.ISSUED.value,
                o.c.uses < o.c.uses_per_member,
            )
            .values(**values)
        )
        return bool(result.rowcount)

    async def total_uses(self, program_id: str, rule_id: str) -> int:
        """Uses of a rule's offers over all members."""
        u = t.offer_rule_usage
        value = (
            await self.conn.execute(
                sa.select(u.c.uses).where(u.c.program_id == program_id, u.c.rule_id == rule_id)
            )
        ).scalar()
        return int(value or 0)

    async def take_total_use(self, program_id: str, rule_id: str, limit: int) -> bool:
        """Take one of a rule's total uses if one is left; False if none is."""
        u = t.offer_rule_usage
        await self.conn.execute(
            self.insert_ignoring_conflicts(u).values(program_id=program_id, rule_id=rule_id, uses=0)
        )
        result = await self.conn.execute(
            u.update()
            .where(u.c.program_id == program_id, u.c.rule_id == rule_id, u.c.uses < limit)
            .values(uses=u.c.uses + 1)
        )
        return bool(result.rowcount)

    async def revoke(self, program_id: str, offer: Offer, now: datetime) -> None:
        """Mark an offer revoked."""
        o = t.offers
        await self.conn.execute(
            o.update()
            .where(
                o.c.program_id == program_id,
                o.c.member_id == offer.member_id,
                o.c.offer_id == offer.offer_id,
            )
            .values(state=OfferState.REVOKED.value, revoke_time=now)
        )
