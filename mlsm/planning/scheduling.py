"""Where pending jobs run: a pure function of the jobs, the nodes and what is in use.

    result = schedule(pending, nodes, gpus_in_use={"ada": 2})

Order: higher priority first; at equal priority the owner with fewer GPUs in use
goes first (fair share, updated as this pass binds jobs); then submission order.
A job goes only to a node that is Ready and schedulable, matches its nodeSelector,
tolerates the node's NoSchedule taints, offers its runtime, holds its dataset (as
the node's agent reports; with the checksum `datasetChecksum` pins), and has the
GPUs, CPU and memory free; among those, one without a PreferNoSchedule taint the job
does not tolerate, then the one it fits most tightly (fewest GPUs left over), so
large jobs keep room. GPUs are bound by index and never overcommitted. A job that
needs several nodes gets all of them or none. A job that cannot run is told why,
as Kubernetes does: `0/3 nodes available: 2 insufficient GPUs, 1 lacks dataset cats`.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mlsm import schemas
from mlsm.manifests.crosschecking import never_takes, tolerates
from mlsm.schemas.sweeps import PARALLELISM_LABEL, SWEEP_LABEL

__all__ = ["Binding", "NodeView", "PendingJob", "Placement", "ScheduleResult", "schedule"]


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node as the scheduler sees it: what it offers and what is free on it now."""

    name: str
    ready: bool = True
    unschedulable: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    runtimes: frozenset[str] = frozenset({"venv", "docker"})
    no_schedule: frozenset[tuple[str, str]] = frozenset()
    """NoSchedule taints as (key, value)."""
    prefer_no_schedule: frozenset[tuple[str, str]] = frozenset()
    """PreferNoSchedule taints: a job that does not tolerate one goes here only when no
    untainted node fits."""
    free_gpus: tuple[int, ...] = ()
    """Indices of the GPUs not bound to a run."""
    free_cpu: float = 0.0
    free_memory: int | None = None
    """Bytes free; None when unknown (not limited)."""
    datasets: frozenset[str] = frozenset()
    """Datasets the node's agent reports present."""
    checksums: frozenset[tuple[str, str]] = frozenset()
    """(dataset, checksum) as the node's agent measured them."""


@dataclass(frozen=True, slots=True)
class PendingJob:
    name: str
    owner: str = ""
    priority: int = 0
    submitted: float = 0.0
    """Any increasing key: earlier jobs go first among equals."""
    gpus: int = 0
    cpu: float = 1.0
    memory: int | None = None
    selector: Mapping[str, str] = field(default_factory=dict)
    runtime: str = "venv"
    tolerations: frozenset[tuple[str, str, str]] = frozenset()
    """(key, operator, value) tolerated: operator Exists tolerates every value."""
    dataset: str | None = None
    dataset_checksum: str | None = None
    nodes: int = 1
    group: str | None = None
    """The sweep this job is a child of."""
    group_limit: int | None = None
    """The sweep's parallelism: at most this many of its children active at once."""

    @classmethod
    def of(cls, job: schemas.TrainingJob, *, owner: str, submitted: float) -> PendingJob:
        """What the scheduler needs of a job's spec (the controller and `mlsmctl plan`)."""
        s = job.spec
        labels = job.metadata.labels
        limit = labels.get(PARALLELISM_LABEL, "")
        return cls(
            name=job.metadata.name,
            owner=owner,
            priority=s.priority,
            submitted=submitted,
            gpus=s.resources.gpus,
            cpu=s.resources.cpu,
            memory=s.resources.memory,
            selector=dict(s.node_selector),
            runtime="docker" if s.runtime.docker is not None else "venv",
            tolerations=frozenset((t.key, t.operator, t.value) for t in s.tolerations),
            dataset=s.dataset,
            dataset_checksum=s.dataset_checksum,
            nodes=s.nodes,
            group=labels.get(SWEEP_LABEL),
            group_limit=int(limit) if limit.isdigit() else None,
        )


@dataclass(frozen=True, slots=True)
class Placement:
    node: str
    gpus: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Binding:
    job: str
    placements: tuple[Placement, ...]


@dataclass(slots=True)
class ScheduleResult:
    bindings: list[Binding] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    """job name -> why it waits."""
    order: list[str] = field(default_factory=list)
    """Every job, in the order the pass considered it: its place in the queue."""


@dataclass(slots=True)
class _Free:
    gpus: list[int]
    cpu: float
    memory: int | None


_NEVER = {
    "selector": "didn't match the node selector",
    "taint": "had a taint the job doesn't tolerate",
    "runtime": "no {} runtime",
}
"""How the scheduler words the static refusals (`manifests.never_takes`), counted
per reason across nodes ("0/3 nodes available: 2 didn't match the node selector")."""


def _refusal(job: PendingJob, node: NodeView, free: _Free) -> str | None:
    """Why `node` cannot take one share of `job` now, or None when it can."""
    if not node.ready:
        return "not ready"
    if node.unschedulable:
        return "unschedulable"
    never = never_takes(
        labels=node.labels,
        runtimes=node.runtimes,
        no_schedule=node.no_schedule,
        selector=job.selector.items(),
        runtime=job.runtime,
        tolerations=job.tolerations,
    )
    if never is not None:
        return _NEVER[never[0]].format(never[1])
    if job.dataset is not None and job.dataset not in node.datasets:
        return f"lacks dataset {job.dataset}"
    if job.dataset_checksum is not None and (job.dataset, job.dataset_checksum) not in (
        node.checksums
    ):
        return f"holds another version of dataset {job.dataset} (not {job.dataset_checksum})"
    if len(free.gpus) < job.gpus:
        return "insufficient GPUs"
    if free.cpu + 1e-9 < job.cpu:
        return "insufficient CPU"
    if job.memory is not None and free.memory is not None and free.memory < job.memory:
        return "insufficient memory"
    return None


def _agree(reason: str, count: int) -> str:
    """'1 lacks dataset cats' but '2 lack dataset cats'."""
    return (
        "lack " + reason.removeprefix("lacks ")
        if count > 1 and reason.startswith("lacks ")
        else reason
    )


def _message(total: int, reasons: Counter[str], job: PendingJob, fit: int) -> str:
    parts = ", ".join(f"{count} {_agree(reason, count)}" for reason, count in
                      sorted(reasons.items(), key=lambda item: (-item[1], item[0])))  # fmt: skip
    if job.nodes > 1:
        head = f"needs {job.nodes} nodes at once, {fit}/{total} available"
    else:
        head = f"0/{total} nodes available"
    return f"{head}: {parts}" if parts else head


def schedule(
    pending: Iterable[PendingJob],
    nodes: Sequence[NodeView],
    *,
    gpus_in_use: Mapping[str, int] | None = None,
    groups_active: Mapping[str, int] | None = None,
) -> ScheduleResult:
    """Bind what can run now; say why the rest waits. Never overcommits a node, nor
    a sweep's parallelism (`groups_active`: its children scheduled or running)."""
    free = {n.name: _Free(sorted(n.free_gpus), n.free_cpu, n.free_memory) for n in nodes}
    usage = Counter(gpus_in_use or {})
    active = Counter(groups_active or {})
    result = ScheduleResult()
    by_priority: dict[int, dict[str, list[PendingJob]]] = {}
    for job in pending:
        by_priority.setdefault(job.priority, {}).setdefault(job.owner, []).append(job)
    for priority in sorted(by_priority, reverse=True):
        queues = by_priority[priority]
        for queue in queues.values():
            queue.sort(key=lambda j: (j.submitted, j.name), reverse=True)  # pop() = earliest
        # Owners in a heap by (GPUs in use, their next job's submission): fair share.
        heap = [(usage[o], q[-1].submitted, q[-1].name, o) for o, q in queues.items()]
        heapq.heapify(heap)
        while heap:
            _, _, _, owner = heapq.heappop(heap)
            job = queues[owner].pop()
            result.order.append(job.name)
            group, limit = job.group or "", job.group_limit
            if limit is not None and active[group] >= limit:
                result.waiting[job.name] = (
                    f"sweep {group} is at its parallelism ({limit} at once): "
                    "waits for one of its children to finish"
                )
                binding = None
            else:
                binding = _place(job, nodes, free, result)
            if binding is not None:
                result.bindings.append(binding)
                usage[owner] += job.gpus * job.nodes
                active[group] += 1
            if queues[owner]:
                head = queues[owner][-1]
                heapq.heappush(heap, (usage[owner], head.submitted, head.name, owner))
    return result


def _place(
    job: PendingJob, nodes: Sequence[NodeView], free: dict[str, _Free], result: ScheduleResult
) -> Binding | None:
    reasons: Counter[str] = Counter()
    fits: list[tuple[bool, int, str]] = []
    for node in nodes:
        refusal = _refusal(job, node, free[node.name])
        if refusal is None:
            shunned = any(not tolerates(job.tolerations, t) for t in node.prefer_no_schedule)
            fits.append((shunned, len(free[node.name].gpus) - job.gpus, node.name))
        else:
            reasons[refusal] += 1
    if len(fits) < job.nodes:
        result.waiting[job.name] = _message(len(nodes), reasons, job, len(fits))
        return None
    fits.sort()  # untainted first (PreferNoSchedule), then the tightest fit, then by name
    placements = []
    for _, _, name in fits[: job.nodes]:
        room = free[name]
        taken, room.gpus = tuple(room.gpus[: job.gpus]), room.gpus[job.gpus :]
        room.cpu -= job.cpu
        if job.memory is not None and room.memory is not None:
            room.memory -= job.memory
        placements.append(Placement(name, taken))
    return Binding(job.name, tuple(placements))
