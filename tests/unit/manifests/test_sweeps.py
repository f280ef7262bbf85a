"""A sweep's expansion into child jobs: names, values, labels, order, draws that
survive more trials, and errors located at the sweep's field with the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mlsm import manifests, schemas
from mlsm.manifests.sweeping import children_of, label_value

JOB = """
apiVersion: mlsm/v1
kind: TrainingJob
metadata:
  name: lr
  labels: {{project: digits}}
spec:
  runtime: {{venv: {{python: "3.11"}}}}
  trainer: {{model: "builtin:resnet-tiny", epochs: 3}}
  dataset: digits
  sweep:
{sweep}
"""


def load(write: Callable[[str, str], Path], sweep: str) -> manifests.LoadResult:
    path = write("lr.yaml", JOB.format(sweep=sweep))
    return manifests.load_paths([path], cross_checks=False)


def jobs(result: manifests.LoadResult) -> list[schemas.TrainingJob]:
    return [o.manifest for o in result.objects if isinstance(o.manifest, schemas.TrainingJob)]


def test_a_grid_is_every_combination_in_order_each_an_ordinary_job(
    write: Callable[[str, str], Path],
) -> None:
    result = load(write, "    parameters:\n      learningRate: [0.001, 0.01]\n"
                         "      augmentation: [none, light]\n    parallelism: 2")  # fmt: skip
    assert not result.problems, result.problems
    children = jobs(result)
    assert [j.metadata.name for j in children] == ["lr-0", "lr-1", "lr-2", "lr-3"]
    values = [(j.spec.trainer.learning_rate, j.spec.trainer.augmentation)
              for j in children if j.spec.trainer]  # fmt: skip
    assert values == [(0.001, "none"), (0.001, "light"), (0.01, "none"), (0.01, "light")]
    first = children[0]
    assert first.spec.sweep is None
    assert first.spec.trainer is not None
    assert first.spec.trainer.epochs == 3  # the rest of the job's spec, as written
    assert first.metadata.labels == {"project": "digits", "mlsm.dev/sweep": "lr",
                                     "mlsm.dev/sweep-parallelism": "2",
                                     "learningRate": "0.001", "augmentation": "none"}  # fmt: skip
    [summary] = result.sweeps
    assert (summary.name, summary.parallelism, len(summary.children)) == ("lr", 2, 4)
    assert summary.children[1] == ("lr-1", "learningRate=0.001 augmentation=light")


def test_random_draws_depend_on_seed_and_index_only() -> None:
    sweep = schemas.Sweep.model_validate({"method": "random", "trials": 8, "seed": 3,
        "parameters": {"learningRate": {"min": 1e-4, "max": 1e-1, "log": True},
                       "batchSize": [32, 64], "epochs": {"min": 2, "max": 9}}})  # fmt: skip
    eight = children_of("r", sweep)
    twelve = children_of("r", sweep.model_copy(update={"trials": 12}))
    assert eight == twelve[:8], "more trials keep the children drawn"
    assert children_of("r", sweep.model_copy(update={"seed": 4}))[0] != eight[0]
    for child in twelve:
        assert 1e-4 <= child.values["learningRate"] <= 1e-1
        assert child.values["batchSize"] in (32, 64)
        assert isinstance(child.values["epochs"], int)
        assert 2 <= child.values["epochs"] <= 9
    assert len({c.values["learningRate"] for c in twelve}) == 12


@pytest.mark.parametrize(
    ("sweep", "field", "fragment"),
    [
        pytest.param("    parameters:\n      batchSize: [32, 0]", "spec.sweep.parameters.batchSize",
                     "child lr-1 (batchSize=0) is not a valid job: spec.trainer.batchSize",
                     id="bad-value"),
        pytest.param("    parameters:\n      learningRate: [0.1, 0.2, 0.3]\n"
                     "      epochs: [1, 2]\n    maxChildren: 4", "spec.sweep",
                     "expands to 6 children, more than maxChildren 4", id="too-many"),
        pytest.param("    parameters:\n      learningRate: {min: 0.1, max: 0.2}", "spec.sweep",
                     "a grid needs a list of values", id="range-in-grid"),
        pytest.param("    method: random\n    parameters:\n      seed: [1, 2]", "spec.sweep",
                     "a random sweep needs 'trials'", id="no-trials"),
        pytest.param("    parameters:\n      dataset: [a, b]", "spec.sweep.parameters",
                     "not a trainer field a sweep can vary", id="not-a-field"),
        pytest.param("    parameters:\n      project: [a]", "spec.sweep.parameters",
                     "not a trainer field", id="label-like"),
    ],
)  # fmt: skip
def test_a_sweep_that_cannot_expand_is_named_at_its_field(
    write: Callable[[str, str], Path], sweep: str, field: str, fragment: str
) -> None:
    [problem] = load(write, sweep).problems
    assert problem.field is not None
    assert problem.field.startswith(field), problem
    assert fragment in problem.message, problem.message


def test_a_label_of_the_job_cannot_also_be_swept(write: Callable[[str, str], Path]) -> None:
    text = JOB.format(sweep="    parameters:\n      seed: [1, 2]").replace(
        "{project: digits}", "{seed: fixed}")  # fmt: skip
    [problem] = manifests.load_paths([write("lr.yaml", text)], cross_checks=False).problems
    assert problem.field == "spec.sweep.parameters.seed"
    assert "has a label 'seed' already" in problem.message


def test_a_child_named_like_another_job_is_a_duplicate(write: Callable[[str, str], Path]) -> None:
    swept = write("a.yaml", JOB.format(sweep="    parameters:\n      seed: [1, 2]"))
    plain = JOB.format(sweep="").replace("name: lr", "name: lr-1").replace("  sweep:\n", "")
    write("b.yaml", plain)
    result = manifests.load_paths([swept.parent], cross_checks=True)
    said = [p.message for p in result.problems if p.name == "lr-1"]
    assert any("duplicate" in m.lower() or "already" in m for m in said), result.problems


def test_label_values_follow_label_syntax() -> None:
    assert label_value(0.0003) == "0.0003"
    assert label_value(1e-05) == "1e-05"
    assert label_value(True) == "true"
    assert label_value("builtin:resnet-tiny") == "builtin-resnet-tiny"
    assert label_value("models/vit base") == "models-vit-base"


def test_validate_prints_the_expansion(write: Callable[[str, str], Path]) -> None:
    path = write("lr.yaml", JOB.format(sweep="    parameters:\n      seed: [1, 2, 3]"))
    command = [sys.executable, "-m", "mlsm.cli", "validate", "--no-cross-checks", str(path)]
    shown = subprocess.run(command, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert f"{path}:1:1: TrainingJob/lr: a sweep of 3 children:\n  lr-0  seed=1\n" in shown.stdout
    assert shown.stdout.endswith("3 objects in 1 file: all valid\n")
    document = json.loads(subprocess.run([*command, "-o", "json"], capture_output=True,
                                         text=True).stdout)  # fmt: skip
    assert [c["name"] for c in document["sweeps"][0]["children"]] == ["lr-0", "lr-1", "lr-2"]
