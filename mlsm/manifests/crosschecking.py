"""Checks across the whole set of manifests: duplicates and references between objects.

Run over everything loaded together (a repository, a commit): a job naming a dataset
that is not defined, a dataset on an unknown node, a job that no Node can ever take.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Collection, Hashable, Sequence

from mlsm import schemas
from mlsm.manifests.problems import Problem, format_field
from mlsm.manifests.validating import Located, Locator

__all__ = ["cross_check", "node_rejects"]


def cross_check(
    objects: Sequence[Located],
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
    unique: dict[tuple[str, str], Located] = {}
    for obj in objects:
        key = (obj.kind, obj.name)
        first = unique.get(key)
        if first is None:
            unique[key] = obj
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
    nodes = {o.name: o.manifest for o in unique.values() if isinstance(o.manifest, schemas.Node)}
    datasets = {
        o.name: o.manifest for o in unique.values() if isinstance(o.manifest, schemas.Dataset)
    }
    matcher = _Matcher(nodes)
    for obj in unique.values():
        if isinstance(obj.manifest, schemas.Dataset):
            problems.extend(_check_dataset(obj, obj.manifest, nodes, broken, locator))
        elif isinstance(obj.manifest, schemas.TrainingJob):
            problems.extend(_check_job(obj, obj.manifest, matcher, datasets, broken, locator))
    return problems


def _problem(obj: Located, locator: Locator, field: list[str | int], message: str) -> Problem:
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


def _check_dataset(
    obj: Located,
    dataset: schemas.Dataset,
    nodes: dict[str, schemas.Node],
    broken: Collection[tuple[str, str]],
    locator: Locator,
) -> list[Problem]:
    return [
        _problem(
            obj,
            locator,
            ["spec", "locations", index, "node"],
            _undefined("Node", location.node, list(nodes)),
        )
        for index, location in enumerate(dataset.spec.locations)
        if location.node not in nodes and ("Node", location.node) not in broken
    ]


def node_rejects(node: schemas.Node, job: schemas.TrainingJob) -> str | None:
    """Why `node` can never take `job` (static reasons only), or None when it can."""
    for key, value in job.spec.node_selector.items():
        if node.metadata.labels.get(key) != value:
            return f"lacks label {key}={value}"
    runtime = "venv" if job.spec.runtime.venv is not None else "docker"
    if runtime not in node.spec.runtimes:
        return f"does not allow runtime {runtime}"
    for taint in node.spec.taints:
        if taint.effect != "NoSchedule":
            continue
        if not any(
            t.key == taint.key and (t.operator == "Exists" or t.value == taint.value)
            for t in job.spec.tolerations
        ):
            return f"has taint {taint.key}={taint.value}:NoSchedule that the job does not tolerate"
    return None


class _Matcher:
    """Which Nodes can take a job, computed once per distinct set of requirements
    (selector, runtime, tolerations): jobs share them, so this stays near linear."""

    def __init__(self, nodes: dict[str, schemas.Node]) -> None:
        self.nodes = nodes
        self._memo: dict[Hashable, tuple[list[str], Counter[str]]] = {}

    def match(self, job: schemas.TrainingJob) -> tuple[list[str], Counter[str]]:
        """Names of the Nodes that can take `job`, and how many fail for each reason."""
        spec = job.spec
        key = (
            tuple(sorted(spec.node_selector.items())),
            spec.runtime.venv is None,
            tuple(sorted((t.key, t.operator, t.value) for t in spec.tolerations)),
        )
        found = self._memo.get(key)
        if found is None:
            reasons: Counter[str] = Counter()
            matching = []
            for name, node in self.nodes.items():
                reason = node_rejects(node, job)
                if reason is None:
                    matching.append(name)
                else:
                    reasons[reason] += 1
            found = self._memo[key] = (matching, reasons)
        return found


def _check_job(
    obj: Located,
    job: schemas.TrainingJob,
    matcher: _Matcher,
    datasets: dict[str, schemas.Dataset],
    broken: Collection[tuple[str, str]],
    locator: Locator,
) -> list[Problem]:
    problems = []
    spec = job.spec
    dataset = datasets.get(spec.dataset) if spec.dataset else None
    if spec.dataset and dataset is None and ("Dataset", spec.dataset) not in broken:
        problems.append(
            _problem(
                obj,
                locator,
                ["spec", "dataset"],
                _undefined("Dataset", spec.dataset, list(datasets)),
            )
        )
    if dataset is not None and spec.trainer is not None and dataset.spec.format != "imagefolder":
        problems.append(
            _problem(
                obj,
                locator,
                ["spec", "dataset"],
                f"the built-in trainer reads imagefolder datasets; Dataset '{spec.dataset}' "
                f"has format {dataset.spec.format}",
            )
        )
    if any(kind == "Node" for kind, _ in broken):
        return problems  # which nodes exist is unsure: no verdict on matching
    nodes = matcher.nodes
    names, reasons = matcher.match(job)
    matching = [(name, nodes[name]) for name in names]
    if not matching:
        detail = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        field: list[str | int] = ["spec", "nodeSelector"] if spec.node_selector else ["spec"]
        problems.append(
            _problem(
                obj,
                locator,
                field,
                f"no Node can run this job: 0/{len(nodes)} Nodes match"
                + (f" ({detail})" if detail else ""),
            )
        )
        return problems
    if spec.nodes > len(matching):
        problems.append(
            _problem(
                obj,
                locator,
                ["spec", "nodes"],
                f"asks for {spec.nodes} nodes but only {len(matching)} Node"
                f"{'s' if len(matching) != 1 else ''} match: "
                + ", ".join(name for name, _ in matching),
            )
        )
    declared = [node.spec.capacity.gpus for _, node in matching]
    if spec.resources.gpus and all(gpus is not None for gpus in declared):
        most = max(gpus or 0 for gpus in declared)
        if spec.resources.gpus > most:
            problems.append(
                _problem(
                    obj,
                    locator,
                    ["spec", "resources", "gpus"],
                    f"asks for {spec.resources.gpus} GPUs per node but the matching Nodes "
                    f"declare at most {most}; lower it or select bigger nodes",
                )
            )
    if dataset is not None and dataset.spec.locations and not dataset.spec.replicate:
        holders = {location.node for location in dataset.spec.locations}
        if not holders & {name for name, _ in matching}:
            problems.append(
                _problem(
                    obj,
                    locator,
                    ["spec", "dataset"],
                    f"Dataset '{spec.dataset}' lies only on {', '.join(sorted(holders))}, "
                    "where this job cannot run, and may not be replicated; widen the "
                    "nodeSelector or set replicate: true on the Dataset",
                )
            )
    return problems
