"""Classifying images with a trainer checkpoint in a child process: `python -m
mlsm.training predict --json` (`mlsm.training.predicting`), on the CPU.

Shared by `mlsmctl predict` (a checkpoint on this machine) and the agent (one on its
node): neither imports PyTorch itself (import-linter keeps torch to the trainer),
and a child process is killed cleanly when it runs past its time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CHECKPOINTS", "ClassifyFailed", "Labels", "classify", "saved_checkpoint"]

Labels = list[list[list[str | float]]]
"""Per image, its top-k [label, probability] pairs, most likely first."""

CHECKPOINTS = ("best", "last")
"""The folders under checkpoints/ predict reads, in order (`last` alone where a job
keeps only that)."""


class ClassifyFailed(Exception):
    """The classifier could not answer: `status` 400 for an input it cannot read (an
    image, a folder that is not a saved model), 500 for the classifier failing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def saved_checkpoint(checkpoints: Path) -> tuple[str, Path] | None:
    """The name and path of the checkpoint to predict with under `checkpoints/`."""
    for name in CHECKPOINTS:
        if (checkpoints / name / "config.json").is_file():
            return name, checkpoints / name
    return None


def classify(
    checkpoint: Path,
    images: Sequence[Path],
    *,
    top_k: int = 3,
    timeout: float = 110.0,
    names: Sequence[str] | None = None,
    python: str = sys.executable,
) -> Labels:
    """Each image's top-k labels. `names`: what to call the images in an error (the
    caller's file names, where `images` are copies)."""
    command = [
        python,
        "-m",
        "mlsm.training",
        "predict",
        "--json",
        "--top-k",
        str(top_k),
        str(checkpoint),
        *map(str, images),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ClassifyFailed(500, f"the classifier took over {timeout:g} s") from None
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        if said.startswith("ModuleNotFoundError: No module named "):
            raise ClassifyFailed(
                500,
                f"{python} cannot classify: {said.partition(': ')[2]}; install the "
                "built-in trainer's packages there (pip install 'mlsm[training]')",
            )
        said = said.removeprefix("mlsm.training: error: ")
        for path, name in zip(images, names or [], strict=False):
            said = said.replace(str(path), name)
        raise ClassifyFailed(400 if done.returncode == 1 else 500, said)
    try:
        labels = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        labels = None
    if not isinstance(labels, list) or len(labels) != len(images):
        raise ClassifyFailed(500, "the classifier printed no answer")
    return labels
