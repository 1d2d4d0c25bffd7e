"""purchases by member carry the amounts, so a refresh sums the 12 months from the index alone

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 06:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

KEY = ["program_id", "member_id", "purchase_time"]
AMOUNTS = ["total_minor", "returned_minor", "points_awarded", "points_reversed"]


def upgrade() -> None:
    # INCLUDE is PostgreSQL's; SQLite keeps the index as it is.
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_purchases_member_time", table_name="purchases")
    op.create_index("ix_purchases_member_time", "purchases", KEY, postgresql_include=AMOUNTS)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_purchases_member_time", table_name="purchases")
    op.create_index("ix_purchases_member_time", "purchases", KEY)
