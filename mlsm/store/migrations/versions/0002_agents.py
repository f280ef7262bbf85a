"""node heartbeats and inventory, job retries, run reports

Revision ID: 0002
Revises: 0001
Created: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Server defaults fill the rows that exist already.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_attempt_at", WHEN, nullable=True))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("last_heartbeat_at", WHEN, nullable=True))
        batch.add_column(sa.Column("inventory", JSON, nullable=False, server_default="{}"))
        batch.add_column(
            sa.Column("assignment_revision", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("last_report_at", WHEN, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("last_report_at")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("assignment_revision")
        batch.drop_column("inventory")
        batch.drop_column("last_heartbeat_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("next_attempt_at")
        batch.drop_column("restarts")
