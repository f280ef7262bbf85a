"""`mlsmctl reproduce`: a past run's provenance as the manifest that reruns it, which
mlsmctl validate accepts, with the seed, environment and dataset pinned."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mlsm import manifests, schemas
from mlsm.cli.reproducing import reproduction
from mlsm.errors import UserError

CHECKSUM = "sha256:" + "5" * 64

MADE: dict[str, Any] = {
    "job": "resnet-digits", "generation": 2, "run": "0123456789abcdef", "node": "gpu-1",
    "commit": {"sha": "c0ffee" * 6 + "c0ff", "author": "Ada <ada@lab>", "message": "More"},
    "specHash": "9" * 64,
    "spec": {"runtime": {"venv": {"python": "3.11",
                                  "requirements": ["torch>=2.5,<2.14", "numpy"]}},
             "trainer": {"model": "builtin:resnet-tiny", "epochs": 2}, "dataset": "digits"},
    "dataset": {"name": "digits", "node": "gpu-1", "checksum": CHECKSUM},
    "environment": {"runtime": "venv", "python": "3.11.7", "requirementsHash": "ab"},
    "trainer": {"seed": 0, "versions": {"torch": "2.13.0+cpu", "transformers": "5.24.0",
                                        "safetensors": "0.6.2", "mlsm": "0.1.0"}},
}  # fmt: skip


def reproduced(made: dict[str, Any], name: str = "again") -> schemas.TrainingJob:
    text = reproduction(made, name=name)
    loaded = manifests.load_bytes(text.encode(), "again.yaml", cross_checks=False)
    assert not loaded.problems, loaded.problems
    [job] = loaded.objects
    assert isinstance(job.manifest, schemas.TrainingJob)
    return job.manifest


def test_a_venv_run_is_pinned_to_its_seed_packages_python_and_data() -> None:
    job = reproduced(MADE)
    assert job.metadata.name == "again"
    spec = job.spec
    assert spec.trainer is not None
    assert spec.trainer.seed == 0
    assert "seed" not in MADE["spec"]["trainer"]  # the input is left alone
    assert spec.dataset_checksum == CHECKSUM
    venv = spec.runtime.venv
    assert venv is not None
    assert venv.python == "3.11.7"
    assert venv.requirements == ["torch==2.13.0+cpu", "numpy", "transformers==5.24.0",
                                 "safetensors==0.6.2"]  # fmt: skip
    notes = job.metadata.annotations
    assert notes["mlsm.dev/commit"] == MADE["commit"]["sha"]
    assert notes["mlsm.dev/reproduces"] == "resnet-digits generation 2, run 0123456789abcdef"
    assert notes["mlsm.dev/trained-with"] == "mlsm 0.1.0"


def test_an_image_is_pinned_by_digest_or_else_by_id() -> None:
    made = copy.deepcopy(MADE)
    made["spec"]["runtime"] = {"docker": {"image": "lab/train:latest"}}
    made["environment"] = {"runtime": "docker", "image": "lab/train:latest",
                           "imageId": "sha256:" + "1" * 64,
                           "digest": "lab/train@sha256:" + "2" * 64}  # fmt: skip
    job = reproduced(made)
    assert job.spec.runtime.docker is not None
    assert job.spec.runtime.docker.image == "lab/train@sha256:" + "2" * 64
    made["environment"]["digest"] = None
    text = reproduction(made, name="again")
    assert "pinned by its id" in text
    docker = reproduced(made).spec.runtime.docker
    assert docker is not None
    assert docker.image == "sha256:" + "1" * 64


def test_an_unmeasured_dataset_is_said_and_a_spec_left_out_is_an_error() -> None:
    made = copy.deepcopy(MADE)
    made["dataset"]["checksum"] = None
    text = reproduction(made, name="again")
    assert "dataset digits was not measured" in text
    assert reproduced(made).spec.dataset_checksum is None
    del made["spec"]
    with pytest.raises(UserError, match=r"provenance\.json on the node"):
        reproduction(made, name="again")
