"""Time-driven changes, checked every few seconds: node leases, lost runs, deadlines,
suspended jobs, and retries with exponential backoff.

- A node silent for longer than `grace` (20 s; Kubernetes waits 50 s, Slurm 300 s)
  goes NotReady: it gets no new work, and its runs keep going.
- A node silent for longer than `lost` (5 min): its active runs are Lost and their
  jobs go back to Pending, to run elsewhere. If the node comes back, its stale runs
  are told to stop (fencing, in the agent API).
- A run past its job's `maxDuration` is stopped: reason DeadlineExceeded.
- A suspended job's active run is stopped and the job waits in Pending.
- A failed run is retried while the job has retries left, after 10 s, 20 s, 40 s ...
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlsm.controller.events import condition, record, set_condition
from mlsm.controller.lifecycle import Leases, job_spec, lose_run, stop_attempt
from mlsm.schemas.phases import JobPhase, Reason, RunPhase
from mlsm.store import Job, Node, Run
from mlsm.store.types import utcnow

__all__ = ["LeaseChanges", "Leases", "check_leases"]


@dataclass(frozen=True, slots=True)
class LeaseChanges:
    """What a lease check changed: node conditions, and runs (which their agents must
    hear about). True when anything changed."""

    conditions: bool = False
    runs: bool = False

    def __bool__(self) -> bool:
        return self.conditions or self.runs


def check_leases(session: Session, leases: Leases, now: dt.datetime | None = None) -> LeaseChanges:
    """Apply every time-driven change: node readiness, lost nodes' runs, maxDuration,
    suspend. The caller runs a scheduling pass after any change, and wakes the agents'
    long polls after a change to runs."""
    now = now or utcnow()
    changed = conditions_changed = False
    # Columns first: a pass runs every second over every node, and most have nothing
    # to change; only those that do are loaded whole.
    for node_id, last_heartbeat_at, conditions in session.execute(
        select(Node.id, Node.last_heartbeat_at, Node.conditions).where(Node.deleted_at.is_(None))
    ).all():
        if last_heartbeat_at is None:
            continue
        silent = now - last_heartbeat_at
        ready = leases.is_ready(last_heartbeat_at, now)
        known = condition(conditions, "Ready") or {}
        if known.get("status") == ("True" if ready else "False") and silent <= leases.lost:
            continue
        node = session.get_one(Node, node_id)
        if known.get("status") != ("True" if ready else "False"):
            message = (
                "heartbeats are arriving"
                if ready
                else f"missed heartbeats for {int(silent.total_seconds())}s: no new work; "
                f"its runs are retried elsewhere after {int(leases.lost.total_seconds())}s"
            )
            node.conditions = set_condition(
                node.conditions,
                "Ready",
                ready,
                reason="Ready" if ready else "NodeNotReady",
                message=message,
                now=now,
            )
            record(
                session,
                node,
                "Ready" if ready else "NotReady",
                message,
                warning=not ready,
                actor="controller",
                now=now,
            )
            conditions_changed = True
        if silent > leases.lost:
            for run in session.scalars(
                select(Run).where(Run.node == node.name, Run.phase.in_(RunPhase.active_phases()))
            ):
                lose_run(session, run, leases, silent=silent, now=now)
                changed = True
    for run, job in session.execute(
        select(Run, Job).join(Job).where(Run.phase.in_(RunPhase.active_phases()))
    ):
        spec = job_spec(job)
        if spec is None or not RunPhase(run.phase).active:  # a sibling's end stopped it
            continue
        limit = spec.spec.max_duration
        if (
            limit is not None
            and run.started_at is not None
            and (now - run.started_at > dt.timedelta(seconds=limit))
        ):
            changed |= stop_attempt(
                session, job, RunPhase.FAILED, JobPhase.FAILED,
                reason=Reason.DEADLINE_EXCEEDED,
                run_message=f"ran longer than maxDuration ({int(limit)}s)",
                job_message=f"stopped after maxDuration ({int(limit)}s)", now=now,
            )  # fmt: skip
        elif spec.spec.suspend:
            changed |= stop_attempt(
                session, job, RunPhase.CANCELLED, JobPhase.PENDING, reason=Reason.SUSPENDED,
                run_message="the job was suspended",
                job_message="suspended: it waits until spec.suspend is false", now=now,
            )  # fmt: skip
    return LeaseChanges(conditions=conditions_changed, runs=changed)
