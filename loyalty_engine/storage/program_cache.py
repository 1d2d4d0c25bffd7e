"""A short-lived, per-process cache of programs with their tiers and earning rules.

Every purchase needs its program's policies; reading them is three queries that almost
never change. Entries live `ttl` seconds; a write through this process forgets the entry at
once, so another process (or worker) may use old settings for at most `ttl` seconds.
"""

from __future__ import annotations

import time

from loyalty_engine.domain.program import Program

DEFAULT_TTL_SECONDS = 2.0


class ProgramCache:
    """Loaded programs by id, each kept for a few seconds."""

    def __init__(self, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Program]] = {}

    def get(self, program_id: str) -> Program | None:
        """The cached program, if still fresh."""
        entry = self._entries.get(program_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, program: Program) -> None:
        """Remember a loaded program."""
        if self.ttl > 0:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[program.program_id] = (time.monotonic() + self.ttl, program)

    def forget(self, program_id: str) -> None:
        """Drop a program whose settings this process is changing."""
        self._entries.pop(program_id, None)
