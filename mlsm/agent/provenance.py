"""What made a run, as the agent knows it when the run starts: the job and its
generation, the commit that last changed it, the spec and its hash, the node, the
dataset with the checksum this agent measured, and the environment (the venv's
requirements and their hash, or the image and its digest).

Written as `provenance.json` in the run's folder before the run starts, and named to
the job by $MLSM_PROVENANCE_FILE: the built-in trainer adds what only the job's own
process knows (installed versions, the device, the seed, times) and keeps a copy
beside each checkpoint (`mlsm.training.checkpoints`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import mlsm
from mlsm.agent.datasets import ScanResult
from mlsm.agent.records import RunFolder
from mlsm.agent.runtimes import StartFailed

__all__ = ["check_dataset", "run_provenance", "write_provenance"]


def run_provenance(
    *,
    run: str,
    assignment: Mapping[str, Any],
    node: str,
    dataset: ScanResult | None,
    environment: Mapping[str, Any],
) -> dict[str, Any]:
    spec = assignment.get("spec") or {}
    record: dict[str, Any] = {
        "job": assignment.get("job"),
        "generation": assignment.get("generation"),
        "run": run,
        "attempt": assignment.get("attempt"),
        "node": node,
        "commit": dict(assignment.get("commit") or {}),
        "specHash": assignment.get("specHash"),
        "spec": spec,
        "dataset": None,
        "environment": dict(environment),
        "agent": {"mlsm": mlsm.__version__},
        "startedAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if spec.get("dataset"):
        record["dataset"] = {
            "name": spec["dataset"],
            "node": node,
            "path": dataset.path if dataset else None,
            "checksum": dataset.checksum if dataset else None,
            "files": dataset.files if dataset else None,
            "bytes": dataset.bytes if dataset else None,
        }
    return record


def write_provenance(folder: RunFolder, record: Mapping[str, Any]) -> None:
    folder.provenance.write_text(json.dumps(record, indent=2) + "\n")


def check_dataset(spec: Mapping[str, Any], dataset: ScanResult | None) -> None:
    """A job pinned to a dataset checksum (`spec.datasetChecksum`) starts only on the
    data it names, as this agent measured it."""
    wanted = spec.get("datasetChecksum")
    if not wanted:
        return
    name = spec.get("dataset")
    if dataset is None:
        raise StartFailed(
            f"the job asks for dataset {name} with checksum {wanted}, and this agent "
            "has not measured that dataset yet; it waits for the next scan"
        )
    if dataset.checksum != wanted:
        raise StartFailed(
            f"dataset {name} here has checksum {dataset.checksum}, and the job asks for "
            f"{wanted}: this node holds another version of it; nothing was started"
        )
