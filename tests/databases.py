"""Which databases a test runs on.

The `database_url` fixture (tests/conftest.py) runs a test on SQLite and on a real
PostgreSQL server. The store, the sync, scheduling, leases and the agent API run on
both, because there the database is what is tested. Tests of what happens above the
store (agents running jobs, the trainer through a job, the CLI against a
controller) are marked `sqlite_only`: on PostgreSQL they would repeat the same
steps against the same queries, for a minute of the suite's time.
"""

from __future__ import annotations

import pytest

__all__ = ["postgres_only", "sqlite_only"]

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
postgres_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
"""What only PostgreSQL offers: several controllers on one database."""
