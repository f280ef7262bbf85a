"""`mlsmctl predict job NAME IMAGE...`: the top-k labels from a trainer job's
checkpoint, wherever it lies.

- `--checkpoint DIR`: that folder, on this machine; the controller is not asked.
- Else the controller says which run holds the job's checkpoints and on which node.
  When that run's output folder is on this machine (`mlsmctl up`, or a shell on the
  node itself) and its provenance names the same job and node, it is read here.
- Else (or with `--remote`) the images go to the controller, which relays them to
  that node's agent (`mlsm.controller.predicting`); a node that is down is said at
  once, with what to do.

Either way the classifier is `mlsm.classifying`'s child process.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlsm.classifying import ClassifyFailed, Labels, classify, saved_checkpoint
from mlsm.cli.client import Client
from mlsm.errors import UserError

__all__ = ["Prediction", "predict_here", "predict_job", "render"]

MiB = 1 << 20
IMAGE_BYTES = 12 * MiB
"""All the images of one request through the controller (16 MiB as base64)."""
MAX_IMAGES = 64


@dataclass(frozen=True)
class Prediction:
    """Labels for `images`, and where they came from."""

    images: list[str]
    labels: Labels
    source: str
    """`node:path (how)`, shown above the labels."""

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "predictions": [
                {"image": image, "labels": labels}
                for image, labels in zip(self.images, self.labels, strict=True)
            ],
        }


def predict_here(folder: Path, images: list[Path], *, top_k: int, timeout: float) -> Prediction:
    """With a checkpoint folder on this machine (a `checkpoints/` folder or one of its
    `best/`, `last/`)."""
    found = saved_checkpoint(folder) if not (folder / "config.json").is_file() else None
    checkpoint = found[1] if found else folder
    if not (checkpoint / "config.json").is_file():
        raise UserError(
            f"{folder} is not a saved checkpoint (no config.json): give a folder such "
            "as <output>/checkpoints/best"
        )
    _check_images(images)
    try:
        labels = classify(checkpoint, images, top_k=top_k, timeout=timeout)
    except ClassifyFailed as exc:
        raise UserError(str(exc)) from None
    return Prediction([str(i) for i in images], labels, f"{checkpoint} (on this machine)")


def predict_job(
    client: Client, name: str, images: list[Path], *, top_k: int, timeout: float, remote: bool
) -> Prediction:
    job = client.object("TrainingJob", name)
    if not (job.get("spec") or {}).get("trainer"):
        raise UserError(
            f"job {name} runs its own code (no spec.trainer): its checkpoints are in its "
            "own format; mlsmctl predict reads the built-in trainer's"
        )
    run = _checkpoint_run(job.get("runs") or [])
    if run is None:
        phase = (job.get("status") or {}).get("phase", "Pending")
        raise UserError(
            f"job {name} has no run that wrote checkpoints yet (phase {phase}); the trainer "
            "saves one after its first epoch"
        )
    _check_images(images)
    local = None if remote else _here(Path(run["outputDir"]) / "checkpoints", name, run["node"])
    if local is not None:
        try:
            labels = classify(local, images, top_k=top_k, timeout=timeout)
        except ClassifyFailed as exc:
            raise UserError(str(exc)) from None
        return Prediction(
            [str(i) for i in images], labels, f"{run['node']}:{local} (on this machine)"
        )
    body = {
        "topK": top_k,
        "images": [
            {"name": str(image), "data": base64.b64encode(image.read_bytes()).decode()}
            for image in images
        ],
    }
    answer = client.post(
        f"/jobs/{name}/predict", body, params={"wait": timeout}, timeout=timeout + 15
    )
    folder = f"{run['outputDir']}/checkpoints/{answer.get('checkpoint', 'best')}"
    return Prediction(
        [p["image"] for p in answer["predictions"]],
        [p["labels"] for p in answer["predictions"]],
        f"{answer['node']}:{folder} (through the node's agent)",
    )


def render(prediction: Prediction) -> str:
    width = max(len(image) for image in prediction.images)
    lines = [f"checkpoint: {prediction.source}"]
    for image, labels in zip(prediction.images, prediction.labels, strict=True):
        ranked = "   ".join(f"{label} {float(p):.3f}" for label, p in labels)
        lines.append(f"{image.ljust(width)}   {ranked}")
    return "\n".join(lines) + "\n"


def _checkpoint_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """As the controller chooses (`controller.predicting.checkpoint_run`): the latest
    attempt's run that said where its outputs are, node rank 0 first."""
    placed = [r for r in runs if r.get("outputDir") and r.get("node")]
    return max(placed, key=_order, default=None)


def _order(run: dict[str, Any]) -> tuple[int, bool, str]:
    return (run["attempt"], (run.get("rank") or 0) == 0, run.get("createdAt") or "")


def _here(checkpoints: Path, job: str, node: str) -> Path | None:
    """The checkpoint, when the run's folder is on this machine: its provenance names
    this job and node (a folder of the same name elsewhere is not it)."""
    found = saved_checkpoint(checkpoints)
    if found is None:
        return None
    try:
        made = json.loads((found[1] / "provenance.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(made, dict) or made.get("job") != job or made.get("node") != node:
        return None
    return found[1]


def _check_images(images: list[Path]) -> None:
    if len(images) > MAX_IMAGES:
        raise UserError(f"{len(images)} images; at most {MAX_IMAGES} at a time")
    total = 0
    for image in images:
        if not image.is_file():
            raise UserError(f"{image}: no such file")
        total += image.stat().st_size
    if total > IMAGE_BYTES:
        raise UserError(
            f"the images come to {total / MiB:.1f} MiB, over one request's "
            f"{IMAGE_BYTES // MiB} MiB: predict fewer at a time"
        )
