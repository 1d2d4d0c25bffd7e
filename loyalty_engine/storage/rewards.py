"""The rewards catalog and redemptions, in SQLAlchemy Core."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from loyalty_engine.domain.rewards import (
    Redemption,
    RedemptionEvent,
    RedemptionState,
    Reward,
    RewardKind,
    RewardState,
)
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.repositories import _Repository

# Confirmed and fulfilled redemptions count against a member's per-reward limit, and so
# do holds still in force.
_COUNTED = (RedemptionState.CONFIRMED.value, RedemptionState.FULFILLED.value)


def _reward_from_row(row: Any) -> Reward:
    return Reward(
        reward_id=row.reward_id,
        display_name=row.display_name,
        description=row.description,
        points_cost=row.points_cost,
        kind=RewardKind(row.kind),
        discount_minor=row.discount_minor,
        discount_currency=row.discount_currency,
        discount_percent=row.discount_percent,
        sku=row.sku,
        min_tier_id=row.min_tier_id,
        start_time=row.start_time,
        end_time=row.end_time,
        limit_per_member=row.limit_per_member,
        stock=row.stock,
        state=RewardState(row.state),
    )


def _reward_values(r: Reward) -> dict[str, Any]:
    return {
        "display_name": r.display_name,
        "description": r.description,
        "points_cost": r.points_cost,
        "kind": r.kind.value,
        "discount_minor": r.discount_minor,
        "discount_currency": r.discount_currency,
        "discount_percent": r.discount_percent,
        "sku": r.sku,
        "min_tier_id": r.min_tier_id,
        "start_time": r.start_time,
        "end_time": r.end_time,
        "limit_per_member": r.limit_per_member,
        "stock": r.stock,
        "state": r.state.value,
    }


class RewardRepository(_Repository):
    """Rewards, redemptions, their events and voucher codes."""

    async def add(self, program_id: str, reward: Reward, now: datetime) -> bool:
        """Insert a reward; False if its id is taken."""
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.rewards).values(
                program_id=program_id,
                reward_id=reward.reward_id,
                create_time=now,
                update_time=now,
                **_reward_values(reward),
            )
        )
        return bool(result.rowcount)

    async def get(self, program_id: str, reward_id: str, *, lock: bool = False) -> Reward | None:
        """A reward; `lock` takes its row lock (PostgreSQL) to serialize stock changes."""
        stmt = sa.select(t.rewards).where(
            t.rewards.c.program_id == program_id, t.rewards.c.reward_id == reward_id
        )
        if lock and self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        row = (await self.conn.execute(stmt)).first()
        return _reward_from_row(row) if row else None

    async def list_after(
        self, program_id: str, after_id: str, limit: int, *, active_only: bool = False
    ) -> list[Reward]:
        """Rewards by id after `after_id`; `active_only` leaves archived ones out."""
        stmt = sa.select(t.rewards).where(
            t.rewards.c.program_id == program_id, t.rewards.c.reward_id > after_id
        )
        if active_only:
            stmt = stmt.where(t.rewards.c.state == RewardState.ACTIVE.value)
        rows = await self.conn.execute(stmt.order_by(t.rewards.c.reward_id).limit(limit))
        return [_reward_from_row(r) for r in rows]

    async def update(self, program_id: str, reward: Reward, now: datetime) -> None:
        """Overwrite a reward."""
        await self.conn.execute(
            t.rewards.update()
            .where(t.rewards.c.program_id == program_id, t.rewards.c.reward_id == reward.reward_id)
            .values(update_time=now, **_reward_values(reward))
        )

    async def change_stock(self, program_id: str, reward_id: str, delta: int) -> None:
        """Add `delta` to a limited reward's stock (no-op for unlimited)."""
        r = t.rewards
        await self.conn.execute(
            r.update()
            .where(r.c.program_id == program_id, r.c.reward_id == reward_id, r.c.stock.is_not(None))
            .values(stock=r.c.stock + delta)
        )

    async def active_holds(self, program_id: str, reward_id: str, now: datetime) -> int:
        """Units held by checkouts still in force."""
        r = t.redemptions
        count = (
            await self.conn.execute(
                sa.select(sa.func.count()).where(
                    r.c.program_id == program_id,
                    r.c.reward_id == reward_id,
                    r.c.state == RedemptionState.RESERVED.value,
                    r.c.expire_time > now,
                )
            )
        ).scalar_one()
        return int(count)

    async def member_redemption_counts(
        self, program_id: str, member_id: str, now: datetime
    ) -> dict[str, int]:
        """Per reward, the member's holds in force plus confirmed and fulfilled redemptions."""
        r = t.redemptions
        rows = await self.conn.execute(
            sa.select(r.c.reward_id, sa.func.count())
            .where(
                r.c.program_id == program_id,
                r.c.member_id == member_id,
                r.c.reward_id.is_not(None),
                sa.or_(
                    r.c.state.in_(_COUNTED),
                    sa.and_(r.c.state == RedemptionState.RESERVED.value, r.c.expire_time > now),
                ),
            )
            .group_by(r.c.reward_id)
        )
        return {row[0]: int(row[1]) for row in rows}

    async def member_holds(self, program_id: str, member_id: str) -> list[Redemption]:
        """The member's redemptions still in RESERVED state (in force or run out)."""
        r = t.redemptions
        rows = await self.conn.execute(
            sa.select(r).where(
                r.c.program_id == program_id,
                r.c.member_id == member_id,
                r.c.state == RedemptionState.RESERVED.value,
            )
        )
        return [_redemption_from_row(row) for row in rows]

    async def claim_voucher(
        self, program_id: str, code: str, member_id: str, redemption_id: str
    ) -> bool:
        """Claim a voucher code; False on the (rare) collision."""
        result = await self.conn.execute(
            self.insert_ignoring_conflicts(t.voucher_codes).values(
                program_id=program_id, code=code, member_id=member_id, redemption_id=redemption_id
            )
        )
        return bool(result.rowcount)

    async def add_redemption(self, program_id: str, member_id: str, redemption: Redemption) -> None:
        """Insert a redemption and its first event."""
        await self.conn.execute(
            t.redemptions.insert().values(
                program_id=program_id,
                member_id=member_id,
                redemption_id=redemption.redemption_id,
                **_redemption_values(redemption),
            )
        )
        for event in redemption.events:
            await self._append_event(program_id, member_id, redemption.redemption_id, event)

    async def save_state_change(
        self, program_id: str, member_id: str, redemption: Redemption
    ) -> None:
        """Persist a redemption's new state and the event that recorded it."""
        r = t.redemptions
        await self.conn.execute(
            r.update()
            .where(
                r.c.program_id == program_id,
                r.c.member_id == member_id,
                r.c.redemption_id == redemption.redemption_id,
            )
            .values(**_redemption_values(redemption))
        )
        await self._append_event(
            program_id, member_id, redemption.redemption_id, redemption.events[-1]
        )

    async def _append_event(
        self, program_id: str, member_id: str, redemption_id: str, event: RedemptionEvent
    ) -> None:
        e = t.redemption_events
        key = (
            (e.c.program_id == program_id)
            & (e.c.member_id == member_id)
            & (e.c.redemption_id == redemption_id)
        )
        next_seq = (
            sa.select(sa.func.coalesce(sa.func.max(e.c.seq), 0) + 1).where(key).scalar_subquery()
        )
        await self.conn.execute(
            e.insert().values(
                program_id=program_id,
                member_id=member_id,
                redemption_id=redemption_id,
                seq=next_seq,
                state=event.state.value,
                event_time=event.time,
            )
        )

    async def get_redemption(
        self, program_id: str, member_id: str, redemption_id: str
    ) -> Redemption | None:
        """A redemption with its events."""
        r = t.redemptions
        row = (
            await self.conn.execute(
                sa.select(r).where(
                    r.c.program_id == program_id,
                    r.c.member_id == member_id,
                    r.c.redemption_id == redemption_id,
                )
            )
        ).first()
        if row is None:
            return None
        redemption = _redemption_from_row(row)
        e = t.redemption_events
        events = await self.conn.execute(
            sa.select(e)
            .where(
                e.c.program_id == program_id,
                e.c.member_id == member_id,
                e.c.redemption_id == redemption_id,
            )
            .order_by(e.c.seq)
        )
        redemption.events = [
            RedemptionEvent(RedemptionState(ev.state), ev.event_time) for ev in events
        ]
        return redemption

    async def events_of(
        self, program_id: str, member_id: str, redemption_ids: list[str]
    ) -> dict[str, list[RedemptionEvent]]:
        """The histories of several redemptions of one member, in one query."""
        if not redemption_ids:
            return {}
        e = t.redemption_events
        rows = await self.conn.execute(
            sa.select(e)
            .where(
                e.c.program_id == program_id,
                e.c.member_id == member_id,
                e.c.redemption_id.in_(redemption_ids),
            )
            .order_by(e.c.redemption_id, e.c.seq)
        )
        events: dict[str, list[RedemptionEvent]] = {}
        for row in rows:
            events.setdefault(row.redemption_id, []).append(
                RedemptionEvent(RedemptionState(row.state), row.event_time)
            )
        return events

    async def list_redemptions(
        self, program_id: str, member_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[Redemption]:
        """The member's redemptions, newest first (events are loaded by `events_of`)."""
        r = t.redemptions
        stmt = sa.select(r).where(r.c.program_id == program_id, r.c.member_id == member_id)
        if before is not None:
            stmt = stmt.where(
                sa.or_(
                    r.c.create_time < before[0],
                    sa.and_(r.c.create_time == before[0], r.c.redemption_id < before[1]),
                )
            )
        rows = await self.conn.execute(
            stmt.order_by(r.c.create_time.desc(), r.c.redemption_id.desc()).limit(limit)
        )
        return [_redemption_from_row(row) for row in rows]


def _redemption_from_row(row: Any) -> Redemption:
    return Redemption(
        redemption_id=row.redemption_id,
        reward_id=row.reward_id,
        points=row.points,
        state=RedemptionState(row.state),
        create_time=row.create_time,
        expire_time=row.expire_time,
        voucher_code=row.voucher_code,
        order_id=row.order_id,
        discount_minor=row.discount_minor,
        currency_code=row.currency_code,
    )


def _redemption_values(r: Redemption) -> dict[str, Any]:
    return {
        "reward_id": r.reward_id,
        "points": r.points,
        "state": r.state.value,
        "create_time": r.create_time,
        "expire_time": r.expire_time,
        "voucher_code": r.voucher_code,
        "order_id": r.order_id,
        "discount_minor": r.discount_minor,
        "currency_code": r.currency_code,
    }
