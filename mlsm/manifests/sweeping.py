"""A sweep's children: one TrainingJob with `spec.sweep` becomes N ordinary jobs.

Child k is named `<job>-<k>` (from 0). Its spec is the job's, without the sweep, with
the child's trainer values. Its labels are the job's, plus each swept field and its
value (`learningRate: "0.003"`), plus `mlsm.dev/sweep: <job>` and, with a
`parallelism`, `mlsm.dev/sweep-parallelism`. The scheduler reads those two
(`mlsm.planning.scheduling`).

- A grid enumerates the combinations in order, the last field varying fastest.
- A random sweep draws child k from a generator seeded by (seed, k) alone. So more
  `trials` keeps the children already drawn.

Expansion happens where manifests are validated. So `mlsmctl validate`, `mlsmctl
plan` and the controller all see the children, and a change to the sweep in git
adds, keeps or cancels children as any change to objects does.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mlsm import schemas
from mlsm.schemas.sweeps import PARALLELISM_LABEL, SWEEP_LABEL, Sweep, SweepRange

__all__ = [
    "PARALLELISM_LABEL",
    "SWEEP_LABEL",
    "Child",
    "SweepProblem",
    "children_of",
    "expand",
    "label_value",
]


_NOT_IN_LABEL = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    index: int
    values: dict[str, Any]
    """Swept field (YAML name) -> its value for this child."""


class SweepProblem(Exception):
    """A sweep that cannot expand: `field` is where (under spec.sweep)."""

    def __init__(self, field: list[str | int], message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def label_value(value: Any) -> str:
    """A value as a label shows it (label syntax: letters, digits, '-', '_', '.')."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    text = _NOT_IN_LABEL.sub("-", text).strip("-_.")[:63].strip("-_.")
    return text or "x"


def _integer_fields() -> frozenset[str]:
    fields = set()
    for name, info in schemas.TrainerConfig.model_fields.items():
        kinds = typing.get_args(info.annotation) or (info.annotation,)
        if int in kinds and float not in kinds:
            fields.add(info.alias or name)
    return frozenset(fields)


def _draw(rng: random.Random, values: list[Any] | SweepRange, integer: bool) -> Any:
    if isinstance(values, list):
        return rng.choice(values)
    if values.log:
        drawn = math.exp(rng.uniform(math.log(values.min), math.log(values.max)))
    else:
        drawn = rng.uniform(values.min, values.max)
    return round(drawn) if integer else float(f"{drawn:.4g}")


def children_of(name: str, sweep: Sweep) -> list[Child]:
    """The children a sweep expands to, in order."""
    fields = list(sweep.parameters)
    if sweep.method == "grid":
        lists = [v if isinstance(v, list) else [] for v in sweep.parameters.values()]
        combinations = list(itertools.product(*lists))
    else:
        integers = _integer_fields()
        combinations = []
        for k in range(sweep.trials or 0):
            rng = random.Random(f"mlsm-sweep/{sweep.seed}/{k}")
            combinations.append(
                tuple(_draw(rng, sweep.parameters[f], f in integers) for f in fields)
            )
    return [
        Child(f"{name}-{k}", k, dict(zip(fields, combination, strict=True)))
        for k, combination in enumerate(combinations)
    ]


def expand(job: schemas.TrainingJob) -> list[schemas.TrainingJob]:
    """The job's children (raises SweepProblem); a job without a sweep is itself."""
    sweep = job.spec.sweep
    if sweep is None:
        return [job]
    if job.spec.trainer is None:
        raise SweepProblem([], "a sweep varies the built-in trainer's fields: set 'trainer'")
    children = children_of(job.metadata.name, sweep)
    longest = children[-1].name
    if len(longest) > 63:
        raise SweepProblem(
            [], f"child names such as '{longest}' exceed 63 characters: shorten the job's name"
        )
    base = job.to_manifest_dict()
    base["spec"].pop("sweep", None)
    labels = dict(base["metadata"].get("labels", {}))
    clash = sorted(set(labels) & set(sweep.parameters))
    if clash:
        raise SweepProblem(
            ["parameters", clash[0]],
            f"the job has a label '{clash[0]}' already; a sweep labels each child with "
            "its swept fields: rename the label",
        )
    labels[SWEEP_LABEL] = job.metadata.name
    if sweep.parallelism is not None:
        labels[PARALLELISM_LABEL] = str(sweep.parallelism)
    out = []
    for child in children:
        data: dict[str, Any] = {
            **base,
            "metadata": {
                **base["metadata"],
                "name": child.name,
                "labels": {**labels, **{f: label_value(v) for f, v in child.values.items()}},
            },
            "spec": {**base["spec"], "trainer": {**base["spec"]["trainer"], **child.values}},
        }
        try:
            out.append(schemas.TrainingJob.model_validate(data, by_alias=True, by_name=False))
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            loc = [str(s) for s in error["loc"] if not schemas.is_union_tag(s)]
            field = next((f for f in child.values if f in loc), None)
            said = ", ".join(f"{f}={label_value(v)}" for f, v in child.values.items())
            where = ".".join(loc)
            raise SweepProblem(
                ["parameters", field] if field else [],
                f"child {child.name} ({said}) is not a valid job: {where}: {error['msg']}",
            ) from None
    return out
