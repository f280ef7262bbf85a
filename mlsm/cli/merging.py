"""`mlsmctl plan`: what merging a pull request would do.

`--base REV --head REV` plans from the manifests repository alone (no controller).
Both commits are loaded from git (never the working tree; the head's unchanged files
are read once), the pure sync planner compares them, and for each job the merge
creates or changes, the pure scheduler says where it would run or why it would wait.

Against manifests alone, the fleet's live state is unknown, and the plan says so:
nodes are taken as Ready and idle, with the GPUs, CPU and memory their manifests'
`spec.capacity` declares (unset: not limited here, as the agent would report them);
datasets as present where the catalog places them; and whether a removed job is
still running, or which queued jobs a new one would delay, is not known.

`-f PATH --server URL` plans PATH as the branch against a running controller, which
knows all of that: the objects it holds (so a removed job's cancel is certain), and
`POST /api/v1/plan` runs its scheduler over the live queue and nodes, read only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from mlsm import manifests, planning, schemas
from mlsm.cli import diffing
from mlsm.cli.client import Client
from mlsm.cli.diffing import field_changes

__all__ = ["Change", "MergePlan", "merge_plan", "render", "server_plan"]

Manifests = dict[tuple[str, str], dict[str, Any]]
"""The manifests the merge starts from, by (kind, name)."""

UNKNOWN_WITHOUT_SERVER = (
    "whether each node is Ready and what runs on it now (nodes are taken as idle, with "
    "their declared capacity)",
    "the GPUs, CPU and memory of nodes whose manifest declares no capacity (not limited here)",
    "whether each dataset is really on its nodes (taken as present where the catalog says)",
    "whether a removed job is still running (removing it cancels it if so)",
    "the jobs already queued, so a new job's place behind them and whose jobs it delays",
)
"""What a plan from manifests alone cannot know; `--server` knows the fleet."""

_PLENTY = 1 << 16
"""A capacity the manifests leave to the agent: not a limit here."""


@dataclass(slots=True)
class Change:
    """One object the merge would change."""

    kind: str
    name: str
    action: str
    """create | update | remove | invalid | move | valid-again"""
    path: str
    line: int
    generation: int | None = None
    """The generation it would have: a job's changes bump it, and reach its runs."""
    fields: list[str] = field(default_factory=list)
    """Field by field: '+ spec.env.A: "1"', '~ spec.resources.gpus: 1 -> 2'."""
    error: str = ""
    cancels: bool = False
    runs_on: list[str] = field(default_factory=list)
    """A job: where it would run now (node names)."""
    waits: str = ""
    """A job: why it would wait (the scheduler's own words)."""
    queue: int | None = None
    """A job: its place among the jobs this merge queues (1: first)."""
    undeclared: list[str] = field(default_factory=list)
    """Of `runs_on`, the nodes whose manifest declares no capacity the job needs: it
    runs there only if their agents report enough."""
    delays: list[str] = field(default_factory=list)
    """A job (--server): the queued jobs it would delay ("ada's vit: 2nd -> 3rd")."""
    settled: str = ""
    """A changed job that runs or has finished (--server): why the change starts nothing."""


@dataclass(slots=True)
class MergePlan:
    base: str
    head: str
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Every validation error at the head, as file:line:col: error: ..."""
    held: str = ""
    unknown: tuple[str, ...] = UNKNOWN_WITHOUT_SERVER
    server: str = ""
    """The controller planned against (-f PATH --server), else ""."""
    queued: int | None = None
    """How many jobs would be pending with this merge's (--server)."""

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def merge_plan(repository: str, base: str, head: str, subdir: str = "") -> MergePlan:
    """Load both commits and plan the merge (raises manifests.SourceError)."""
    before, after = manifests.load_git_change(repository, base, head, subdir)
    memo: planning.ManifestMemo = {}  # an unchanged file's objects are serialised once
    old = planning.desired_state(before, memo=memo)
    new = planning.desired_state(after, memo=memo)
    stored = [
        planning.Stored(
            kind=d.kind,
            name=d.name,
            uid="",
            hash=d.hash,
            path=d.path,
            line=d.line,
            generation=1 if d.manifest is not None else 0,
            valid=d.manifest is not None,
            error=d.error,
            finished=False,
        )
        for d in old.objects.values()
    ]
    plan = planning.plan_sync(new, stored)
    result = MergePlan(base=base, head=head, held=plan.held)
    result.problems = [str(p) for p in after.problems]
    manifests_before = {k: d.manifest for k, d in old.objects.items() if d.manifest is not None}
    result.changes = [_change(action, manifests_before) for action in plan.actions]
    _place(result, new)
    return result


def server_plan(client: Client, path: str, *, owner: str) -> MergePlan:
    """PATH as the branch, against the controller's objects, queue and nodes. A new job
    without `metadata.owner` is taken as `owner`'s (the committer, as a merge would)."""
    plan, live, problems = diffing.plan_against(client, path)
    result = MergePlan(base=client.server, head=path, held=plan.held, unknown=())
    result.server = client.server
    result.problems = [str(p) for p in problems]
    before = {key: diffing.stored_manifest(obj) for key, obj in live.items()}
    result.changes = [_change(action, before) for action in plan.actions]
    proposed = {
        action.desired.name: action.desired.manifest
        for action in plan.actions
        if isinstance(action, planning.Create | planning.Update)
        and action.desired.kind == "TrainingJob"
        and action.desired.manifest is not None
    }
    if not proposed:
        return result
    removed = [
        action.stored.name
        for action in plan.actions
        if isinstance(action, planning.Prune) and action.stored.kind == "TrainingJob"
    ]
    body = {
        "jobs": [{"manifest": m, "owner": owner} for m in proposed.values()],
        "removed": removed,
    }
    found = client.post("/plan", body)
    result.queued = found["queued"]
    for change in result.changes:
        if change.kind != "TrainingJob" or change.name not in proposed:
            continue
        name = change.name
        change.runs_on = found["runsOn"].get(name, [])
        change.waits = found["waiting"].get(name, "")
        change.queue = found["queue"].get(name)
        change.delays = found["delays"].get(name, [])
        change.settled = found["settled"].get(name, "")
    return result


def _change(action: planning.Action, before: Manifests) -> Change:
    match action:
        case planning.Create(desired=d):
            if d.manifest is None:
                return Change(d.kind, d.name, "invalid", d.path, d.line, error=d.error)
            return Change(d.kind, d.name, "create", d.path, d.line, generation=1)
        case planning.Update(desired=d, stored=s):
            return Change(
                d.kind,
                d.name,
                "update",
                d.path,
                d.line,
                generation=s.generation + 1,
                fields=list(field_changes(before.get(s.key, {}), d.manifest or {})),
            )
        case planning.Relocate(desired=d):
            return Change(d.kind, d.name, "move", d.path, d.line)
        case planning.Revalidate(desired=d):
            return Change(d.kind, d.name, "valid-again", d.path, d.line)
        case planning.Invalidate(stored=s, error=error):
            return Change(s.kind, s.name, "invalid", s.path, s.line, error=error)
        case planning.Prune(stored=s, cancel=cancel):
            return Change(s.kind, s.name, "remove", s.path, s.line, cancels=cancel)
    raise AssertionError(f"unknown action {action!r}")


def _place(result: MergePlan, state: planning.DesiredState) -> None:
    """Where each created or changed job would run, on the head's nodes taken idle."""
    nodes = {
        d.name: schemas.Node.model_validate(d.manifest)
        for d in state.objects.values()
        if d.kind == "Node" and d.manifest is not None
    }
    jobs = {
        c.name: c
        for c in result.changes
        if c.kind == "TrainingJob" and c.action in ("create", "update")
    }
    pending = {}
    for index, name in enumerate(jobs):
        manifest = state.objects[("TrainingJob", name)].manifest
        spec = schemas.TrainingJob.model_validate(manifest)
        pending[name] = planning.PendingJob.of(
            spec, owner=spec.metadata.owner or "", submitted=float(index)
        )
    views = [_node_view(node, state) for node in nodes.values()]
    outcome = planning.schedule(pending.values(), views)
    for place, name in enumerate(outcome.order, start=1):
        jobs[name].queue = place
    for binding in outcome.bindings:
        change, job = jobs[binding.job], pending[binding.job]
        change.runs_on = [p.node for p in binding.placements]
        change.undeclared = [n for n in change.runs_on if _undeclared(nodes[n], job)]
    for name, why in outcome.waiting.items():
        jobs[name].waits = why


def _undeclared(node: schemas.Node, job: planning.PendingJob) -> bool:
    """Whether the node's manifest leaves to its agent the GPUs or memory the job needs."""
    capacity = node.spec.capacity
    return bool(job.gpus and capacity.gpus is None) or bool(job.memory and capacity.memory is None)


def _node_view(node: schemas.Node, state: planning.DesiredState) -> planning.NodeView:
    spec, name = node.spec, node.metadata.name
    capacity = spec.capacity
    gpus = capacity.gpus if capacity.gpus is not None else _PLENTY
    held = frozenset(
        d.name
        for d in state.objects.values()
        if d.kind == "Dataset"
        and d.manifest is not None
        and any(place.get("node") == name for place in d.manifest["spec"].get("locations", []))
    )
    return planning.NodeView(
        name=name,
        unschedulable=spec.unschedulable,
        labels=dict(node.metadata.labels),
        runtimes=frozenset(spec.runtimes),
        no_schedule=frozenset((t.key, t.value) for t in spec.taints if t.effect == "NoSchedule"),
        prefer_no_schedule=frozenset(
            (t.key, t.value) for t in spec.taints if t.effect == "PreferNoSchedule"
        ),
        free_gpus=tuple(range(gpus)),
        free_cpu=float(capacity.cpu) if capacity.cpu is not None else float(_PLENTY),
        free_memory=int(capacity.memory) if capacity.memory is not None else None,
        datasets=held,
    )


# -- output ------------------------------------------------------------------------

_SIGNS = {
    "create": "+",
    "update": "~",
    "move": "~",
    "valid-again": "~",
    "remove": "-",
    "invalid": "!",
}


def render(plan: MergePlan, output: str) -> str:
    if output == "json":  # camelCase, as the API's JSON
        return json.dumps(_camel(asdict(plan) | {"changed": plan.changed}), indent=2) + "\n"
    lines = _markdown(plan) if output == "markdown" else _text(plan)
    return "\n".join(lines) + "\n"


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel_key(k): _camel(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_camel(v) for v in value]
    return value


def _camel_key(key: str) -> str:
    first, *rest = key.split("_")
    return first + "".join(part.title() for part in rest)


def _summary(plan: MergePlan) -> str:
    counts: dict[str, int] = {}
    for change in plan.changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    said = ", ".join(f"{n} {action}" for action, n in sorted(counts.items()))
    return f"{_span(plan)}: " + (said or "no changes")


def _span(plan: MergePlan, quote: str = "") -> str:
    """What is planned: `base..head`, or `PATH against URL`."""
    if plan.server:
        return f"{quote}{plan.head}{quote} against {plan.server}"
    return (
        f"{quote}{plan.base}{quote} → {quote}{plan.head}{quote}"
        if quote
        else f"{plan.base}..{plan.head}"
    )


def _where(change: Change) -> str:
    if change.settled:
        return change.settled
    if change.runs_on:
        said = f"would run now on {', '.join(change.runs_on)}"
        if change.undeclared:
            which = ", ".join(change.undeclared)
            said += f" (if {which} has room: its manifest leaves the capacity to its agent)"
        return said
    if change.waits:
        return f"would wait: {change.waits}"
    return ""


def _text(plan: MergePlan) -> Iterator[str]:
    yield _summary(plan)
    for change in plan.changes:
        head = f"{_SIGNS[change.action]} {change.kind}/{change.name}  ({change.path}:{change.line})"
        if change.generation is not None and change.action == "update":
            head += f"  generation {change.generation}"
        if change.cancels:
            head += "  (cancels it if it is still running)"
        yield head
        yield from (f"    {line}" for line in change.fields)
        if change.error:
            yield f"    {change.error}"
        if change.kind == "TrainingJob" and (where := _where(change)):
            yield f"    {where}{_place_in_queue(plan, change)}"
        yield from (f"    delays {delayed}" for delayed in change.delays)
    if plan.held:
        yield f"held: {plan.held}"
    yield from plan.problems
    if plan.changes and plan.unknown:
        yield "not known without --server: " + "; ".join(plan.unknown)


def _place_in_queue(plan: MergePlan, change: Change) -> str:
    if change.queue is None:
        return ""
    if plan.queued is not None:
        return f" ({change.queue} of {plan.queued} in the queue)"
    return f" (queue position {change.queue})"


def _cell(text: str) -> str:
    """Text for a table cell: pipes and newlines would break the table."""
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(plan: MergePlan) -> Iterator[str]:
    yield "### mlsm plan"
    yield ""
    yield f"{_span(plan, '`')}: {_summary(plan).split(': ', 1)[1]}."
    if plan.problems:
        yield ""
        yield f"**{len(plan.problems)} error(s)** (the merge would keep the last valid specs):"
        yield ""
        yield from (f"- `{_cell(p)}`" for p in plan.problems[:50])
        if len(plan.problems) > 50:
            yield f"- … and {len(plan.problems) - 50} more (`mlsmctl validate`)"
    if plan.held:
        yield ""
        yield f"**Held:** {plan.held}"
    if not plan.changes:
        return
    yield ""
    yield "| | object | file | what it does |"
    yield "|---|---|---|---|"
    for change in plan.changes:
        what = {
            "create": "created",
            "update": f"changed (generation {change.generation})",
            "move": "moved (no change)",
            "valid-again": "valid again",
            "remove": "removed" + (", cancelling it if running" if change.cancels else ""),
            "invalid": "invalid: kept at its last valid spec",
        }[change.action]
        if change.kind == "TrainingJob" and (where := _where(change)):
            what += f"; {where}{_place_in_queue(plan, change)}"
        if change.delays:
            what += "; delays " + ", ".join(change.delays)
        yield (
            f"| {_SIGNS[change.action]} | {change.kind}/{change.name} | "
            f"`{change.path}:{change.line}` | {_cell(what)} |"
        )
    detailed = [c for c in plan.changes if c.fields or c.error]
    if detailed:
        yield ""
        yield "<details><summary>Field by field</summary>"
        yield ""
        for change in detailed:
            yield f"**{change.kind}/{change.name}**"
            yield ""
            yield "```diff"
            yield from change.fields or [f"! {change.error}"]
            yield "```"
            yield ""
        yield "</details>"
    if plan.unknown:
        yield ""
        yield "<details><summary>Not known from the manifests alone</summary>"
        yield ""
        yield from (f"- {item}" for item in plan.unknown)
        yield ""
        yield "</details>"
