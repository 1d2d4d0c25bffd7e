"""Schema migrations (Alembic), run on an async engine's connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from loyalty_engine.storage.database import Database

_SCRIPTS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    """The Alembic configuration, built in code: no alembic.ini to keep in step."""
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    """Apply pending migrations."""
    config = alembic_config()

    def run(sync_conn: Any) -> None:
        config.attributes["connection"] = sync_conn
        command.upgrade(config, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(run)


async def pending_revisions(db: Database) -> list[str]:
    """Revisions not yet applied to the database."""
    script = ScriptDirectory.from_config(alembic_config())

    def current(sync_conn: Any) -> set[str]:
        return set(MigrationContext.configure(sync_conn).get_current_heads())

    async with db.engine.connect() as conn:
        heads = await conn.run_sync(current)
    pending = []
    for rev in script.walk_revisions():
        if rev.revision in heads:
            break
        pending.append(rev.revision)
    return pending
