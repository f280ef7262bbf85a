"""The controller's tables: the objects from git, each job's runs, the audit log of
events, the git sync state, and API tokens.

Objects are soft-deleted: a manifest removed from git sets `deleted_at` and the
row stays as history; a name can be used again by a new row (a new `uid`), since
names are unique only among live rows. Every row that more than one writer may
change carries a `version` for guarded updates (`UPDATE ... WHERE version = :v`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import BigInteger, ForeignKey, Index, MetaData, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship

from mlsm.store.types import Json, UtcDateTime, utcnow

__all__ = [
    "OBJECT_MODELS",
    "Base",
    "Dataset",
    "Event",
    "Job",
    "Leadership",
    "LogLine",
    "MetricRecord",
    "Node",
    "Prediction",
    "Run",
    "StoredObject",
    "SyncState",
    "Token",
]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UtcDateTime(),
        dict[str, Any]: Json,
        dict[str, str]: Json,
        list[Any]: Json,
        list[dict[str, Any]]: Json,
    }


class StoredObject(Base):
    """What every object from a manifest keeps: its last valid manifest, where and by
    which commit it was last changed, and its conditions."""

    __abstract__ = True

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    """This incarnation of the name (a uuid4): a name removed and added again is a new
    object."""
    name: Mapped[str] = mapped_column(String(63))
    manifest: Mapped[dict[str, Any]]
    """The last valid manifest (apiVersion, kind, metadata, spec), camelCase, as written."""
    spec_hash: Mapped[str] = mapped_column(String(64))
    """sha256 of the canonical JSON of `manifest`: unchanged objects cost no writes."""
    generation: Mapped[int] = mapped_column(default=1)
    """Goes up by one each time the manifest changes."""
    labels: Mapped[dict[str, str]] = mapped_column(default=dict)
    source_path: Mapped[str] = mapped_column(Text, default="")
    source_line: Mapped[int] = mapped_column(default=0)
    commit_sha: Mapped[str] = mapped_column(String(64), default="")
    commit_author: Mapped[str] = mapped_column(Text, default="")
    commit_message: Mapped[str] = mapped_column(Text, default="")
    conditions: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    """Kubernetes-style: type, status, reason, message, lastTransitionTime."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    version: Mapped[int] = mapped_column(default=1)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        live = text("deleted_at IS NULL")  # names are unique among live rows only
        return (
            Index(
                f"uq_{cls.__tablename__}_live_name",
                "name",
                unique=True,
                sqlite_where=live,
                postgresql_where=live,
            ),
        )

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:  # every UPDATE checks and bumps `version`
        return {"version_id_col": cls.__dict__.get("version", cls.version)}

    kind: ClassVar[str]


class Node(StoredObject):
    __tablename__ = "nodes"
    kind: ClassVar[str] = "Node"

    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    """When the node's agent last reported; Ready while within the grace period."""
    inventory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """What the agent reports: cpus, memory, gpus [{index, uuid, name, memory}], free
    disk, runtimes, agent version, datasets present."""
    assignment_revision: Mapped[int] = mapped_column(default=0)
    """Goes up whenever the runs assigned to this node change (long polls wake)."""


class Dataset(StoredObject):
    __tablename__ = "datasets"
    kind: ClassVar[str] = "Dataset"


class Job(StoredObject):
    __tablename__ = "jobs"
    kind: ClassVar[str] = "TrainingJob"

    phase: Mapped[str] = mapped_column(String(16), default="Pending", index=True)
    """Pending, Scheduled, Starting, Running, Succeeded, Failed or Cancelled."""
    owner: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[int] = mapped_column(default=0)
    observed_generation: Mapped[int] = mapped_column(default=0)
    restarts: Mapped[int] = mapped_column(default=0)
    """Runs started after the first (retries and reschedules)."""
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    """A retried job waits until then (exponential backoff)."""
    runs: Mapped[list[Run]] = relationship(back_populates="job", order_by="Run.attempt")


OBJECT_MODELS: dict[str, type[StoredObject]] = {m.kind: m for m in (Node, Dataset, Job)}


class Run(Base):
    """One start of a job, with its own id: what an agent runs, and what fencing
    compares reports against."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int]
    node: Mapped[str | None] = mapped_column(String(63), default=None, index=True)
    phase: Mapped[str] = mapped_column(String(16), default="Pending")
    gpus: Mapped[list[Any]] = mapped_column(default=list)
    """The GPU indices on `node` bound to this run."""
    rank: Mapped[int] = mapped_column(default=0)
    """Its node rank among the runs of its attempt (0 hosts the rendezvous)."""
    rendezvous: Mapped[str] = mapped_column(String(300), default="")
    """host:port where a node-rank-0 run's launcher meets its siblings' (its agent
    reserves the port and reports it)."""
    ranks: Mapped[list[Any]] = mapped_column(default=list)
    """The process ranks whose lines its log holds (from torchrun's line prefixes)."""
    reason: Mapped[str] = mapped_column(String(64), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_report_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    log_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    """Bytes of the run's log the controller holds: the agent ships from here."""
    metrics_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    """Bytes of the run's metrics file the controller holds."""
    output_dir: Mapped[str] = mapped_column(Text, default="")
    """Where the run's outputs lie on its node (the agent reports it)."""
    version: Mapped[int] = mapped_column(default=1)
    job: Mapped[Job] = relationship(back_populates="runs")

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - read by SQLAlchemy


class LogLine(Base):
    """One line of a run's output (stdout and stderr), at its byte offset in the log
    file on the node: a retried upload cannot duplicate a line."""

    __tablename__ = "log_lines"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    rank: Mapped[int | None] = mapped_column(default=None)
    """The process rank that wrote it (torchrun's `[rankK]: ` prefix), None for the
    launcher's own lines and a single process's."""


class MetricRecord(Base):
    """One JSON record a run wrote to $MLSM_METRICS_FILE, at its byte offset there."""

    __tablename__ = "metric_records"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    record: Mapped[dict[str, Any]]


class Event(Base):
    """The audit log: every change to an object, with the commit that caused it.
    Kept in the database for good (Kubernetes events expire after an hour)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_object", "kind", "name", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(63))
    uid: Mapped[str | None] = mapped_column(String(36), default=None)
    type: Mapped[str] = mapped_column(String(8), default="Normal")
    """Normal or Warning."""
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")
    commit_sha: Mapped[str] = mapped_column(String(64), default="")
    actor: Mapped[str] = mapped_column(Text, default="")
    """Who caused it: a commit's author, a node, or the controller."""


class SyncState(Base):
    """Where each git source stands: the last commit applied, and the last error."""

    __tablename__ = "sync_state"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text, default="")
    branch: Mapped[str] = mapped_column(Text, default="")
    path: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="Never")
    """Never, Synced or Failed."""
    commit_sha: Mapped[str] = mapped_column(String(64), default="")
    commit_author: Mapped[str] = mapped_column(Text, default="")
    commit_message: Mapped[str] = mapped_column(Text, default="")
    objects: Mapped[int] = mapped_column(default=0)
    invalid: Mapped[int] = mapped_column(default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    problems: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    """Problems of files that name no object at the applied commit (a file that is
    not YAML, too large, too deep, ...): {path, line, column, message}, the first
    `MAX_SYNC_PROBLEMS`. Their files' objects keep their last valid spec."""
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    version: Mapped[int] = mapped_column(default=1)


class Token(Base):
    """An API token: only its sha256 is kept, and a short prefix to tell tokens apart."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(String(8))
    """node, admin or read."""
    node: Mapped[str | None] = mapped_column(String(63), default=None, index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Leadership(Base):
    """Which controller leads, where several share one PostgreSQL database
    (`controller/leading.py`): the holder of the lease, its term (one more with each
    new leader, which fences the old one's writes), and when the lease lapses unless
    its holder renews it, by the database's clock."""

    __tablename__ = "leadership"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(Text, default="")
    term: Mapped[int] = mapped_column(default=0)
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Prediction(Base):
    """A `mlsmctl predict` request on its way to the node that holds a job's
    checkpoints (`controller/predicting.py`): the images, until that node's agent
    answers; the caller's controller reads the answer and deletes the row."""

    __tablename__ = "predictions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node: Mapped[str] = mapped_column(String(63), index=True)
    job: Mapped[str] = mapped_column(String(63))
    run_id: Mapped[str] = mapped_column(String(36))
    top_k: Mapped[int]
    images: Mapped[list[Any]]
    """[{"name": the caller's file name (shown, never used as a path), "data": base64}]."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    taken_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    answered_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    answer: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The agent's: {"checkpoint": "best", "labels": [[[label, p], ...], ...]} or
    {"error": "..."}."""
