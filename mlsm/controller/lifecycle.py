"""The lifecycle: every phase change of a job or a run goes through here, with its
event, and a job's phase is derived from the runs of its current attempt.

A job runs as attempts. An attempt is one run per node the job spans, all with the
same attempt number. What the runs of the current attempt say decides the job:

- all ranks running (or some already done, the rest running): Running; while any
  is still bound or starting, the earliest of those;
- all succeeded: Succeeded;
- one failed or lost: the other ranks are stopped at once (they end Cancelled,
  reason SiblingFailed, and free their GPUs), then the job is retried as one new
  attempt after a backoff while it has retries left, else it fails. A lost rank
  (its node went silent) always reschedules: that is not the job's fault.

Policies, each writing its event: `report_run` (an agent's report, fenced when
stale), `lose_run`, `fence_run`, `stop_attempt` (deadline, suspend), `cancel_job`,
`retry_or_fail`. The moves themselves (`switch_job`, `switch_run`) follow the
tables in `mlsm.schemas.phases`; a move the table does not allow is refused.

Called by the scheduling pass, the lease check, the agent API and the sync.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlsm import schemas
from mlsm.controller.events import Commit, record, set_condition
from mlsm.schemas.phases import JOB_MOVES, RUN_MOVES, JobPhase, Reason, RunPhase, is_warning
from mlsm.store import Job, Node, Run
from mlsm.store.types import utcnow

__all__ = [
    "Leases",
    "cancel_job",
    "current_runs",
    "derive_job_phase",
    "fence_run",
    "job_spec",
    "lose_run",
    "next_attempt",
    "report_run",
    "retry_or_fail",
    "settle_job",
    "stop_attempt",
    "switch_job",
    "switch_run",
]


@dataclass(frozen=True, slots=True)
class Leases:
    """How long a node may be silent, and how retries back off."""

    grace: dt.timedelta = dt.timedelta(seconds=20)
    lost: dt.timedelta = dt.timedelta(minutes=5)
    backoff: dt.timedelta = dt.timedelta(seconds=10)
    backoff_max: dt.timedelta = dt.timedelta(minutes=10)

    def is_ready(self, last_heartbeat_at: dt.datetime | None, now: dt.datetime) -> bool:
        """The one readiness rule: a node is Ready while its last heartbeat is
        within the grace period (the lease check writes it as the Ready condition,
        which the site and `mlsmctl` show)."""
        return last_heartbeat_at is not None and now - last_heartbeat_at <= self.grace


def job_spec(job: Job) -> schemas.TrainingJob | None:
    """The job's stored manifest as a model (defaults filled in), or None when it never
    had a valid one or a newer mlsm wrote it."""
    if not job.manifest:
        return None
    try:
        return schemas.TrainingJob.model_validate(job.manifest)
    except ValueError:
        return None


# -- moves -------------------------------------------------------------------------


def switch_job(
    session: Session,
    job: Job,
    phase: JobPhase,
    *,
    reason: str,
    message: str,
    commit: Commit | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Move a job to `phase` if its move table allows it, and write the event.
    Returns whether anything changed."""
    current = JobPhase(job.phase)
    if phase == current or phase not in JOB_MOVES[current]:
        return False
    now = now or utcnow()
    job.phase = phase
    job.updated_at = now
    job.observed_generation = job.generation
    if phase == JobPhase.SCHEDULED:
        job.conditions = set_condition(
            job.conditions, "Scheduled", True, reason="Scheduled", message=message, now=now
        )
    warning = phase == JobPhase.FAILED or (is_warning(reason) and phase != JobPhase.SUCCEEDED)
    record(
        session,
        job,
        reason,
        message,
        warning=warning,
        commit=commit,
        actor="" if commit else "controller",
        now=now,
    )
    return True


def switch_run(
    session: Session,
    run: Run,
    phase: RunPhase,
    *,
    reason: str = "",
    message: str = "",
    exit_code: int | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Move a run to `phase` if its move table allows it (a finished run never moves
    again). A run that ends stops holding its GPUs at once: GPUs are held by active
    runs only."""
    current = RunPhase(run.phase)
    if phase == current or phase not in RUN_MOVES[current]:
        return False
    now = now or utcnow()
    run.phase = phase
    run.reason, run.message = reason or phase, message
    if exit_code is not None:
        run.exit_code = exit_code
    if phase == RunPhase.RUNNING and run.started_at is None:
        run.started_at = now
    if phase.finished:
        run.finished_at = now
    return True


# -- the aggregate -----------------------------------------------------------------


def current_runs(job: Job) -> list[Run]:
    """The runs of the job's latest attempt (one per node it spans)."""
    if not job.runs:
        return []
    latest = max(r.attempt for r in job.runs)
    return [r for r in job.runs if r.attempt == latest]


def next_attempt(job: Job) -> int:
    """The number of the job's next attempt: attempts count up by one, whatever the
    number of runs (ranks) each had."""
    return max((r.attempt for r in job.runs), default=0) + 1


def derive_job_phase(runs: list[Run]) -> JobPhase | None:
    """What the runs of one attempt say the job is; None while one failed or was lost
    (the policy decides: retry or fail) or when there are none."""
    phases = [RunPhase(r.phase) for r in runs]
    if not phases or any(p in (RunPhase.FAILED, RunPhase.LOST) for p in phases):
        return None
    if all(p == RunPhase.SUCCEEDED for p in phases):
        return JobPhase.SUCCEEDED
    if all(p == RunPhase.CANCELLED for p in phases):
        return JobPhase.CANCELLED
    for early in (RunPhase.SCHEDULED, RunPhase.STARTING):
        if early in phases:
            return JobPhase(early.value)
    return JobPhase.RUNNING


def settle_job(
    session: Session,
    job: Job,
    leases: Leases,
    *,
    reason: str,
    message: str,
    now: dt.datetime,
) -> None:
    """Bring the job's phase in line with its current attempt's runs, and act when
    a rank failed or was lost: stop the others, then retry or fail the job."""
    runs = current_runs(job)
    broken = [r for r in runs if r.phase in (RunPhase.FAILED, RunPhase.LOST)]
    if broken:
        first = broken[0]
        for sibling in runs:
            if RunPhase(sibling.phase).active:
                stop_run(
                    session,
                    sibling,
                    RunPhase.CANCELLED,
                    reason=Reason.SIBLING_FAILED,
                    message=f"rank on {first.node} ended: {first.reason}",
                    now=now,
                )
        why = first.message or first.reason
        if first.phase == RunPhase.LOST:
            job.restarts += 1
            switch_job(
                session,
                job,
                JobPhase.PENDING,
                reason=Reason.LOST,
                message=f"attempt {first.attempt} lost with node {first.node}; "
                "rescheduling elsewhere",
                now=now,
            )
        elif first.reason == Reason.DEADLINE_EXCEEDED:
            switch_job(session, job, JobPhase.FAILED, reason=first.reason, message=why, now=now)
        else:
            retry_or_fail(session, job, first, leases, reason=first.reason, message=why, now=now)
        return
    derived = derive_job_phase(runs)
    if derived is not None:
        switch_job(session, job, derived, reason=reason, message=message, now=now)


def retry_or_fail(
    session: Session,
    job: Job,
    run: Run,
    leases: Leases,
    *,
    reason: str,
    message: str,
    now: dt.datetime,
) -> None:
    """After an attempt failed: retry the job (with backoff) while it has retries left."""
    spec = job_spec(job)
    retries = spec.spec.retries if spec else 0
    if job.restarts < retries:
        delay = min(leases.backoff * (2**job.restarts), leases.backoff_max)
        job.restarts += 1
        job.next_attempt_at = now + delay
        switch_job(
            session,
            job,
            JobPhase.PENDING,
            reason=Reason.BACK_OFF,
            message=f"attempt {run.attempt} failed ({message or reason}); retry "
            f"{job.restarts}/{retries} in {int(delay.total_seconds())}s",
            now=now,
        )
    else:
        detail = f"{message} (after {retries} retries)" if retries else message
        switch_job(session, job, JobPhase.FAILED, reason=reason, message=detail, now=now)


# -- policies ----------------------------------------------------------------------


def tell_node(session: Session, run: Run) -> None:
    """Its node's agent learns of a run the controller changed from its next poll."""
    if run.node:
        holder = session.scalars(
            select(Node).where(Node.name == run.node, Node.deleted_at.is_(None))
        ).first()
        if holder is not None:
            holder.assignment_revision += 1


def stop_run(
    session: Session, run: Run, phase: RunPhase, *, reason: str, message: str, now: dt.datetime
) -> bool:
    """The controller ends a run (its agent stops the process when it hears)."""
    if not switch_run(session, run, phase, reason=reason, message=message, now=now):
        return False
    tell_node(session, run)
    return True


def report_run(
    session: Session,
    run: Run,
    phase: RunPhase,
    leases: Leases,
    *,
    reason: str,
    message: str,
    exit_code: int | None,
    now: dt.datetime,
) -> bool:
    """An agent reports a run. Returns False when the run is stale (not its job's
    current attempt, or already ended by the controller): the agent must stop it."""
    job = run.job
    if run not in current_runs(job) or not RunPhase(run.phase).active:
        fence_run(session, run, now=now)
        return False
    switch_run(session, run, phase, reason=reason, message=message, exit_code=exit_code, now=now)
    detail = message or (f"exit code {exit_code}" if exit_code is not None else "")
    settle_job(
        session,
        job,
        leases,
        reason=reason,
        message=f"run {run.id[:8]} on {run.node}: {detail}".rstrip(": "),
        now=now,
    )
    return True


def fence_run(session: Session, run: Run, *, now: dt.datetime) -> None:
    """A stale copy reported in: if the store still thinks it active, it ends now."""
    if RunPhase(run.phase).active:
        stop_run(
            session,
            run,
            RunPhase.CANCELLED,
            reason=Reason.FENCED,
            message="a newer attempt of its job replaced it",
            now=now,
        )


def lose_run(
    session: Session, run: Run, leases: Leases, *, silent: dt.timedelta, now: dt.datetime
) -> None:
    """Its node has been silent past the lost timeout: the run is Lost, and its job
    is rescheduled as a new attempt."""
    if switch_run(
        session,
        run,
        RunPhase.LOST,
        reason=Reason.NODE_LOST,
        message=f"node {run.node} silent for {int(silent.total_seconds())}s",
        now=now,
    ):
        settle_job(session, run.job, leases, reason=Reason.LOST, message="", now=now)


def stop_attempt(
    session: Session,
    job: Job,
    run_phase: RunPhase,
    job_phase: JobPhase,
    *,
    reason: str,
    run_message: str,
    job_message: str,
    now: dt.datetime,
) -> bool:
    """End every active rank of the current attempt, then move the job (a deadline:
    Failed; a suspension: Pending)."""
    stopped = False
    for run in current_runs(job):
        if RunPhase(run.phase).active:
            stopped |= stop_run(
                session, run, run_phase, reason=reason, message=run_message, now=now
            )
    switch_job(session, job, job_phase, reason=reason, message=job_message, now=now)
    return stopped


def cancel_job(
    session: Session,
    job: Job,
    *,
    reason: str,
    message: str,
    commit: Commit | None = None,
    now: dt.datetime,
) -> None:
    """The job is cancelled (removed from git): its runs end Cancelled, now."""
    for run in job.runs:
        if RunPhase(run.phase).active:
            stop_run(session, run, RunPhase.CANCELLED, reason=reason, message=message, now=now)
    switch_job(
        session,
        job,
        JobPhase.CANCELLED,
        reason="Cancelled",
        message=message,
        commit=commit,
        now=now,
    )
