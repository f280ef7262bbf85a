"""`mlsmctl reproduce`: the manifest that reruns a past run exactly, from its
provenance (`mlsm.training.provenance`): the spec as that run had it, with the seed
written out, the image pinned by digest (or id), the trainer's packages pinned to the
versions it ran with, and the dataset pinned to the checksum its agent measured.
The commit and run it reproduces are annotations, for the reviewer.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from mlsm.errors import UserError
from mlsm.manifests.parsing import dump_yaml

__all__ = ["reproduction"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
PINNED = ("torch", "transformers", "safetensors")
"""Packages whose installed version the trainer records, and a venv pins."""


def _project(requirement: str) -> str:
    found = _NAME.match(requirement.strip())
    return re.sub(r"[-_.]+", "-", found.group(0)).lower() if found else ""


def _pin(requirements: list[str], versions: dict[str, Any]) -> list[str]:
    pinned = []
    for requirement in requirements:
        name = _project(requirement)
        version = versions.get(name)
        extras = re.match(r"[^\[<>=!~;@ ]+(\[[^\]]*\])?", requirement.strip())
        if name in PINNED and version and extras:
            pinned.append(f"{extras.group(0)}=={version}")
        else:
            pinned.append(requirement)
    return pinned


def reproduction(made: dict[str, Any], *, name: str) -> str:
    """The YAML of a TrainingJob named `name` that reruns the run `made` describes."""
    spec = made.get("spec")
    if not isinstance(spec, dict) or not spec:
        raise UserError(
            "this run's provenance does not hold its spec (it was too large for the "
            "metrics stream): take it from the checkpoint's provenance.json on the node"
        )
    spec = copy.deepcopy(spec)
    trainer = made.get("trainer") or {}
    versions = trainer.get("versions") or {}
    environment = made.get("environment") or {}
    notes = []
    if isinstance(spec.get("trainer"), dict) and "seed" in trainer:
        spec["trainer"]["seed"] = trainer["seed"]
    runtime = spec.get("runtime") or {}
    if isinstance(runtime.get("docker"), dict):
        digest, image_id = environment.get("digest"), environment.get("imageId")
        if digest:
            runtime["docker"]["image"] = digest
        elif image_id:
            runtime["docker"]["image"] = image_id
            notes.append(
                f"the image {environment.get('image')} has no registry digest (a local "
                "build): it is pinned by its id, which only nodes holding it can run"
            )
    elif isinstance(runtime.get("venv"), dict):
        venv = runtime["venv"]
        requirements = _pin(list(venv.get("requirements") or []), versions)
        if spec.get("trainer"):  # the trainer's packages, even those the agent lent it
            named = {_project(r) for r in requirements}
            missing = [p for p in PINNED if p not in named and versions.get(p)]
            requirements += [f"{p}=={versions[p]}" for p in missing]
        venv["requirements"] = requirements
        if environment.get("python"):
            venv["python"] = str(environment["python"])
    dataset = made.get("dataset") or {}
    if dataset.get("checksum"):
        spec["datasetChecksum"] = dataset["checksum"]
    elif spec.get("dataset"):
        notes.append(f"dataset {spec['dataset']} was not measured: its checksum is not pinned")
    commit = made.get("commit") or {}
    annotations = {
        "mlsm.dev/reproduces": f"{made.get('job')} generation {made.get('generation')}, "
        f"run {made.get('run')}",
        "mlsm.dev/commit": str(commit.get("sha") or "unknown"),
        "mlsm.dev/spec-hash": str(made.get("specHash") or "unknown"),
    }
    if versions.get("mlsm"):
        annotations["mlsm.dev/trained-with"] = f"mlsm {versions['mlsm']}"
    manifest = {
        "apiVersion": "mlsm/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    }
    author = commit.get("author") or "?"
    header = [
        f"# Reruns {made.get('job')} as run {str(made.get('run', ''))[:8]} ran it on "
        f"{made.get('node')}, from commit {str(commit.get('sha') or '?')[:12]} by {author}:",
        "# its spec, with the seed, the environment and the dataset's checksum pinned.",
        *(f"# Note: {note}." for note in notes),
    ]
    return "\n".join(header) + "\n" + dump_yaml(manifest)
