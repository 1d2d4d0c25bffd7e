"""API keys in SQLAlchemy Core."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from loyalty_engine.domain.keys import ApiKey, Scope
from loyalty_engine.storage import schema as t
from loyalty_engine.storage.repositories import _Repository


def _key_from_row(row: Any) -> ApiKey:
    return ApiKey(
        program_id=row.program_id,
        key_id=row.key_id,
        label=row.label,
        scopes=frozenset(Scope(s) for s in row.scopes),
        secret_hash=row.secret_hash,
        create_time=row.create_time,
        expire_time=row.expire_time,
        revoke_time=row.revoke_time,
    )


class ApiKeyRepository(_Repository):
    """Stored API keys."""

    async def add(self, key: ApiKey) -> None:
        """Insert a key."""
        await self.conn.execute(
            t.api_keys.insert().values(
                program_id=key.program_id,
                key_id=key.key_id,
                label=key.label,
                scopes=sorted(s.value for s in key.scopes),
                secret_hash=key.secret_hash,
                create_time=key.create_time,
                expire_time=key.expire_time,
                revoke_time=key.revoke_time,
            )
        )

    async def by_id(self, key_id: str) -> ApiKey | None:
        """A key by its id, whatever its program (authentication looks keys up this way)."""
        row = (
            await self.conn.execute(sa.select(t.api_keys).where(t.api_keys.c.key_id == key_id))
        ).first()
        return _key_from_row(row) if row else None

    async def list_after(self, program_id: str, after_id: str, limit: int) -> list[ApiKey]:
        """A program's keys by id."""
        k = t.api_keys
        rows = await self.conn.execute(
            sa.select(k)
            .where(k.c.program_id == program_id, k.c.key_id > after_id)
            .order_by(k.c.key_id)
            .limit(limit)
        )
        return [_key_from_row(r) for r in rows]

    async def revoke(self, program_id: str, key_id: str, now: datetime) -> None:
        """Mark a key revoked (the first revocation time stays)."""
        k = t.api_keys
        await self.conn.execute(
            k.update()
            .where(k.c.program_id == program_id, k.c.key_id == key_id, k.c.revoke_time.is_(None))
            .values(revoke_time=now)
        )
