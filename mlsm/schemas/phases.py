"""The lifecycle's vocabulary: the phases a job and a run are in, the moves between
them, and the reasons a move is made. Defined once, here at the bottom of the
layers, so that the controller (which decides), the store's readers (the site) and
`mlsmctl` (which shows) all speak it and none keeps a copy of a phase set.

    Pending -> Scheduled -> Starting -> Running -> Succeeded | Failed | Cancelled
       ^__________________________________|   (a retry: a new attempt)

A job runs as one attempt at a time: one run per node it spans (`spec.nodes`), all
numbered with the attempt. A run moves on its own table; Lost is a run's final
phase when its node stopped reporting. The job's phase is derived from the runs of
its current attempt (`mlsm.controller.lifecycle`).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JOB_MOVES", "RUN_MOVES", "JobPhase", "Reason", "RunPhase", "is_warning"]


class JobPhase(StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    STARTING = "Starting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        """Never changes again."""
        return self in _FINISHED_JOBS

    @property
    def active(self) -> bool:
        """Has runs bound to nodes."""
        return self in (JobPhase.SCHEDULED, JobPhase.STARTING, JobPhase.RUNNING)

    @classmethod
    def finished_phases(cls) -> frozenset[JobPhase]:
        return _FINISHED_JOBS


class RunPhase(StrEnum):
    SCHEDULED = "Scheduled"
    STARTING = "Starting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    LOST = "Lost"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_RUNS

    @property
    def active(self) -> bool:
        """Holds its node's GPUs."""
        return self in _ACTIVE_RUNS

    @classmethod
    def finished_phases(cls) -> frozenset[RunPhase]:
        return _FINISHED_RUNS

    @classmethod
    def active_phases(cls) -> frozenset[RunPhase]:
        return _ACTIVE_RUNS


_FINISHED_JOBS = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.CANCELLED})
_FINISHED_RUNS = frozenset({RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.CANCELLED, RunPhase.LOST})
_ACTIVE_RUNS = frozenset({RunPhase.SCHEDULED, RunPhase.STARTING, RunPhase.RUNNING})

JOB_MOVES: dict[JobPhase, frozenset[JobPhase]] = {
    JobPhase.PENDING: frozenset({JobPhase.SCHEDULED, JobPhase.CANCELLED}),
    JobPhase.SCHEDULED: frozenset(
        {
            JobPhase.STARTING,
            JobPhase.RUNNING,
            JobPhase.PENDING,
            JobPhase.FAILED,
            JobPhase.CANCELLED,
            JobPhase.SUCCEEDED,
        }
    ),
    JobPhase.STARTING: frozenset(
        {
            JobPhase.SCHEDULED,
            JobPhase.RUNNING,
            JobPhase.PENDING,
            JobPhase.SUCCEEDED,
            JobPhase.FAILED,
            JobPhase.CANCELLED,
        }
    ),
    JobPhase.RUNNING: frozenset(
        {
            JobPhase.STARTING,
            JobPhase.PENDING,
            JobPhase.SUCCEEDED,
            JobPhase.FAILED,
            JobPhase.CANCELLED,
        }
    ),
    JobPhase.SUCCEEDED: frozenset(),
    JobPhase.FAILED: frozenset(),
    JobPhase.CANCELLED: frozenset(),
}
"""A job derived from several runs can step back while one rank starts late (Running
-> Starting), and a retried one goes back to Pending for its next attempt."""

RUN_MOVES: dict[RunPhase, frozenset[RunPhase]] = {
    RunPhase.SCHEDULED: frozenset(
        {
            RunPhase.STARTING,
            RunPhase.RUNNING,
            RunPhase.SUCCEEDED,
            RunPhase.FAILED,
            RunPhase.CANCELLED,
            RunPhase.LOST,
        }
    ),
    RunPhase.STARTING: frozenset(
        {RunPhase.RUNNING, RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.CANCELLED, RunPhase.LOST}
    ),
    RunPhase.RUNNING: frozenset(
        {RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.CANCELLED, RunPhase.LOST}
    ),
    RunPhase.SUCCEEDED: frozenset(),
    RunPhase.FAILED: frozenset(),
    RunPhase.CANCELLED: frozenset(),
    RunPhase.LOST: frozenset(),
}
"""A run only moves forward; a short one may report its end before its start."""


class Reason(StrEnum):
    """Why a job or run moved. Agents report their own reasons for a run's end
    (`Completed`, `Error`, `OOMKilled`, ...); those this enum does not know are kept
    as the agent wrote them (`Reason.of` gives None)."""

    # scheduling and the controller's decisions
    SCHEDULED = "Scheduled"
    UNSCHEDULABLE = "Unschedulable"
    BACK_OFF = "BackOff"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SUSPENDED = "Suspended"
    PRUNED = "Pruned"
    LOST = "Lost"
    NODE_LOST = "NodeLost"
    FENCED = "Fenced"
    SIBLING_FAILED = "SiblingFailed"
    # what agents report
    STARTING = "Starting"
    RUNNING = "Running"
    COMPLETED = "Completed"
    ERROR = "Error"
    KILLED = "Killed"
    OOM_KILLED = "OOMKilled"
    START_FAILED = "StartFailed"
    ENV_BUILD_FAILED = "EnvBuildFailed"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    RENDEZVOUS_TIMEOUT = "RendezvousTimeout"
    UNKNOWN = "Unknown"

    @property
    def warning(self) -> bool:
        """Its event is a Warning: something a person should look at."""
        return self not in _NORMAL

    @classmethod
    def of(cls, text: str) -> Reason | None:
        try:
            return cls(text)
        except ValueError:
            return None


_NORMAL = frozenset(
    {
        Reason.SCHEDULED,
        Reason.SUSPENDED,
        Reason.PRUNED,
        Reason.STARTING,
        Reason.RUNNING,
        Reason.COMPLETED,
        Reason.BACK_OFF,
    }
)


def is_warning(reason: str) -> bool:
    """Whether an event with this reason is a Warning (an unknown reason is one)."""
    known = Reason.of(reason)
    return known is None or known.warning
