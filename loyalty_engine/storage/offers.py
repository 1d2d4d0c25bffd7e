"""Member flags, offers, their codes, events and usage counters, in SQLAlchemy Core.

Uses are taken with conditional updates (`SET uses = uses + 1 WHERE uses < limit`): the
row lock the UPDATE takes (PostgreSQL) or the single writer (SQLite) makes the check and
the increment one step, so two redemptions of the last use can never both succeed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from loyalty_engine.domain.offers import Offer, OfferKind, OfferState
from loyalty_engine.domain.rules import PastOffers
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.repositories import _Repository


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
        f = t.member_flags
        rows = await self.conn.execute(
            sa.select(f.c.flag).where(f.c.program_id == program_id, f.c.member_id == member_id)
        )
        return {r.flag for r in rows}

    async def set_flag(
        self, program_id: str, member_id: str, flag: str, rule_id: str, now: datetime
    ) -> None:
        """Set a flag (no-op if it is set)."""
        await self.conn.execute(
            self.insert_ignoring_conflicts(t.member_flags).values(
                program_id=program_id, member_id=member_id, flag=flag, rule_id=rule_id, set_time=now
            )
        )

    async def clear_flag(self, program_id: str, member_id: str, flag: str) -> None:
        """Clear a flag."""
        f = t.member_flags
        await self.conn.execute(
            f.delete().where(
                f.c.program_id == program_id, f.c.member_id == member_id, f.c.flag == flag
            )
        )

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
                sa.select(sa.func.count()).where(s.c.program_id == program_id, s.c.spend_12m > 0)
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

    async def spend_ranks(self, program_id: str) -> dict[str, int]:
        """Every member with 12-month spend and their rank (ties share the best rank)."""
        s = t.member_scores
        rows = await self.conn.execute(
            sa.select(s.c.member_id, s.c.spend_12m)
            .where(s.c.program_id == program_id, s.c.spend_12m > 0)
            .order_by(s.c.spend_12m.desc())
        )
        ranks: dict[str, int] = {}
        previous: tuple[int, int] | None = None
        for position, row in enumerate(rows, start=1):
            rank = previous[1] if previous and previous[0] == row.spend_12m else position
            ranks[row.member_id] = rank
            previous = (row.spend_12m, rank)
        return ranks

    # --- offers ----------------------------------------------------------------------------

    async def past_offers(self, program_id: str, member_id: str) -> dict[str, PastOffers]:
        """Per rule, when it last issued an offer to the member and the periods it used."""
        o = t.offers
        rows = await self.conn.execute(
            sa.select(o.c.rule_id, o.c.period_key, o.c.create_time).where(
                o.c.program_id == program_id, o.c.member_id == member_id
            )
        )
        by_rule: dict[str, tuple[datetime, set[str]]] = {}
        for row in rows:
            last, keys = by_rule.get(row.rule_id, (row.create_time, set()))
            keys.add(row.period_key)
            by_rule[row.rule_id] = (max(last, row.create_time), keys)
        return {rule: PastOffers(last, frozenset(keys)) for rule, (last, keys) in by_rule.items()}

    async def claim_code(self, program_id: str, code: str, member_id: str, offer_id: str) -> bool:
        """Claim a unique code; False on the (rare) collision."""
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.offer_codes).values(
                program_id=program_id, code=code, member_id=member_id, offer_id=offer_id
            )
        )
        return bool(result.rowcount)

    async def add(self, program_id: str, offer: Offer) -> bool:
        """Insert an offer and its ISSUED event; False if the rule's period is taken."""
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.offers).values(
                program_id=program_id,
                member_id=offer.member_id,
                offer_id=offer.offer_id,
                rule_id=offer.rule_id,
                period_key=offer.period_key,
                kind=offer.kind.value,
                code=offer.code,
                message=offer.message,
                percent_off=offer.percent_off,
                amount_off_minor=offer.amount_off_minor,
                currency_code=offer.currency_code,
                bonus_points=offer.bonus_points,
                sku=offer.sku,
                min_order_minor=offer.min_order_minor,
                uses_per_member=offer.uses_per_member,
                total_uses=offer.total_uses,
                uses=offer.uses,
                state=offer.state.value,
                start_time=offer.start_time,
                end_time=offer.end_time,
                create_time=offer.create_time,
            )
        )
        if not result.rowcount:
            return False
        await self.add_event(program_id, offer, OfferState.ISSUED, offer.create_time)
        return True

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
