"""A job as the aggregate of its runs, on a real store: a 2-node job is Running only
when both ranks run and Succeeded only when both succeed; one failed or lost rank
stops the other and retries the job as one new attempt; and, over random sequences
of reports and node losses, the lifecycle's invariants hold."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from mlsm.controller.lifecycle import (
    Leases,
    cancel_job,
    current_runs,
    lose_run,
    report_run,
)
from mlsm.controller.scheduling import assign
from mlsm.schemas.phases import JobPhase, RunPhase
from mlsm.store import Job, Node, Run, Store
from mlsm.store.types import utcnow

LEASES = Leases(backoff=dt.timedelta(seconds=10))
NODES = ("n0", "n1", "n2")
names = itertools.count()


def _manifest(kind: str, name: str, spec: dict[str, object]) -> dict[str, object]:
    return {"apiVersion": "mlsm/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('lifecycle') / 'mlsm.db'}")
    store.migrate()
    with store.write() as session:
        for name in NODES:
            session.add(
                Node(
                    uid=f"uid-{name}",
                    name=name,
                    spec_hash="x",
                    manifest=_manifest("Node", name, {"runtimes": ["venv"]}),
                    conditions=[{"type": "Ready", "status": "True"}],
                    inventory={
                        "cpus": 64,
                        "gpus": [{"index": 0}, {"index": 1}],
                        "runtimes": ["venv"],
                    },
                )
            )
    yield store
    store.dispose()


def new_job(store: Store, *, nodes: int, retries: int) -> str:
    name = f"job-{next(names)}"
    spec = {
        "runtime": {"venv": {"python": "3.11"}},
        "command": ["true"],
        "nodes": nodes,
        "retries": retries,
        "resources": {"gpus": 1},
    }
    with store.write() as session:
        session.add(
            Job(
                uid=f"uid-{name}",
                name=name,
                spec_hash="x",
                owner="ada",
                manifest=_manifest("TrainingJob", name, spec),
            )
        )
    return name


def bind(store: Store, now: dt.datetime) -> None:
    with store.write() as session:
        for node in session.scalars(select(Node)):
            node.last_heartbeat_at = now
        assign(session, grace=dt.timedelta(seconds=20), now=now)


def job_of(session: object, name: str) -> Job:
    return session.scalars(select(Job).where(Job.name == name)).one()  # type: ignore[attr-defined, no-any-return]


def report(store: Store, name: str, rank: int, phase: RunPhase, now: dt.datetime) -> bool:
    with store.write() as session:
        runs = sorted(current_runs(job_of(session, name)), key=lambda r: r.node or "")
        return report_run(
            session,
            runs[rank],
            phase,
            LEASES,
            reason=phase.value,
            message="",
            exit_code=0 if phase == RunPhase.SUCCEEDED else None,
            now=now,
        )


def phases(store: Store, name: str) -> tuple[str, list[tuple[int, str]]]:
    with store.read() as session:
        job = job_of(session, name)
        return job.phase, sorted((r.attempt, r.phase) for r in job.runs)


def test_a_two_node_job_runs_and_succeeds_only_with_both_ranks(store: Store) -> None:
    name = new_job(store, nodes=2, retries=0)
    now = utcnow()
    bind(store, now)
    assert phases(store, name) == ("Scheduled", [(1, "Scheduled"), (1, "Scheduled")])
    report(store, name, 0, RunPhase.RUNNING, now)
    assert phases(store, name)[0] == "Scheduled"  # one rank is still only bound
    report(store, name, 1, RunPhase.RUNNING, now)
    assert phases(store, name)[0] == "Running"
    report(store, name, 0, RunPhase.SUCCEEDED, now)
    assert phases(store, name)[0] == "Running"  # the first to finish does not end the job
    report(store, name, 1, RunPhase.SUCCEEDED, now)
    assert phases(store, name) == ("Succeeded", [(1, "Succeeded"), (1, "Succeeded")])


def test_one_failed_rank_stops_the_other_and_retries_as_one_new_attempt(store: Store) -> None:
    name = new_job(store, nodes=2, retries=1)
    now = utcnow()
    bind(store, now)
    report(store, name, 0, RunPhase.RUNNING, now)
    report(store, name, 1, RunPhase.RUNNING, now)
    report(store, name, 1, RunPhase.FAILED, now)
    job, runs = phases(store, name)
    assert job == "Pending"
    assert sorted(p for _, p in runs) == ["Cancelled", "Failed"]  # the survivor ended too
    with store.read() as session:
        survivor = next(r for r in job_of(session, name).runs if r.phase == "Cancelled")
        assert survivor.reason == "SiblingFailed"
        assert survivor.finished_at is not None
    later = now + dt.timedelta(seconds=11)
    bind(store, later)
    assert [a for a, _ in phases(store, name)[1]] == [1, 1, 2, 2]  # attempt 2, not 3
    # the survivor's agent reports in late: fenced
    with store.write() as session:
        old = next(
            r for r in job_of(session, name).runs if r.attempt == 1 and r.reason == "SiblingFailed"
        )
        assert not report_run(
            session,
            old,
            RunPhase.RUNNING,
            LEASES,
            reason="Running",
            message="",
            exit_code=None,
            now=later,
        )
    report(store, name, 0, RunPhase.FAILED, later)
    assert phases(store, name)[0] == "Failed"  # out of retries
    assert all(p != "Running" for _, p in phases(store, name)[1])


def test_a_lost_rank_reschedules_the_whole_job(store: Store) -> None:
    name = new_job(store, nodes=2, retries=0)
    now = utcnow()
    bind(store, now)
    with store.write() as session:
        run = current_runs(job_of(session, name))[0]
        lose_run(session, run, LEASES, silent=dt.timedelta(minutes=6), now=now)
    job, runs = phases(store, name)
    assert job == "Pending"
    assert sorted(p for _, p in runs) == ["Cancelled", "Lost"]


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["report", "report", "report", "lose", "bind", "stale"]),
        st.integers(0, 2),
        st.sampled_from([RunPhase.STARTING, RunPhase.RUNNING, RunPhase.SUCCEEDED, RunPhase.FAILED]),
    ),
    max_size=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(nodes=st.integers(1, 3), retries=st.integers(0, 2), actions=ACTIONS)
def test_random_reports_keep_the_lifecycle_whole(
    store: Store, nodes: int, retries: int, actions: list[tuple[str, int, RunPhase]]
) -> None:
    name = new_job(store, nodes=nodes, retries=retries)
    now = utcnow()
    bind(store, now)
    for step, (action, rank, phase) in enumerate(actions):
        now += dt.timedelta(minutes=1)  # past any backoff
        with store.write() as session:
            job = job_of(session, name)
            runs = sorted(current_runs(job), key=lambda r: r.node or "")
            old = [r for r in job.runs if r not in runs]
            if action == "bind":
                pass
            elif action == "stale" and old:
                assert not report_run(
                    session,
                    old[rank % len(old)],
                    phase,
                    LEASES,
                    reason="late",
                    message="",
                    exit_code=None,
                    now=now,
                )
            elif action == "lose" and runs and RunPhase(runs[rank % len(runs)].phase).active:
                lose_run(
                    session, runs[rank % len(runs)], LEASES, silent=dt.timedelta(hours=1), now=now
                )
            elif action == "report" and runs:
                run = runs[rank % len(runs)]
                was_active = RunPhase(run.phase).active
                accepted = report_run(
                    session,
                    run,
                    phase,
                    LEASES,
                    reason=phase.value,
                    message="",
                    exit_code=None,
                    now=now,
                )
                assert accepted is was_active
        bind(store, now)
        with store.read() as session:
            job = job_of(session, name)
            attempts = sorted({r.attempt for r in job.runs})
            assert attempts == list(range(1, len(attempts) + 1)), f"step {step}: {attempts}"
            for attempt in attempts:  # all or nothing: one run per node, per attempt
                assert sum(r.attempt == attempt for r in job.runs) == nodes
            active = [r for r in job.runs if RunPhase(r.phase).active]
            if JobPhase(job.phase).finished:
                assert active == [], f"step {step}: {job.phase} with active runs"
            assert all(r in current_runs(job) for r in active), "an old attempt still runs"
            if active:
                assert job.phase in ("Scheduled", "Starting", "Running")
            current = current_runs(job)
            if current and all(r.phase == "Succeeded" for r in current):
                assert job.phase == "Succeeded"
            for r in job.runs:
                assert (r.finished_at is not None) is RunPhase(r.phase).finished
        with store.read() as session:  # no GPU bound twice, none held by an ended run
            held = [
                (r.node, g)
                for r in session.scalars(select(Run))
                if RunPhase(r.phase).active
                for g in r.gpus
            ]
            assert len(held) == len(set(held))
    with store.write() as session:  # free the nodes for the next example
        job = job_of(session, name)
        if not JobPhase(job.phase).finished:
            cancel_job(session, job, reason="Pruned", message="test over", now=now)
