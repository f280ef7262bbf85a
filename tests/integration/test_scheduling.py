"""A scheduling pass over the store: ready nodes and pending jobs from git become runs
bound to GPU indices; waiting jobs say why, once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from mlsm.controller.scheduling import assign
from mlsm.controller.sources import open_source
from mlsm.controller.syncing import Syncer
from mlsm.store import Event, Job, Node, Run, Store
from tests.integration.conftest import GitRepo

GRACE = dt.timedelta(seconds=20)


@pytest.fixture
def store(database_url: str) -> Store:
    store = Store.open(database_url)
    store.migrate()
    yield store
    store.dispose()


def manifest_node(name: str, gpu: str) -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: Node
        metadata: {{name: {name}, labels: {{gpu: {gpu}}}}}
        spec: {{runtimes: [venv], capacity: {{gpus: 2}}}}
    """


def manifest_job(name: str, gpus: int, *, selector: str = "", priority: int = 0) -> str:
    chosen = f"\n          nodeSelector: {{gpu: {selector}}}" if selector else ""
    return f"""
        apiVersion: mlsm/v1
        kind: TrainingJob
        metadata: {{name: {name}, owner: ada}}
        spec:
          runtime: {{venv: {{python: "3.11"}}}}
          command: [python, -c, "print(1)"]
          resources: {{gpus: {gpus}, cpu: 1}}
          priority: {priority}{chosen}
    """


def heartbeat(store: Store, name: str, *, gpus: int, at: dt.datetime) -> None:
    with store.write() as session:
        node = session.scalars(select(Node).where(Node.name == name)).one()
        node.last_heartbeat_at = at
        devices = [{"index": i, "uuid": f"GPU-{name}-{i}"} for i in range(gpus)]
        node.inventory = {"cpus": 8, "memory": 32 << 30, "runtimes": ["venv"], "gpus": devices}


def test_pending_jobs_are_bound_to_ready_nodes_and_the_rest_told_why(
    store: Store, repo: GitRepo, tmp_path: Path
) -> None:
    repo.write("nodes/a.yaml", manifest_node("a100-1", "a100"))
    repo.write("nodes/b.yaml", manifest_node("h100-1", "h100"))
    repo.write("nodes/c.yaml", manifest_node("h100-2", "h100"))
    repo.write("jobs/big.yaml", manifest_job("big", 2, selector="h100", priority=5))
    repo.write("jobs/small.yaml", manifest_job("small", 1, selector="h100"))
    repo.write("jobs/cpu.yaml", manifest_job("cpu", 0))
    repo.commit()
    assert Syncer(store, open_source(str(repo.root), state_dir=tmp_path)).sync().ok
    now = dt.datetime.now(dt.UTC)
    heartbeat(store, "a100-1", gpus=2, at=now)
    heartbeat(store, "h100-1", gpus=2, at=now)
    heartbeat(store, "h100-2", gpus=2, at=now - dt.timedelta(minutes=1))  # NotReady

    with store.write() as session:
        outcome = assign(session, grace=GRACE, now=now)
    assert (outcome.bound, outcome.waiting) == (2, 1)
    with store.read() as session:
        runs = {r.job.name: (r.node, r.gpus, r.phase, r.attempt)
                for r in session.scalars(select(Run))}  # fmt: skip
        jobs = {j.name: j for j in session.scalars(select(Job))}
        revisions = {n.name: n.assignment_revision for n in session.scalars(select(Node))}
    assert runs["big"] == ("h100-1", [0, 1], "Scheduled", 1)  # priority first
    assert runs["cpu"][0] == "h100-1"  # tightest fit: GPU-free work keeps a100-1 free
    assert jobs["big"].phase == "Scheduled"
    assert jobs["small"].phase == "Pending"
    waiting = next(c for c in jobs["small"].conditions if c["type"] == "Scheduled")
    assert (waiting["status"], waiting["reason"]) == ("False", "Unschedulable")
    assert waiting["message"] == (
        "0/3 nodes available: 1 didn't match the node selector, 1 insufficient GPUs, 1 not ready"
    )
    assert revisions == {"a100-1": 0, "h100-1": 2, "h100-2": 0}

    with store.write() as session:  # again: nothing new bound, nothing new said
        again = assign(session, grace=GRACE, now=now)
    assert again.bound == 0
    with store.read() as session:
        said = session.scalars(select(Event.reason).where(Event.name == "small")).all()
    assert list(said).count("FailedScheduling") == 1

    heartbeat(store, "h100-2", gpus=2, at=now)  # back: small fits there now
    with store.write() as session:
        assert assign(session, grace=GRACE, now=now).bound == 1
    with store.read() as session:
        small = session.scalars(select(Run).join(Job).where(Job.name == "small")).one()
    assert (small.node, small.gpus) == ("h100-2", [0])
