"""a run's node rank, its rendezvous endpoint and the process ranks seen in its log;
the rank of each log line

Revision ID: 0005
Revises: 0004
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("rank", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("rendezvous", sa.String(300), nullable=False, server_default=""))
        batch.add_column(sa.Column("ranks", JSON, nullable=False, server_default="[]"))
    with op.batch_alter_table("log_lines") as batch:
        batch.add_column(sa.Column("rank", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("log_lines") as batch:
        batch.drop_column("rank")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("ranks")
        batch.drop_column("rendezvous")
        batch.drop_column("rank")
