"""the segment index carries the R, F and M scores, so an export page reads the index alone

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 03:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KEY = ["program_id", "segment_id", "member_id"]
SCORES = ["recency", "frequency", "monetary"]


def upgrade() -> None:
    op.drop_index("ix_member_scores_segment", table_name="member_scores")
    op.create_index("ix_member_scores_segment", "member_scores", KEY + SCORES, unique=False)


def downgrade() -> None:
    op.drop_index("ix_member_scores_segment", table_name="member_scores")
    op.create_index("ix_member_scores_segment", "member_scores", KEY, unique=False)
