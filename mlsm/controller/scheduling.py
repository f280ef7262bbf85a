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
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlsm import planning, schemas
from mlsm.controller.events import condition, record, set_condition
from mlsm.controller.lifecycle import Leases, job_spec, next_attempt, switch_job
from mlsm.schemas.phases import JobPhase, RunPhase
from mlsm.schemas.sweeps import SWEEP_LABEL
from mlsm.store import Dataset, Job, Node, Run
from mlsm.store.types import utcnow

__all__ = ["AssignOutcome", "Preview", "assign", "preview"]


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

    def taints(effect: str) -> frozenset[tuple[str, str]]:
        return frozenset(
            (t["key"], t.get("value", ""))
            for t in spec.get("taints", [])
            if t.get("effect", "NoSchedule") == effect
        )

    return planning.NodeView(
        name=node.name,
        ready=ready,
        unschedulable=bool(spec.get("unschedulable", False)),
        labels=node.labels,
        runtimes=frozenset(runtimes),
        no_schedule=taints("NoSchedule"),
        prefer_no_schedule=taints("PreferNoSchedule"),
        free_gpus=tuple(i for i in gpus if i not in used),
        free_cpu=max(cpu, 0.0),
        free_memory=memory,
        datasets=_present(node, checksums),
        checksums=frozenset(
            (name, str(found["checksum"]))
            for name, found in (inventory.get("datasets", {}) or {}).items()
            if isinstance(found, dict) and found.get("checksum")
        ),
    )


@dataclass(slots=True)
class _Queue:
    """What a scheduling pass starts from: the pending jobs and the nodes as they are."""

    pending: list[tuple[Job, schemas.TrainingJob]]
    nodes: list[Node]
    views: list[planning.NodeView]
    in_use: Counter[str]
    """GPUs each owner's active runs hold (fair share)."""
    groups: Counter[str] = field(default_factory=Counter)
    """Active children of each sweep (its parallelism)."""

    def waiting(self) -> list[planning.PendingJob]:
        return [
            planning.PendingJob.of(s, owner=j.owner, submitted=j.created_at.timestamp())
            for j, s in self.pending
        ]


def _queue(
    session: Session,
    *,
    grace: dt.timedelta,
    now: dt.datetime,
    always: bool = False,
    without: frozenset[str] = frozenset(),
) -> _Queue:
    """The pass's inputs; the nodes are read only when a job waits, or `always`. The
    jobs named in `without` are taken as gone: out of the queue, their GPUs free."""
    candidates = session.scalars(select(Job).where(
        Job.deleted_at.is_(None), Job.phase == JobPhase.PENDING, Job.generation > 0,
    )).all()  # fmt: skip
    pending: list[tuple[Job, schemas.TrainingJob]] = []
    for job in candidates:
        if job.name in without:
            continue
        spec = job_spec(job)
        if spec is None or spec.spec.suspend:
            continue
        if job.next_attempt_at is not None and job.next_attempt_at > now:
            continue
        pending.append((job, spec))
    if not pending and not always:  # the usual pass: nothing waits, so no node needs reading
        return _Queue([], [], [], Counter())
    nodes = list(
        session.scalars(select(Node).where(Node.deleted_at.is_(None), Node.generation > 0))
    )
    active_runs = select(Run, Job).join(Job).where(Run.phase.in_(RunPhase.active_phases()))
    active = [(row[0], row[1]) for row in session.execute(active_runs)]
    held: dict[str, list[tuple[Run, schemas.TrainingJob | None]]] = {}
    in_use: Counter[str] = Counter()
    sweeping: dict[str, str] = {}
    for run, job in active:
        if job.name in without:
            continue
        spec = job_spec(job)
        held.setdefault(run.node or "", []).append((run, spec))
        in_use[job.owner] += len(run.gpus)
        if SWEEP_LABEL in (job.labels or {}):
            sweeping[job.name] = job.labels[SWEEP_LABEL]
    groups = Counter(sweeping.values())  # jobs, not runs: a job on 2 nodes counts once
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
    return _Queue(pending, nodes, views, in_use, groups)


def assign(
    session: Session, *, grace: dt.timedelta, now: dt.datetime | None = None
) -> AssignOutcome:
    """Bind what can run now. The caller commits (inside the scheduling lock)."""
    now = now or utcnow()
    queue = _queue(session, grace=grace, now=now)
    if not queue.pending:
        return AssignOutcome(0, 0, frozenset())
    pending, nodes = queue.pending, queue.nodes
    result = planning.schedule(
        queue.waiting(), queue.views, gpus_in_use=queue.in_use, groups_active=queue.groups
    )
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


@dataclass(slots=True)
class Preview:
    """What the next scheduling pass would do if proposed jobs were merged now: the
    live queue and nodes, read and never written (`POST /api/v1/plan`)."""

    runs_on: dict[str, list[str]]
    """A proposed job that would start now -> its nodes."""
    waiting: dict[str, str]
    """A proposed job that would wait -> the scheduler's own words."""
    queue: dict[str, int]
    """A proposed job -> its place among every pending job (1: considered first)."""
    queued: int
    """How many jobs would be pending with the proposed ones."""
    delays: dict[str, list[str]]
    """A proposed job -> the queued jobs it would delay, fair share included
    ("ada's resnet: would no longer start now", "bob's vit: 2nd -> 3rd in the queue")."""
    settled: dict[str, str]
    """A proposed job that exists and is not pending -> why the change starts nothing now."""


def preview(
    session: Session,
    proposed: list[tuple[schemas.TrainingJob, str]],
    *,
    removed: frozenset[str] = frozenset(),
    grace: dt.timedelta,
    now: dt.datetime | None = None,
) -> Preview:
    """Schedule the live queue twice, without and with the proposed (job, owner)s: a
    proposed job replaces a pending one of its name (keeping its place by submission),
    a new one queues after everything pending, and one that runs or has finished
    starts nothing (a spec change reaches a job's next attempt, not its running one).
    The `removed` jobs are taken as cancelled (the merge prunes them): their GPUs free."""
    now = now or utcnow()
    queue = _queue(session, grace=grace, now=now, always=True, without=removed)
    names = [job.metadata.name for job, _ in proposed]
    rows = {
        row.name: row
        for start in range(0, len(names), 500)
        for row in session.scalars(
            select(Job).where(Job.deleted_at.is_(None), Job.name.in_(names[start : start + 500]))
        )
    }
    base = queue.waiting()
    submitted = {j.name: j.submitted for j in base}
    settled: dict[str, str] = {}
    mine: dict[str, planning.PendingJob] = {}
    after = now.timestamp()
    for index, (job, owner) in enumerate(proposed):
        name, row = job.metadata.name, rows.get(job.metadata.name)
        if row is not None and row.phase != JobPhase.PENDING:
            settled[name] = _settled(row)
            continue
        if job.spec.suspend:
            settled[name] = "suspended (spec.suspend): it waits until that is false"
            continue
        when = submitted.get(name, after + index)
        mine[name] = planning.PendingJob.of(job, owner=row.owner if row else owner, submitted=when)
    others = [j for j in base if j.name not in mine]
    before = planning.schedule(
        base, queue.views, gpus_in_use=queue.in_use, groups_active=queue.groups
    )
    with_mine = planning.schedule(
        [*others, *mine.values()], queue.views, gpus_in_use=queue.in_use, groups_active=queue.groups
    )
    place_before = {name: i for i, name in enumerate(before.order, start=1)}
    place = {name: i for i, name in enumerate(with_mine.order, start=1)}
    bound_before = {b.job for b in before.bindings}
    runs_on = {b.job: [p.node for p in b.placements] for b in with_mine.bindings if b.job in mine}
    delays: dict[str, list[str]] = {name: [] for name in mine}
    owners = {j.name: j.owner for j in others}
    for other in others:
        name = other.name
        if name in bound_before and name not in with_mine.waiting:
            continue  # starts now either way
        if name in bound_before:
            said = "would no longer start now"
        elif place[name] > place_before[name]:
            said = f"{_ordinal(place_before[name])} -> {_ordinal(place[name])} in the queue"
        else:
            continue
        who = f"{owners[name]}'s {name}" if owners[name] else name
        for ahead in mine:  # blame the proposed jobs the pass now considers before it
            if place[ahead] < place[name]:
                delays[ahead].append(f"{who}: {said}")
    return Preview(
        runs_on=runs_on,
        waiting={n: why for n, why in with_mine.waiting.items() if n in mine},
        queue={n: place[n] for n in mine},
        queued=len(with_mine.order),
        delays=delays,
        settled=settled,
    )


def _settled(row: Job) -> str:
    phase = JobPhase(row.phase)
    if phase.finished:
        return f"{phase.value}: a finished job does not run again (rename it to rerun)"
    return f"{phase.value}: the change reaches its next attempt, not the one running"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
