"""A TrainingJob with `spec.trainer` end to end: merged in git, scheduled where the
digits dataset lies, run by a real agent as `python -m mlsm.training` in its venv,
its metrics shipped and visible through the API, `mlsmctl metrics` and `describe`.
The trainer under torchrun, one process per GPU, is in test_multinode.py."""

from __future__ import annotations

import sys
from collections.abc import Callable

import httpx

from mlsm.training.demo import write_digits
from tests.databases import sqlite_only
from tests.integration.conftest import AgentProcess, GitRepo
from tests.integration.test_agents import cli, get_job, runs_of, started, wait_phase

PYTHON = ".".join(map(str, sys.version_info[:2]))

DATASET = """
    apiVersion: mlsm/v1
    kind: Dataset
    metadata: {name: digits}
    spec:
      format: imagefolder
      locations: [{node: n1, path: datasets/digits}]
"""

TRAINER = f"""
    apiVersion: mlsm/v1
    kind: TrainingJob
    metadata: {{name: vit, owner: ada}}
    spec:
      runtime: {{venv: {{python: "{PYTHON}"}}}}
      trainer:
        model: builtin:vit-tiny
        pretrained: false
        epochs: 2
        batchSize: 128
        learningRate: 0.002
        numWorkers: 0
        monitor: {{metric: accuracy}}
      dataset: digits
      resources: {{gpus: 0, cpu: 1}}
"""


@sqlite_only
def test_a_trainer_job_trains_on_its_node_and_its_metrics_reach_the_api(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    client, agents = started(start, start_agent, repo, database_url, {"n1": 0})
    write_digits(agents["n1"].root / "datasets" / "digits")
    repo.write("datasets/digits.yaml", DATASET)
    repo.write("jobs/vit.yaml", TRAINER)
    repo.commit("train a tiny ViT on the digits")

    wait_phase(client, "vit", "Succeeded", timeout=180)
    [run] = runs_of(client, "vit")
    output = agents["n1"].root / "jobs" / "vit" / "output"
    assert run["outputDir"] == str(output)
    assert (output / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (output / "checkpoints" / "last").is_dir()

    records = client.get(f"/api/v1/runs/{run['id']}/metrics").json()["records"]
    accuracies = [r["value"] for r in records if r["split"] == "val" and r["name"] == "accuracy"]
    assert len(accuracies) == 2, "one evaluation per epoch"
    assert max(accuracies) > 0.2, "better than chance (0.1)"

    table = cli(client, "metrics", "job", "vit").splitlines()
    assert table[0].split()[0] == "EPOCH"
    assert "VAL/ACCURACY" in table[0]
    assert [row.split()[0] for row in table[1:]] == ["1", "2"]

    page = cli(client, "describe", "job", "vit")
    assert f"Best:         val accuracy {max(accuracies):.4g}" in page
    assert f"Checkpoints:  n1:{output}/checkpoints (best/, last/)" in page
    log = cli(client, "logs", "job", "vit")
    assert "epoch 2/2" in log
    assert get_job(client, "vit")["status"]["phase"] == "Succeeded"
