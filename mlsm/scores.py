"""A run's metric records read as people read them: one row per epoch, the best
value of the monitored metric, per-class figures and the run's provenance. Pure
functions over the records the trainer (or any job) writes to $MLSM_METRICS_FILE,
`{"step", "epoch", "split", "name", "value"}`.

Used by `mlsmctl describe` (`mlsm.cli.views`) and the job page (`mlsm.web`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Best",
    "PerClass",
    "best_score",
    "checkpoint_folders",
    "column_of",
    "per_class",
    "per_epoch",
    "provenance_facts",
    "provenance_of",
]


def column_of(record: dict[str, Any]) -> str | None:
    """`split/name` (or `name`) of a record that holds a value, else None."""
    if "name" not in record or "value" not in record:
        return None
    name = str(record["name"])
    return f"{record['split']}/{name}" if record.get("split") else name


def per_epoch(records: list[dict[str, Any]]) -> tuple[list[str], dict[int | None, dict[str, Any]]]:
    """The columns (train first, then by name) and, per epoch (a record of epoch 0.5
    counts to epoch 1; None for records without one), each column's last value."""
    rows: dict[int | None, dict[str, Any]] = {}
    columns: dict[str, None] = {}
    for record in records:
        column = column_of(record)
        if column is None:
            continue
        epoch = record.get("epoch")
        key = math.ceil(epoch) if isinstance(epoch, int | float) else None
        columns[column] = None
        rows.setdefault(key, {})[column] = record["value"]
    names = sorted(columns, key=lambda c: (not c.startswith("train"), c))
    ordered = dict(sorted(rows.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
    return names, ordered


@dataclass(frozen=True)
class Best:
    metric: str
    mode: str
    """min or max."""
    value: float | None
    epoch: float | None
    evaluations: int


def best_score(trainer: dict[str, Any], records: list[dict[str, Any]]) -> Best:
    """The best validation value of the trainer's monitored metric (accuracy by
    default; the lowest for loss unless the mode says otherwise)."""
    monitor = trainer.get("monitor") or {}
    metric = str(monitor.get("metric", "accuracy"))
    mode = str(monitor.get("mode") or ("min" if metric == "loss" else "max"))
    scores = [
        (float(r["value"]), r.get("epoch"))
        for r in records
        if r.get("split") == "val"
        and r.get("name") == metric
        and isinstance(r.get("value"), int | float)
    ]
    if not scores:
        return Best(metric, mode, None, None, 0)
    value, epoch = (min if mode == "min" else max)(scores, key=lambda s: s[0])
    return Best(metric, mode, value, epoch, len(scores))


def checkpoint_folders(trainer: dict[str, Any]) -> list[str]:
    """The folders under checkpoints/ that the trainer's keepCheckpoints keeps."""
    keep = trainer.get("keepCheckpoints", "best")
    if keep == "last":
        return ["last/"]
    return ["best/", "last/"] + (["epoch-N/"] if keep == "every-epoch" else [])


@dataclass(frozen=True)
class PerClass:
    """One evaluation's per-class figures (the trainer's `classes` record)."""

    split: str
    epoch: float | None
    classes: list[str]
    precision: list[float]
    recall: list[float]
    confusion: list[list[int]] | None
    """Rows: the true class, columns: the predicted one (None when the record left
    it out, for many classes)."""

    def weakest(self, count: int = 3) -> list[tuple[str, float]]:
        """The classes with the lowest recall, lowest first."""
        ranked = sorted(zip(self.classes, self.recall, strict=True), key=lambda cr: cr[1])
        return ranked[:count]

    def shares(self) -> list[list[float]]:
        """Each cell of the confusion matrix as a share of its row (its true class)."""
        rows = self.confusion or []
        return [[cell / max(1, sum(row)) for cell in row] for row in rows]


def per_class(records: list[dict[str, Any]]) -> dict[str, PerClass]:
    """The latest per-class figures of each split (val, test) in the records."""
    found: dict[str, PerClass] = {}
    for record in records:
        if record.get("name") != "classes" or not isinstance(record.get("classes"), list):
            continue
        classes = [str(c) for c in record["classes"]]
        precision, recall = record.get("precision"), record.get("recall")
        if not (isinstance(precision, list) and isinstance(recall, list)):
            continue
        if not len(precision) == len(recall) == len(classes):
            continue
        confusion = record.get("confusion")
        valid = (
            isinstance(confusion, list)
            and len(confusion) == len(classes)
            and all(isinstance(row, list) and len(row) == len(classes) for row in confusion)
        )
        epoch = record.get("epoch")
        found[str(record.get("split", ""))] = PerClass(
            split=str(record.get("split", "")),
            epoch=float(epoch) if isinstance(epoch, int | float) else None,
            classes=classes,
            precision=[float(v) for v in precision],
            recall=[float(v) for v in recall],
            confusion=[[int(c) for c in row] for row in confusion or []] if valid else None,
        )
    return found


def provenance_of(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's latest provenance record (the one written at the end, once there)."""
    found = [r for r in records if r.get("name") == "provenance"]
    return found[-1] if found else None


def _short(text: Any, length: int = 12) -> str:
    text = str(text or "")
    return text.removeprefix("sha256:")[:length] if text else "-"


def provenance_facts(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, said) pairs of a provenance record, for describe and the job's page."""
    facts: list[tuple[str, str]] = []
    commit = record.get("commit") or {}
    if commit.get("sha"):
        said = f"{_short(commit['sha'])} by {commit.get('author') or '?'}"
        if commit.get("message"):
            said += f': "{str(commit["message"]).splitlines()[0]}"'
        facts.append(("commit", said))
    if record.get("job"):
        run = f"run {_short(record.get('run'), 8)} on {record.get('node', '?')}"
        generation = f"generation {record.get('generation', '?')}"
        spec = f"spec {_short(record.get('specHash'))}"
        facts.append(("job", f"{record['job']} {generation}, {spec}, {run}"))
    dataset = record.get("dataset") or {}
    if dataset.get("name"):
        checksum = dataset.get("checksum") or "not measured"
        facts.append(("dataset", f"{dataset['name']} on {dataset.get('node', '?')}, {checksum}"))
    environment = record.get("environment") or {}
    trainer = record.get("trainer") or {}
    versions = trainer.get("versions") or {}
    installed = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    installed = f"; {installed}" if installed else ""
    if environment.get("runtime") == "docker":
        pinned = environment.get("digest") or environment.get("imageId") or "?"
        facts.append(("environment", f"image {environment.get('image')} ({pinned}){installed}"))
    elif environment.get("runtime") == "venv":
        python = environment.get("python", "?")
        key = environment.get("requirementsHash", "?")
        facts.append(("environment", f"venv, Python {python}, requirements {key}{installed}"))
    elif installed:
        facts.append(("environment", installed.removeprefix("; ")))
    device = trainer.get("device") or {}
    if device:
        said = f"{device.get('type')}: {device.get('name', '?')}"
        if device.get("driver"):
            said += f", driver {device['driver']}"
        facts.append(("device", said))
    if "seed" in trainer:
        facts.append(("seed", str(trainer["seed"])))
    started = record.get("startedAt") or trainer.get("startedAt")
    if started:
        ended = record.get("endedAt")
        facts.append(("time", f"{started} to {ended}" if ended else f"{started}, running"))
    return facts
