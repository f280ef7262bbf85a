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

from mlsm.controller.applying import condition, record, set_condition
from mlsm.controller.transitions import job_spec, set_job_phase, set_run_phase
from mlsm.store import Job, Node, Run
from mlsm.store.phases import ACTIVE
from mlsm.store.types import utcnow

__all__ = ["LeaseChanges", "Leases", "check_leases", "finish_failed_run"]


@dataclass(frozen=True, slots=True)
class Leases:
    grace: dt.timedelta = dt.timedelta(seconds=20)
    lost: dt.timedelta = dt.timedelta(minutes=5)
    backoff: dt.timedelta = dt.timedelta(seconds=10)
    backoff_max: dt.timedelta = dt.timedelta(minutes=10)


def finish_failed_run(
    session: Session,
    job: Job,
    run: Run,
    leases: Leases,
    *,
    reason: str,
    message: str,
    now: dt.datetime,
) -> None:
    """After a run failed: retry the job (with backoff) while it has retries left."""
    spec = job_spec(job)
    retries = spec.spec.retries if spec else 0
    if job.restarts < retries:
        delay = min(leases.backoff * (2**job.restarts), leases.backoff_max)
        job.restarts += 1
        job.next_attempt_at = now + delay
        set_job_phase(
            session,
            job,
            "Pending",
            reason="BackOff",
            message=f"run {run.attempt} failed ({message or reason}); retry "
            f"{job.restarts}/{retries} in {int(delay.total_seconds())}s",
            now=now,
        )
    else:
        set_job_phase(session, job, "Failed", reason=reason, message=message, now=now)


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
        ready = silent <= leases.grace
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
                select(Run).where(Run.node == node.name, Run.phase.in_(ACTIVE))
            ):
                set_run_phase(
                    session,
                    run,
                    "Lost",
                    reason="NodeLost",
                    message=f"node {node.name} silent for {int(silent.total_seconds())}s",
                    now=now,
                )
                run.job.restarts += 1
                set_job_phase(
                    session,
                    run.job,
                    "Pending",
                    reason="Lost",
                    message=f"run {run.attempt} lost with node {node.name}; rescheduling elsewhere",
                    now=now,
                )
                changed = True
    for run, job in session.execute(select(Run, Job).join(Job).where(Run.phase.in_(ACTIVE))):
        spec = job_spec(job)
        if spec is None:
            continue
        limit = spec.spec.max_duration
        stopped = False
        if (
            limit is not None
            and run.started_at is not None
            and (now - run.started_at > dt.timedelta(seconds=limit))
        ):
            stopped = set_run_phase(
                session,
                run,
                "Failed",
                reason="DeadlineExceeded",
                message=f"ran longer than maxDuration ({int(limit)}s)",
                now=now,
            )
            set_job_phase(
                session,
                job,
                "Failed",
                reason="DeadlineExceeded",
                message=f"stopped after maxDuration ({int(limit)}s)",
                now=now,
            )
        elif spec.spec.suspend:
            stopped = set_run_phase(
                session,
                run,
                "Cancelled",
                reason="Suspended",
                message="the job was suspended",
                now=now,
            )
            set_job_phase(
                session,
                job,
                "Pending",
                reason="Suspended",
                message="suspended: it waits until spec.suspend is false",
                now=now,
            )
        if stopped:  # the agent learns it from its assignments and its next heartbeat
            changed = True
            holder = session.scalars(
                select(Node).where(Node.name == run.node, Node.deleted_at.is_(None))
            ).first()
            if holder is not None:
                holder.assignment_revision += 1
    return LeaseChanges(conditions=conditions_changed, runs=changed)
