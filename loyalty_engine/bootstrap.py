"""Wiring: builds the database and the clock once, at start-up, from the settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from loyalty_engine.api.auth import Authenticator
from loyalty_engine.api.telemetry import Telemetry
from loyalty_engine.config import Settings
from loyalty_engine.rule_files import RuleBook
from loyalty_engine.storage.database import Database


def system_clock() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass
class App:
    """What the servicers, CLI commands and background jobs share."""

    settings: Settings
    db: Database
    clock: Callable[[], datetime] = field(default=system_clock)
    auth: Authenticator | None = None
    telemetry: Telemetry = field(default_factory=Telemetry)
    rules: RuleBook = field(default_factory=lambda: RuleBook.empty())

    async def close(self) -> None:
        """Release the database pool."""
        await self.db.dispose()


def build_app(settings: Settings, clock: Callable[[], datetime] = system_clock) -> App:
    """Build the application's dependencies; nothing here runs at import time."""
    db = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        group_commit=settings.group_commit,
        group_commit_max_batch=settings.group_commit_max_batch,
    )
    return App(
        settings=settings,
        db=db,
        clock=clock,
        auth=Authenticator(db, clock) if settings.auth_required else None,
        telemetry=Telemetry(db),
        rules=RuleBook.at_start(settings.rules_dir),
    )
