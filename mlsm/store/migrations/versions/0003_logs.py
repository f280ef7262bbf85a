"""run logs and metric records, shipped by agents with byte offsets

Revision ID: 0003
Revises: 0002
Created: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("log_offset", sa.BigInteger(), nullable=False,
                                   server_default="0"))  # fmt: skip
        batch.add_column(sa.Column("metrics_offset", sa.BigInteger(), nullable=False,
                                   server_default="0"))  # fmt: skip
        batch.add_column(sa.Column("output_dir", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "log_lines",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_log_lines_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "offset", name="pk_log_lines"),
    )
    op.create_table(
        "metric_records",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("record", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_metric_records_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "offset", name="pk_metric_records"),
    )


def downgrade() -> None:
    op.drop_table("metric_records")
    op.drop_table("log_lines")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("output_dir")
        batch.drop_column("metrics_offset")
        batch.drop_column("log_offset")
