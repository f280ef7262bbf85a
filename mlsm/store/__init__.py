"""The controller's database: SQLAlchemy models, sessions, and Alembic migrations.
SQLite (WAL) at `.mlsm/mlsm.db` by default; PostgreSQL by `MLSM_DATABASE_URL`."""

from mlsm.store.database import DEFAULT_URL, DatabaseError, Store, database_url
from mlsm.store.models import (
    OBJECT_MODELS,
    Base,
    Dataset,
    Event,
    Job,
    Leadership,
    LogLine,
    MetricRecord,
    Node,
    Prediction,
    Run,
    StoredObject,
    SyncState,
    Token,
)

__all__ = [
    "DEFAULT_URL",
    "OBJECT_MODELS",
    "Base",
    "DatabaseError",
    "Dataset",
    "Event",
    "Job",
    "Leadership",
    "LogLine",
    "MetricRecord",
    "Node",
    "Prediction",
    "Run",
    "Store",
    "StoredObject",
    "SyncState",
    "Token",
    "database_url",
]
