"""Checks across the whole set of manifests: duplicates and references between objects.

Run over everything loaded together (a repository, a commit): a job naming a dataset
that is not defined, a dataset on an unknown node, a job that no Node can ever take.
The checks read `Facts`, a small summary of each valid object (plain tuples, cheap to
send between processes), so that a large tree can be validated in worker processes
and cross-checked in one place.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import NamedTuple

from mlsm import schemas
from mlsm.manifests.parsing import Position
from mlsm.manifests.problems import Problem, format_field
from mlsm.manifests.validating import Located, Locator

__all__ = [
    "DatasetFacts",
    "Facts",
    "JobFacts",
    "NodeFacts",
    "cross_check",
    "facts_of",
    "never_takes",
    "node_rejects",
    "tolerates",
]


class NodeFacts(NamedTuple):
    labels: dict[str, str]
    runtimes: tuple[str, ...]
    no_schedule_taints: tuple[tuple[str, str], ...]
    gpus: int | None


class DatasetFacts(NamedTuple):
    nodes: tuple[str, ...]
    format: str
    replicate: bool


class JobFacts(NamedTuple):
    dataset: str | None
    trainer: bool
    selector: tuple[tuple[str, str], ...]
    runtime: str
    tolerations: tuple[tuple[str, str, str], ...]
    gpus: int
    nodes: int


class Facts(NamedTuple):
    """What cross-checks need of one valid object, and where it was written."""

    kind: str
    name: str
    path: str
    line: int
    column: int
    details: NodeFacts | DatasetFacts | JobFacts

    @property
    def position(self) -> Position:
        return Position(self.line, self.column)


def facts_of(located: Located) -> Facts:
    """The summary of a valid object that cross-checks read."""
    manifest = located.manifest
    details: NodeFacts | DatasetFacts | JobFacts
    if isinstance(manifest, schemas.Node):
        details = NodeFacts(
            labels=manifest.metadata.labels,
            runtimes=tuple(manifest.spec.runtimes),
            no_schedule_taints=tuple(
                (t.key, t.value) for t in manifest.spec.taints if t.effect == "NoSchedule"
            ),
            gpus=manifest.spec.capacity.gpus,
        )
    elif isinstance(manifest, schemas.Dataset):
        details = DatasetFacts(
            nodes=tuple(location.node for location in manifest.spec.locations),
            format=manifest.spec.format,
            replicate=manifest.spec.replicate,
        )
    else:
        spec = manifest.spec
        details = JobFacts(
            dataset=spec.dataset,
            trainer=spec.trainer is not None,
            selector=tuple(sorted(spec.node_selector.items())),
            runtime="venv" if spec.runtime.venv is not None else "docker",
            tolerations=tuple(sorted((t.key, t.operator, t.value) for t in spec.tolerations)),
            gpus=spec.resources.gpus,
            nodes=spec.nodes,
        )
    at = located.position
    return Facts(located.kind, located.name, located.path, at.line, at.column, details)


def cross_check(
    objects: Sequence[Facts],
    locator: Locator,
    *,
    broken: Collection[tuple[str, str]] = (),
) -> list[Problem]:
    """Problems that only show when objects are seen together.

    `broken` names (kind, name) of documents that failed validation: references to
    them are not reported again as undefined, and when a Node is broken no job is
    said to match no Node.
    """
    problems: list[Problem] = []
    unique: dict[tuple[str, str], Facts] = {}
    for obj in objects:
        first = unique.setdefault((obj.kind, obj.name), obj)
        if first is obj:
            continue
        was = locator.find(first.path, first.position, ["metadata", "name"])
        problems.append(
            _problem(
                obj,
                locator,
                ["metadata", "name"],
                f"duplicate {obj.kind}/{obj.name}: also defined at "
                f"{first.path}:{was.line}:{was.column}; rename or remove one",
            )
        )
    nodes = {o.name: o.details for o in unique.values() if isinstance(o.details, NodeFacts)}
    datasets = {o.name: o.details for o in unique.values() if isinstance(o.details, DatasetFacts)}
    matcher = None if any(kind == "Node" for kind, _ in broken) else _Matcher(nodes)
    for obj in unique.values():
        if isinstance(obj.details, DatasetFacts):
            problems.extend(
                _problem(obj, locator, ["spec", "locations", index, "node"],
                         _undefined("Node", node, list(nodes)))
                for index, node in enumerate(obj.details.nodes)
                if node not in nodes and ("Node", node) not in broken
            )  # fmt: skip
        elif isinstance(obj.details, JobFacts):
            problems.extend(_check_job(obj, obj.details, matcher, datasets, broken, locator))
    return problems


def _problem(obj: Facts, locator: Locator, field: list[str | int], message: str) -> Problem:
    at = locator.find(obj.path, obj.position, field)
    return Problem(
        path=obj.path,
        line=at.line,
        column=at.column,
        kind=obj.kind,
        name=obj.name,
        field=format_field(field),
        message=message,
    )


def _undefined(kind: str, name: str, defined: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, defined, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    listed = ", ".join(sorted(defined)[:8]) + (", ..." if len(defined) > 8 else "")
    where = f" (defined: {listed})" if defined else f" (no {kind} is defined)"
    return f"{kind} '{name}' is not defined in the manifests checked{hint}{where}"


Toleration = tuple[str, str, str]
"""(key, operator, value): operator Exists (any value) or Equal."""


def tolerates(tolerations: Iterable[Toleration], taint: tuple[str, str]) -> bool:
    key, value = taint
    return any(
        t_key == key and (operator == "Exists" or t_value == value)
        for t_key, operator, t_value in tolerations
    )


def never_takes(
    *,
    labels: Mapping[str, str],
    runtimes: Iterable[str],
    no_schedule: Iterable[tuple[str, str]],
    selector: Iterable[tuple[str, str]],
    runtime: str,
    tolerations: Iterable[Toleration],
) -> tuple[str, str] | None:
    """The one "can this node ever run this job" check, on what the manifests say
    (labels, allowed runtimes, NoSchedule taints against the job's selector, runtime
    and tolerations); nothing that changes at run time. (what, detail) of the first
    reason it never can: ('selector', 'k=v'), ('runtime', name) or ('taint', 'k=v');
    None when it can. The cross-checks and the scheduler word it each their way."""
    for key, value in selector:
        if labels.get(key) != value:
            return "selector", f"{key}={value}"
    if runtime not in set(runtimes):
        return "runtime", runtime
    tolerations = list(tolerations)
    for taint in no_schedule:
        if not tolerates(tolerations, taint):
            return "taint", f"{taint[0]}={taint[1]}"
    return None


def node_rejects(node: NodeFacts, job: JobFacts) -> str | None:
    """Why `node` can never take `job` (static reasons only), or None when it can."""
    found = never_takes(
        labels=node.labels,
        runtimes=node.runtimes,
        no_schedule=node.no_schedule_taints,
        selector=job.selector,
        runtime=job.runtime,
        tolerations=job.tolerations,
    )
    if found is None:
        return None
    what, detail = found
    if what == "selector":
        return f"lack label {detail}"
    if what == "runtime":
        return f"do not allow runtime {detail}"
    return f"have taint {detail}:NoSchedule that the job does not tolerate"


class _Match(NamedTuple):
    names: list[str]
    reasons: Counter[str]
    most_gpus: int | None
    """The most GPUs any matching Node declares; None when one declares nothing."""


class _Matcher:
    """Which Nodes can take a job, computed once per distinct set of requirements
    (selector, runtime, tolerations): jobs share them, so this stays near linear."""

    def __init__(self, nodes: dict[str, NodeFacts]) -> None:
        self.nodes = nodes
        self._memo: dict[tuple[object, ...], _Match] = {}

    def match(self, job: JobFacts) -> _Match:
        key = (job.selector, job.runtime, job.tolerations)
        found = self._memo.get(key)
        if found is None:
            reasons: Counter[str] = Counter()
            names = []
            for name, node in self.nodes.items():
                reason = node_rejects(node, job)
                if reason is None:
                    names.append(name)
                else:
                    reasons[reason] += 1
            declared = [self.nodes[name].gpus for name in names]
            most = None if None in declared else max((g or 0 for g in declared), default=0)
            found = self._memo[key] = _Match(names, reasons, most)
        return found


def _check_job(
    obj: Facts,
    job: JobFacts,
    matcher: _Matcher | None,
    datasets: dict[str, DatasetFacts],
    broken: Collection[tuple[str, str]],
    locator: Locator,
) -> list[Problem]:
    problems = []
    dataset = datasets.get(job.dataset) if job.dataset else None
    if job.dataset and dataset is None and ("Dataset", job.dataset) not in broken:
        problems.append(
            _problem(
                obj,
                locator,
                ["spec", "dataset"],
                _undefined("Dataset", job.dataset, list(datasets)),
            )
        )
    if dataset is not None and job.trainer and dataset.format != "imagefolder":
        problems.append(
            _problem(
                obj,
                locator,
                ["spec", "dataset"],
                f"the built-in trainer reads imagefolder datasets; Dataset '{job.dataset}' "
                f"has format {dataset.format}",
            )
        )
    if matcher is None:
        return problems  # a Node is broken: which nodes exist is unsure, so no verdict
    match = matcher.match(job)
    if not match.names:
        detail = ", ".join(f"{count} {reason}" for reason, count in match.reasons.most_common())
        field: list[str | int] = ["spec", "nodeSelector"] if job.selector else ["spec"]
        total = len(matcher.nodes)
        problems.append(
            _problem(
                obj,
                locator,
                field,
                f"no Node can run this job: 0/{total} Nodes match"
                + (f" ({detail})" if detail else ""),
            )
        )
        return problems
    if job.nodes > len(match.names):
        count = len(match.names)
        problems.append(
            _problem(
                obj,
                locator,
                ["spec", "nodes"],
                f"asks for {job.nodes} nodes but only {count} Node{'s' if count != 1 else ''} "
                f"match: {', '.join(match.names)}",
            )
        )
    if job.gpus and match.most_gpus is not None and job.gpus > match.most_gpus:
        problems.append(
            _problem(
                obj,
                locator,
                ["spec", "resources", "gpus"],
                f"asks for {job.gpus} GPUs per node but the matching Nodes declare at most "
                f"{match.most_gpus}; lower it or select bigger nodes",
            )
        )
    holders = set(dataset.nodes) if dataset is not None and not dataset.replicate else set()
    if holders and not holders & set(match.names):
        problems.append(
            _problem(
                obj,
                locator,
                ["spec", "dataset"],
                f"Dataset '{job.dataset}' lies only on {', '.join(sorted(holders))}, where this "
                "job cannot run, and may not be replicated; widen the nodeSelector or set "
                "replicate: true on the Dataset",
            )
        )
    return problems
