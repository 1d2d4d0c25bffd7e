"""an index per top-customer ranking, stored average order values, purchases by time

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = tuple(
    f"{metric}_{window}"
    for metric in ("spend", "orders", "points", "aov")
    for window in ("90d", "12m", "all")
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_purchases_time_brin", "purchases", ["purchase_time"], postgresql_using="brin"
        )
    with op.batch_alter_table("member_scores", schema=None) as batch_op:
        for window in ("90d", "12m", "all"):
            batch_op.add_column(
                sa.Column(f"aov_{window}", sa.BigInteger(), nullable=False, server_default="0")
            )
        for window in ("90d", "12m", "all"):
            batch_op.drop_index(f"ix_member_scores_spend_{window}")
    # Scores are recomputed by every refresh; fill the new columns for the ones stored now.
    op.execute(
        "UPDATE member_scores SET "
        "aov_90d = CASE WHEN orders_90d > 0 THEN spend_90d / orders_90d ELSE 0 END, "
        "aov_12m = CASE WHEN orders_12m > 0 THEN spend_12m / orders_12m ELSE 0 END, "
        "aov_all = CASE WHEN orders_all > 0 THEN spend_all / orders_all ELSE 0 END"
    )
    for column in COLUMNS:
        op.create_index(
            f"ix_member_scores_{column}",
            "member_scores",
            ["program_id", column],
            unique=False,
            postgresql_where=sa.text(f"{column} > 0"),
            sqlite_where=sa.text(f"{column} > 0"),
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_purchases_time_brin", table_name="purchases")
    for column in COLUMNS:
        op.drop_index(f"ix_member_scores_{column}", table_name="member_scores")
    with op.batch_alter_table("member_scores", schema=None) as batch_op:
        for window in ("90d", "12m", "all"):
            batch_op.create_index(
                f"ix_member_scores_spend_{window}", ["program_id", f"spend_{window}"], unique=False
            )
        for window in ("90d", "12m", "all"):
            batch_op.drop_column(f"aov_{window}")
