"""A checkpoint's provenance: what the agent recorded when the run started
($MLSM_PROVENANCE_FILE: the job, generation, commit, spec hash, node, dataset and
its checksum, environment) and what only the trainer's process knows: the installed
versions of torch, transformers and mlsm, the device (CPU model, or GPU name and
driver), the seed and the times.

Written beside every checkpoint as `provenance.json`, and to the metrics as a
`provenance` record (no `value`), which is how `mlsmctl describe`, the job's page and
`mlsmctl reproduce` read it without reaching the node's disk.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from mlsm.training.config import RunConfig

__all__ = ["PROVENANCE_FILE", "collect", "device_of", "now", "record_of"]

PROVENANCE_FILE = "provenance.json"
PACKAGES = ("torch", "transformers", "safetensors", "mlsm")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver(index: int) -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"-i={index}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def device_of(device: torch.device) -> dict[str, Any]:
    """The device the model trained on, as a person would name it."""
    if device.type == "cuda":
        index = device.index or 0
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(index),
            "driver": _driver(index),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "count": torch.cuda.device_count(),
        }
    return {"type": "cpu", "name": _cpu_model(), "cores": os.cpu_count()}


def collect(config: RunConfig, device: torch.device, *, world: int = 1) -> dict[str, Any]:
    """The run's provenance: the agent's record (when run by an agent) and the
    trainer's own facts."""
    record: dict[str, Any] = {}
    path = os.environ.get("MLSM_PROVENANCE_FILE")
    if path:
        try:
            loaded = json.loads(Path(path).read_text())
            record = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            record = {"problem": f"cannot read {path}"}
    record["trainer"] = {
        "seed": config.seed,
        "model": config.model,
        "processes": world,
        "versions": {
            "python": platform.python_version(),
            **{package: _version(package) for package in PACKAGES},
        },
        "device": device_of(device),
        "startedAt": now(),
    }
    return record


def record_of(provenance: dict[str, Any], budget: int) -> dict[str, Any]:
    """The metrics record of the provenance: without the spec when it would not fit
    the agent's line cap (the checkpoint's file keeps it)."""
    record = {"name": "provenance", **provenance}
    if len(json.dumps(record)) > budget:
        record.pop("spec", None)
        record["specLeftOut"] = True
    return record
