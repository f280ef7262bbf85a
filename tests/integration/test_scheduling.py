"""A scheduling pass over the store: ready nodes and pending jobs from git become runs
bound to GPU indices; waiting jobs say why, once."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from mlsm import schemas
from mlsm.controller.scheduling import assign, preview
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


def owned_job(name: str, owner: str, gpus: int, selector: str, priority: int = 0) -> str:
    return manifest_job(name, gpus, selector=selector, priority=priority).replace(
        "owner: ada", f"owner: {owner}"
    )


def test_a_preview_places_proposed_jobs_among_the_live_queue_and_writes_nothing(
    store: Store, repo: GitRepo, tmp_path: Path
) -> None:
    """`POST /api/v1/plan`'s pass: the live nodes and queue, scheduled without and with
    the proposed jobs, to say where they run, why they wait, and whom they delay."""
    repo.write("nodes/a.yaml", manifest_node("a100-1", "a100"))
    repo.write("nodes/b.yaml", manifest_node("h100-1", "h100"))
    repo.write("nodes/c.yaml", manifest_node("h100-2", "h100"))
    repo.write("jobs/running.yaml", owned_job("running", "ada", 2, "a100"))
    repo.write("jobs/bob-1.yaml", owned_job("bob-1", "bob", 2, "h100"))
    repo.commit()
    syncer = Syncer(store, open_source(str(repo.root), state_dir=tmp_path))
    assert syncer.sync().ok
    now = dt.datetime.now(dt.UTC)
    heartbeat(store, "a100-1", gpus=2, at=now)
    heartbeat(store, "h100-1", gpus=2, at=now)
    with store.write() as session:
        assert assign(session, grace=GRACE, now=now).bound == 2  # running, bob-1: all GPUs
    repo.write("jobs/bob-2.yaml", owned_job("bob-2", "bob", 1, "a100"))
    repo.write("jobs/carol-1.yaml", owned_job("carol-1", "carol", 1, "a100"))
    repo.write("jobs/late.yaml", owned_job("late", "eve", 1, "h100"))
    repo.commit()
    assert syncer.sync().ok
    with store.write() as session:
        assert assign(session, grace=GRACE, now=now).bound == 0
    heartbeat(store, "h100-2", gpus=1, at=now)  # late would start there at the next pass

    def proposed(text: str) -> schemas.TrainingJob:
        return schemas.TrainingJob.model_validate(yaml.safe_load(textwrap.dedent(text)))

    urgent = proposed(owned_job("urgent", "dan", 1, "h100", priority=10))
    dans = proposed(owned_job("dan-gpu", "dan", 1, "a100"))
    cpu = proposed(owned_job("dan-cpu", "dan", 0, "h100"))
    changed = proposed(owned_job("running", "ada", 1, "a100"))
    with store.read() as session:
        counts = (
            len(session.scalars(select(Run)).all()),
            len(session.scalars(select(Event)).all()),
        )
        found = preview(session, [(urgent, "dan"), (dans, "dan"), (cpu, "dan"), (changed, "ada")],
                        grace=GRACE, now=now)  # fmt: skip
    assert found.runs_on == {"urgent": ["h100-2"], "dan-cpu": ["h100-1"]}
    assert found.waiting == {"dan-gpu": "0/3 nodes available: 2 didn't match the node selector, "
                             "1 insufficient GPUs"}  # fmt: skip
    assert found.queue["urgent"] == 1  # priority first
    assert found.queued == 6  # bob-2, carol-1, late and three proposed
    assert found.settled == {
        "running": "Scheduled: the change reaches its next attempt, not the one running"
    }
    assert set(found.delays["urgent"]) == {
        "eve's late: would no longer start now",
        "carol's carol-1: 1st -> 2nd in the queue",
        "bob's bob-2: 3rd -> 6th in the queue",
    }
    assert "bob's bob-2: 3rd -> 6th in the queue" in found.delays["dan-gpu"]
    assert not any("carol" in d or "late" in d for d in found.delays["dan-gpu"])
    with store.read() as session:  # read only: nothing bound, nothing said
        after = (
            len(session.scalars(select(Run)).all()),
            len(session.scalars(select(Event)).all()),
        )
    assert after == counts
