"""Maintenance passes: pending release, expiry and tier reviews for a whole program.

A pass runs one short transaction per member, so it never holds many locks, and it is
idempotent: a member already settled yields no entries, and two passes racing on one
member serialize on its account lock, the second finding nothing left to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from loyalty_engine.services.points import MaintenanceReport, inactivity_cutoff, settle_member
from loyalty_engine.services.programs import load_program
from loyalty_engine.storage.unit_of_work import UnitOfWork

BATCH = 500


async def run_maintenance(
    unit_of_work: Callable[[], UnitOfWork], program_id: str, now: datetime
) -> MaintenanceReport:
    """Settle every member of a program that has something due at `now`."""
    report = MaintenanceReport()
    after = ""
    while True:
        async with unit_of_work() as uow:
            program = await load_program(uow, program_id)
            due = await uow.accounts.members_needing_settlement(
                program_id, now, inactivity_cutoff(program, now), after, BATCH
            )
        if not due:
            return report
        for member_id in due:
            async with unit_of_work() as uow:
                one = await settle_member(uow, program, member_id, now)
                await uow.commit()
            report = replace(
                report,
                members_changed=report.members_changed + one.members_changed,
                points_expired=report.points_expired + one.points_expired,
                points_released=report.points_released + one.points_released,
                tier_changes=report.tier_changes + one.tier_changes,
            )
        after = due[-1]
