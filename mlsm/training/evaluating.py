"""Scoring a split: loss, accuracy and macro F1, and per class precision, recall, F1
and the confusion matrix. Written to the metrics (`Evaluation.record`) and next to
each checkpoint (`evaluation.json`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mlsm.training.data import ImageFolder, to_pixels
from mlsm.training.models import Preprocessing

__all__ = ["RECORD_BUDGET", "Evaluation", "evaluate"]


@dataclass
class Evaluation:
    """One split's scores: loss, accuracy and macro F1, and per class its precision,
    recall and F1 and the confusion matrix (rows: true class, columns: predicted)."""

    split: str
    classes: list[str]
    scores: dict[str, float]
    confusion: list[list[int]]
    precision: list[float]
    recall: list[float]
    f1: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            **self.scores,
            "precision": self.precision,
            "recall": self.recall,
            "f1PerClass": self.f1,
            "confusion": self.confusion,
        }

    def record(self) -> dict[str, Any]:
        """The metrics record of the per-class figures (no `value`: tables and charts
        skip it), kept under the agent's line cap: the confusion matrix is left out
        for many classes (the checkpoint's evaluation.json always has it)."""
        record: dict[str, Any] = {
            "name": "classes",
            "classes": self.classes,
            "precision": [round(v, 4) for v in self.precision],
            "recall": [round(v, 4) for v in self.recall],
            "confusion": self.confusion,
        }
        if len(json.dumps(record)) > RECORD_BUDGET:
            del record["confusion"]
        if len(json.dumps(record)) > RECORD_BUDGET:
            record = {"name": "classes", "truncated": True}
        return record


RECORD_BUDGET = 15_000
"""Bytes a per-class record may take (the agent ships lines up to 16 KiB)."""


@torch.no_grad()
def evaluate(
    model: Any,
    data: ImageFolder,
    prep: Preprocessing,
    device: torch.device,
    batch_size: int,
    options: dict[str, Any] | None = None,
) -> Evaluation:
    """Scores over a whole split."""
    model.eval()
    classes = len(data.classes)
    confusion = torch.zeros(classes * classes, dtype=torch.long)
    total_loss, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(data)))
        if data.cached:
            images, labels = data.batch(indices)
        else:
            pairs = [data[int(i)] for i in indices]
            images = torch.stack([p[0] for p in pairs])
            labels = torch.tensor([p[1] for p in pairs])
        pixels = prep.normalise(to_pixels(images, device))
        logits = model(pixel_values=pixels, **(options or {})).logits.float()
        total_loss += float(F.cross_entropy(logits, labels.to(device), reduction="sum"))
        count += len(indices)
        predicted = logits.argmax(-1).cpu()
        confusion += torch.bincount(labels * classes + predicted, minlength=classes * classes)
    matrix = confusion.view(classes, classes)
    counts = matrix.double()
    true_positive = counts.diag()
    precision = true_positive / counts.sum(0).clamp(min=1)
    recall = true_positive / counts.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = counts.sum(1) > 0
    model.train()
    return Evaluation(
        split=data.split,
        classes=list(data.classes),
        scores={
            "loss": total_loss / max(count, 1),
            "accuracy": float(true_positive.sum() / max(count, 1)),
            "f1": float(f1[present].mean()) if present.any() else 0.0,
        },
        confusion=matrix.tolist(),
        precision=precision.tolist(),
        recall=recall.tolist(),
        f1=f1.tolist(),
    )
