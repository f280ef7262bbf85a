"""A run's metric records read as people read them: one row per epoch, and the best
value of the monitored metric. Pure functions over the records the trainer (or any
job) writes to $MLSM_METRICS_FILE, `{"step", "epoch", "split", "name", "value"}`.

Used by `mlsmctl describe` (`mlsm.cli.views`) and the job page (`mlsm.web`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Best", "best_score", "column_of", "per_epoch"]


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
