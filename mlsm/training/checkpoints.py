"""Checkpoint folders: `save_pretrained` output (safetensors, label maps in
config.json, preprocessor_config.json), so that each one classifies on its own, plus
`trainer_state.pt` (what a resumed run needs) and `evaluation.json` (the scores that
made it). Each folder is written to a temporary one and renamed into place, so a
kill during a save never leaves a broken checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mlsm.training.models import Preprocessing, save_preprocessing

__all__ = ["EVALUATION_FILE", "STATE_FILE", "save", "write_json"]

STATE_FILE = "trainer_state.pt"
EVALUATION_FILE = "evaluation.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """A JSON file written whole or not at all."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def save(
    folder: Path,
    model: Any,
    prep: Preprocessing,
    state: dict[str, Any],
    files: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Write a checkpoint folder atomically (temporary folder, then renames), with
    `files` (name: data) as JSON beside the model."""
    temporary = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, safe_serialization=True)
    save_preprocessing(temporary, prep)
    torch.save(state, temporary / STATE_FILE)
    for name, data in (files or {}).items():
        (temporary / name).write_text(json.dumps(data, indent=2) + "\n")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    temporary.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
