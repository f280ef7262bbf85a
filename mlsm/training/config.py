"""The trainer's configuration: a TrainingJob's `spec.trainer`, plus where the data is
and where checkpoints go (the agent fills those in), read from JSON or YAML (1.2, as
manifests are: `mixedPrecision: no` is the text 'no')."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError

from mlsm.errors import UserError
from mlsm.manifests.parsing import parse_bytes
from mlsm.schemas.training import TrainerConfig

__all__ = ["RunConfig", "load_config"]


class RunConfig(TrainerConfig):
    """Everything one training run needs."""

    model: str = Field(
        description="A Hugging Face model folder (absolute, or relative to the working "
        "directory), or 'builtin:vit-tiny', 'builtin:vit-small', 'builtin:vit-base'."
    )
    dataset_root: str = Field(description="ImageFolder root: train/ and val/ (test/ optional).")
    output_dir: str = Field(description="Checkpoints (last/, best/) and the final model.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimiser steps (for tests)."
    )
    log_every: int = Field(default=20, ge=1, description="Steps between progress lines.")
    cache_bytes: int = Field(
        default=2 << 30, ge=0, description="Decoded images kept in memory up to this size."
    )


def load_config(path: str) -> RunConfig:
    """A config file, JSON or YAML, with errors that name the file and the field."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the config: {exc.strerror}") from exc
    parsed = parse_bytes(raw, path)  # YAML 1.2, as manifests are read (JSON is YAML too)
    if parsed.problems:
        raise UserError(str(parsed.problems[0]))
    if len(parsed.documents) != 1:
        raise UserError(f"{path}: a config is one JSON object or YAML mapping")
    data = parsed.documents[0].data
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"{path}: {problems}") from exc
