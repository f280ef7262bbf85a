"""The lifecycle's tables: which moves a job and a run may make, which phases are
finished or active, and which reasons are warnings."""

from __future__ import annotations

import pytest

from mlsm.schemas.phases import JOB_MOVES, RUN_MOVES, JobPhase, Reason, RunPhase, is_warning

J, R = JobPhase, RunPhase


@pytest.mark.parametrize(
    ("start", "end", "allowed"),
    [
        pytest.param(J.PENDING, J.SCHEDULED, True, id="bound"),
        pytest.param(J.PENDING, J.RUNNING, False, id="pending-cannot-run-unbound"),
        pytest.param(J.SCHEDULED, J.PENDING, True, id="scheduled-back-to-pending"),
        pytest.param(J.RUNNING, J.STARTING, True, id="a-late-rank-starting"),
        pytest.param(J.RUNNING, J.PENDING, True, id="retried"),
        pytest.param(J.RUNNING, J.SUCCEEDED, True, id="succeeded"),
        pytest.param(J.SUCCEEDED, J.PENDING, False, id="succeeded-is-final"),
        pytest.param(J.FAILED, J.PENDING, False, id="failed-is-final"),
        pytest.param(J.CANCELLED, J.SCHEDULED, False, id="cancelled-is-final"),
        pytest.param(J.PENDING, J.CANCELLED, True, id="pending-cancelled"),
    ],
)
def test_job_moves(start: JobPhase, end: JobPhase, allowed: bool) -> None:
    assert (end in JOB_MOVES[start]) is allowed


@pytest.mark.parametrize(
    ("start", "end", "allowed"),
    [
        pytest.param(R.SCHEDULED, R.RUNNING, True, id="started"),
        pytest.param(R.SCHEDULED, R.SUCCEEDED, True, id="a-short-run-reports-its-end-first"),
        pytest.param(R.RUNNING, R.STARTING, False, id="never-backwards"),
        pytest.param(R.RUNNING, R.LOST, True, id="lost"),
        pytest.param(R.LOST, R.RUNNING, False, id="lost-is-final"),
        pytest.param(R.SUCCEEDED, R.FAILED, False, id="succeeded-is-final"),
        pytest.param(R.CANCELLED, R.RUNNING, False, id="cancelled-is-final"),
    ],
)
def test_run_moves(start: RunPhase, end: RunPhase, allowed: bool) -> None:
    assert (end in RUN_MOVES[start]) is allowed


def test_every_phase_has_a_row_and_finished_phases_move_nowhere() -> None:
    assert set(JOB_MOVES) == set(JobPhase)
    assert set(RUN_MOVES) == set(RunPhase)
    for phase in JobPhase:
        assert (JOB_MOVES[phase] == frozenset()) is phase.finished
    for phase in RunPhase:
        assert (RUN_MOVES[phase] == frozenset()) is phase.finished
        assert not (phase.finished and phase.active)
    assert RunPhase.active_phases() == {R.SCHEDULED, R.STARTING, R.RUNNING}
    assert RunPhase.LOST.finished


@pytest.mark.parametrize(
    ("reason", "warning"),
    [
        pytest.param("Completed", False, id="completed"),
        pytest.param("Scheduled", False, id="scheduled"),
        pytest.param("OOMKilled", True, id="oom"),
        pytest.param("DeadlineExceeded", True, id="deadline"),
        pytest.param("SiblingFailed", True, id="sibling"),
        pytest.param("SomethingAnAgentSaid", True, id="unknown-is-a-warning"),
    ],
)
def test_reasons_know_whether_they_are_warnings(reason: str, warning: bool) -> None:
    assert is_warning(reason) is warning
    known = Reason.of(reason)
    assert known is None or known.warning is warning
