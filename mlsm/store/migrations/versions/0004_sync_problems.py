"""the problems of files that name no object, kept with each source's sync state

Revision ID: 0004
Revises: 0003
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("sync_state") as batch:
        batch.add_column(sa.Column("problems", JSON, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("sync_state") as batch:
        batch.drop_column("problems")
