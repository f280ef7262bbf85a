"""Time-driven changes on SQLite and PostgreSQL, with an injected clock: retries with
backoff, NotReady and Lost nodes, maxDuration and suspend."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mlsm.controller.leasing import Leases, check_leases
from mlsm.controller.lifecycle import report_run, switch_run
from mlsm.controller.scheduling import assign
from mlsm.controller.sources import open_source
from mlsm.controller.syncing import Syncer
from mlsm.schemas.phases import RunPhase
from mlsm.store import Event, Job, Node, Run, Store
from tests.integration.conftest import GitRepo
from tests.integration.test_scheduling import manifest_node

LEASES = Leases(grace=dt.timedelta(seconds=20), lost=dt.timedelta(minutes=5))
T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def job_yaml(name: str, extra: str = "") -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: TrainingJob
        metadata: {{name: {name}, owner: ada}}
        spec:
          runtime: {{venv: {{python: "3.11"}}}}
          command: [python, -c, "print(1)"]
          resources: {{gpus: 1}}{extra}
    """


@pytest.fixture
def store(database_url: str, repo: GitRepo, tmp_path: Path) -> Iterator[Store]:
    store = Store.open(database_url)
    store.migrate()
    repo.write("nodes/n1.yaml", manifest_node("n1", "a100"))
    repo.write("nodes/n2.yaml", manifest_node("n2", "a100"))
    repo.write("jobs/retry.yaml", job_yaml("retry", "\n          retries: 1"))
    repo.commit()
    assert Syncer(store, open_source(str(repo.root), state_dir=tmp_path)).sync().ok
    beat(store, "n1", T0)
    beat(store, "n2", T0)
    yield store
    store.dispose()


def beat(store: Store, name: str, at: dt.datetime) -> None:
    with store.write() as session:
        node = session.scalars(select(Node).where(Node.name == name)).one()
        node.last_heartbeat_at = at
        node.inventory = {"cpus": 8, "gpus": [{"index": 0}, {"index": 1}], "runtimes": ["venv"]}


def bind(store: Store, now: dt.datetime) -> int:
    with store.write() as session:
        return assign(session, grace=LEASES.grace, now=now).bound


def the_run(store: Store, job: str) -> Run:
    with store.read() as session:
        return session.scalars(select(Run).join(Job).where(Job.name == job)
                               .order_by(Run.attempt.desc())).first()  # type: ignore[return-value]  # fmt: skip


def the_job(store: Store, name: str) -> Job:
    with store.read() as session:
        return session.scalars(select(Job).where(Job.name == name)).one()


def fail(store: Store, name: str, now: dt.datetime) -> None:
    with store.write() as session:
        job = session.scalars(select(Job).where(Job.name == name)).one()
        run = max(job.runs, key=lambda r: r.attempt)
        assert report_run(session, run, RunPhase.FAILED, LEASES, reason="Error",
                          message="exit code 3", exit_code=3, now=now)  # fmt: skip


def test_a_failed_run_is_retried_after_a_backoff_then_the_job_fails(store: Store) -> None:
    assert bind(store, T0) == 1
    fail(store, "retry", T0)
    job = the_job(store, "retry")
    assert (job.phase, job.restarts, job.next_attempt_at) == (
        "Pending", 1, T0 + dt.timedelta(seconds=10)
    )  # fmt: skip
    beat(store, "n1", T0 + dt.timedelta(seconds=5))
    beat(store, "n2", T0 + dt.timedelta(seconds=5))
    assert bind(store, T0 + dt.timedelta(seconds=5)) == 0  # still backing off
    later = T0 + dt.timedelta(seconds=11)
    beat(store, "n1", later)
    assert bind(store, later) == 1
    assert the_run(store, "retry").attempt == 2
    fail(store, "retry", later)
    assert the_job(store, "retry").phase == "Failed"  # out of retries


def test_a_silent_node_goes_not_ready_then_its_runs_are_lost_and_rescheduled(store: Store) -> None:
    assert bind(store, T0) == 1
    first = the_run(store, "retry")
    with store.write() as session:
        assert check_leases(session, LEASES, T0 + dt.timedelta(seconds=30))
    with store.read() as session:
        silent = session.scalars(select(Node).where(Node.name == first.node)).one()
        ready = next(c for c in silent.conditions if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NodeNotReady")
    assert "retried elsewhere after 300s" in ready["message"]
    assert the_run(store, "retry").phase == "Scheduled"  # NotReady alone stops nothing
    other = "n2" if first.node == "n1" else "n1"
    lost_at = T0 + dt.timedelta(minutes=6)
    beat(store, other, lost_at)
    with store.write() as session:
        check_leases(session, LEASES, lost_at)
    with store.read() as session:
        lost = session.get(Run, first.id)
        reasons = list(session.scalars(select(Event.reason).where(Event.name == "retry")))
    assert lost is not None
    assert (lost.phase, lost.reason) == ("Lost", "NodeLost")
    assert "Lost" in reasons
    assert the_job(store, "retry").phase == "Pending"
    assert bind(store, lost_at) == 1
    assert the_run(store, "retry").node == other  # elsewhere


def test_max_duration_and_suspend_stop_runs(store: Store, repo: GitRepo, tmp_path: Path) -> None:
    repo.write("jobs/short.yaml", job_yaml("short", "\n          maxDuration: 1m"))
    repo.write("jobs/pause.yaml", job_yaml("pause"))
    repo.remove("jobs/retry.yaml")
    repo.commit()
    assert Syncer(store, open_source(str(repo.root), state_dir=tmp_path)).sync().ok
    assert bind(store, T0) == 2
    with store.write() as session:
        for run in session.scalars(select(Run).where(Run.phase == "Scheduled")):
            switch_run(session, run, RunPhase.RUNNING, now=T0)
    repo.write("jobs/pause.yaml", job_yaml("pause", "\n          suspend: true"))
    repo.commit()
    assert Syncer(store, open_source(str(repo.root), state_dir=tmp_path)).sync().ok
    later = T0 + dt.timedelta(minutes=2)
    beat(store, "n1", later)
    beat(store, "n2", later)
    with store.write() as session:
        assert check_leases(session, LEASES, later)
    short, pause = the_run(store, "short"), the_run(store, "pause")
    assert (short.phase, short.reason) == ("Failed", "DeadlineExceeded")
    assert (pause.phase, pause.reason) == ("Cancelled", "Suspended")
    assert the_job(store, "pause").phase == "Pending"
    assert bind(store, later) == 0  # suspended jobs wait
