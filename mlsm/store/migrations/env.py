"""Alembic environment: migrations run on the connection `Store.migrate` passes in."""

from __future__ import annotations

from alembic import context

from mlsm.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying tables
    compare_type=True,
)
context.run_migrations()
