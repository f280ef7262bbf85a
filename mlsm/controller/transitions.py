"""Every phase change of a job or a run goes through here, with its event, so status
and the audit log never disagree.

Job phases: Pending -> Scheduled -> Starting -> Running -> Succeeded | Failed |
Cancelled (and back to Pending when a run is retried). Run phases are the same plus
Lost (its node stopped reporting past the lost timeout).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from mlsm import schemas
from mlsm.controller.applying import record, set_condition
from mlsm.store import Job, Run
from mlsm.store.phases import FINISHED
from mlsm.store.types import utcnow

__all__ = ["JOB_MOVES", "job_spec", "set_job_phase", "set_run_phase"]

JOB_MOVES: dict[str, frozenset[str]] = {
    "Pending": frozenset({"Scheduled", "Cancelled"}),
    "Scheduled": frozenset({"Starting", "Running", "Pending", "Failed", "Cancelled"}),
    "Starting": frozenset({"Running", "Pending", "Succeeded", "Failed", "Cancelled"}),
    "Running": frozenset({"Pending", "Succeeded", "Failed", "Cancelled"}),
    "Succeeded": frozenset(),
    "Failed": frozenset(),
    "Cancelled": frozenset(),
}


def job_spec(job: Job) -> schemas.TrainingJob | None:
    """The job's stored manifest as a model (defaults filled in), or None when it never
    had a valid one or a newer mlsm wrote it."""
    if not job.manifest:
        return None
    try:
        return schemas.TrainingJob.model_validate(job.manifest)
    except ValueError:
        return None


def set_job_phase(
    session: Session,
    job: Job,
    phase: str,
    *,
    reason: str,
    message: str,
    now: dt.datetime | None = None,
) -> bool:
    """Move a job to `phase` (if that move is allowed) and write the event. Returns
    whether anything changed."""
    if phase == job.phase or phase not in JOB_MOVES[job.phase]:
        return False
    now = now or utcnow()
    job.phase = phase
    job.updated_at = now
    job.observed_generation = job.generation
    if phase == "Scheduled":
        job.conditions = set_condition(job.conditions, "Scheduled", True, reason="Scheduled",
                                       message=message, now=now)  # fmt: skip
    warning = phase == "Failed" or reason in ("DeadlineExceeded", "Lost", "EnvBuildFailed")
    record(session, job, reason, message, warning=warning, actor="controller", now=now)
    return True


def set_run_phase(
    session: Session,
    run: Run,
    phase: str,
    *,
    reason: str = "",
    message: str = "",
    exit_code: int | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Move a run to `phase`; finished runs never move again."""
    if run.phase == phase or run.phase in FINISHED or run.phase == "Lost":
        return False
    now = now or utcnow()
    run.phase = phase
    run.reason, run.message = reason or phase, message
    if exit_code is not None:
        run.exit_code = exit_code
    if phase == "Running" and run.started_at is None:
        run.started_at = now
    if phase in FINISHED or phase == "Lost":
        run.finished_at = now
    return True
