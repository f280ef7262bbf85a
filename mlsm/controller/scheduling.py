"""A scheduling pass: pending jobs and ready nodes from the store, through the pure
scheduler, into runs bound to nodes and GPU indices, in one write transaction.

A node is Ready while its last heartbeat is within the grace period; what is free
on it is its reported inventory minus what active runs hold. A job is pending when
it has a valid spec, is not suspended, and its retry backoff has passed. Waiting
jobs get `Scheduled=False`, reason `Unschedulable`, and the scheduler's message; the
condition and its event are written only when the message changes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlsm import planning, schemas
from mlsm.controller.events import condition, record, set_condition
from mlsm.controller.lifecycle import Leases, job_spec, next_attempt, switch_job
from mlsm.schemas.phases import JobPhase, RunPhase
from mlsm.store import Dataset, Job, Node, Run
from mlsm.store.types import utcnow

__all__ = ["AssignOutcome", "assign"]


@dataclass(frozen=True, slots=True)
class AssignOutcome:
    bound: int
    waiting: int
    nodes_touched: frozenset[str]


def _present(node: Node, checksums: dict[str, str | None]) -> frozenset[str]:
    """Datasets the node's agent reports holding, whose checksum matches the catalog's
    where the catalog gives one."""
    reported: dict[str, Any] = node.inventory.get("datasets", {}) or {}
    return frozenset(
        name for name, found in reported.items()
        if name in checksums and checksums[name] in (None, (found or {}).get("checksum"))
    )  # fmt: skip


def _node_view(
    node: Node,
    held: list[tuple[Run, schemas.TrainingJob | None]],
    ready: bool,
    checksums: dict[str, str | None],
) -> planning.NodeView:
    spec: dict[str, Any] = node.manifest.get("spec", {})
    inventory = node.inventory
    gpus = [int(g["index"]) for g in inventory.get("gpus", [])]
    used = {int(i) for run, _ in held for i in run.gpus}
    cpu = float(inventory.get("cpus", 0)) - sum(
        (j.spec.resources.cpu if j else 0.0) for _, j in held
    )
    memory = inventory.get("memory")
    if memory is not None:
        memory = int(memory) - sum((j.spec.resources.memory or 0 if j else 0) for _, j in held)
    runtimes = set(spec.get("runtimes", ["venv", "docker"]))
    if "runtimes" in inventory:
        runtimes &= set(inventory["runtimes"])
    taints = frozenset(
        (t["key"], t.get("value", ""))
        for t in spec.get("taints", [])
        if t.get("effect", "NoSchedule") == "NoSchedule"
    )
    return planning.NodeView(
        name=node.name,
        ready=ready,
        unschedulable=bool(spec.get("unschedulable", False)),
        labels=node.labels,
        runtimes=frozenset(runtimes),
        no_schedule=taints,
        free_gpus=tuple(i for i in gpus if i not in used),
        free_cpu=max(cpu, 0.0),
        free_memory=memory,
        datasets=_present(node, checksums),
    )


def assign(
    session: Session, *, grace: dt.timedelta, now: dt.datetime | None = None
) -> AssignOutcome:
    """Bind what can run now. The caller commits (inside the scheduling lock)."""
    now = now or utcnow()
    candidates = session.scalars(select(Job).where(
        Job.deleted_at.is_(None), Job.phase == JobPhase.PENDING, Job.generation > 0,
    )).all()  # fmt: skip
    pending: list[tuple[Job, schemas.TrainingJob]] = []
    for job in candidates:
        spec = job_spec(job)
        if spec is None or spec.spec.suspend:
            continue
        if job.next_attempt_at is not None and job.next_attempt_at > now:
            continue
        pending.append((job, spec))
    if not pending:  # the usual pass: nothing waits, so no node needs reading
        return AssignOutcome(0, 0, frozenset())
    nodes = list(
        session.scalars(select(Node).where(Node.deleted_at.is_(None), Node.generation > 0))
    )
    active_runs = select(Run, Job).join(Job).where(Run.phase.in_(RunPhase.active_phases()))
    active = [(row[0], row[1]) for row in session.execute(active_runs)]
    held: dict[str, list[tuple[Run, schemas.TrainingJob | None]]] = {}
    in_use: Counter[str] = Counter()
    for run, job in active:
        spec = job_spec(job)
        held.setdefault(run.node or "", []).append((run, spec))
        in_use[job.owner] += len(run.gpus)
    checksums = {
        row.name: (row.manifest or {}).get("spec", {}).get("checksum")
        for row in session.scalars(
            select(Dataset).where(Dataset.deleted_at.is_(None), Dataset.generation > 0)
        )
    }
    leases = Leases(grace=grace)
    views = [
        _node_view(n, held.get(n.name, []), leases.is_ready(n.last_heartbeat_at, now), checksums)
        for n in nodes
    ]
    waiting = [
        planning.PendingJob.of(s, owner=j.owner, submitted=j.created_at.timestamp())
        for j, s in pending
    ]
    result = planning.schedule(waiting, views, gpus_in_use=in_use)
    jobs = {job.name: job for job, _ in pending}
    by_node = {n.name: n for n in nodes}
    touched: set[str] = set()
    for binding in result.bindings:
        job = jobs[binding.job]
        attempt = next_attempt(job)
        for rank, placement in enumerate(binding.placements):  # node rank 0 hosts the rendezvous
            session.add(Run(id=str(uuid.uuid4()), job=job, attempt=attempt, node=placement.node,
                            rank=rank, gpus=list(placement.gpus), phase=RunPhase.SCHEDULED,
                            reason="Scheduled", created_at=now))  # fmt: skip
            by_node[placement.node].assignment_revision += 1
            touched.add(placement.node)
        where = ", ".join(f"{p.node} (GPUs {list(p.gpus)})" if p.gpus else p.node
                          for p in binding.placements)  # fmt: skip
        switch_job(session, job, JobPhase.SCHEDULED, reason="Scheduled",
                      message=f"bound to {where}", now=now)  # fmt: skip
    for name, message in result.waiting.items():
        job = jobs[name]
        known = condition(job.conditions, "Scheduled") or {}
        if known.get("status") == "False" and known.get("message") == message:
            continue  # nothing new to say: no write
        job.conditions = set_condition(job.conditions, "Scheduled", False, reason="Unschedulable",
                                       message=message, now=now)  # fmt: skip
        record(session, job, "FailedScheduling", message, warning=True, actor="scheduler", now=now)
    return AssignOutcome(len(result.bindings), len(result.waiting), frozenset(touched))
