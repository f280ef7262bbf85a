"""What the agent records of a run before it starts, and the dataset checksum a
reproduced job is pinned to."""

from __future__ import annotations

import pytest

from mlsm.agent.datasets import ScanResult
from mlsm.agent.provenance import check_dataset, run_provenance
from mlsm.agent.runtimes import StartFailed

SCAN = ScanResult("datasets/digits", 1797, 123_456, "sha256:" + "a" * 64, ("one", "two"))
ASSIGNMENT = {"job": "j", "generation": 4, "attempt": 2, "specHash": "f" * 64,
              "commit": {"sha": "c0ffee", "author": "Ada", "message": "Train"},
              "spec": {"dataset": "digits", "command": ["true"]}}  # fmt: skip


def test_the_record_names_the_job_commit_dataset_and_environment() -> None:
    made = run_provenance(run="r1", assignment=ASSIGNMENT, node="n1", dataset=SCAN,
                          environment={"runtime": "venv", "requirementsHash": "k"})  # fmt: skip
    assert (made["job"], made["generation"], made["attempt"], made["run"]) == ("j", 4, 2, "r1")
    assert made["commit"] == ASSIGNMENT["commit"]
    assert made["specHash"] == "f" * 64
    where = {"name": "digits", "node": "n1", "path": "datasets/digits"}
    assert made["dataset"] == {**where, "checksum": SCAN.checksum, "files": 1797, "bytes": 123_456}
    assert made["environment"]["requirementsHash"] == "k"
    unmeasured = run_provenance(run="r1", assignment=ASSIGNMENT, node="n1", dataset=None,
                                environment={})  # fmt: skip
    assert unmeasured["dataset"]["checksum"] is None


def test_a_pinned_checksum_starts_only_on_that_data() -> None:
    spec = {"dataset": "digits", "datasetChecksum": SCAN.checksum}
    check_dataset(spec, SCAN)
    check_dataset({"dataset": "digits"}, None)  # not pinned: nothing to check
    with pytest.raises(StartFailed, match="another version of it"):
        check_dataset({**spec, "datasetChecksum": "sha256:" + "b" * 64}, SCAN)
    with pytest.raises(StartFailed, match="has not measured that dataset yet"):
        check_dataset(spec, None)
