"""predictions: `mlsmctl predict` requests relayed to the node holding a job's
checkpoints

Revision ID: 0007
Revises: 0006
Created: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("job", sa.String(63), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("images", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answer", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
    )
    op.create_index(op.f("ix_predictions_node"), "predictions", ["node"])


def downgrade() -> None:
    op.drop_index(op.f("ix_predictions_node"), table_name="predictions")
    op.drop_table("predictions")
