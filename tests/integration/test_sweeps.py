"""A sweep merged into git, run by a real controller and agent: its children are
ordinary trainer jobs, at most `parallelism` of them at once, ranked best first by
`mlsmctl get sweep` and on the site; a change to the sweep in git keeps the children
it still has and removes the one it dropped. (Two children, one at a time: each is a
trainer process; the scheduler's limit on more is tested in tests/unit/planning.)"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from mlsm.training.demo import write_digits
from tests.databases import sqlite_only
from tests.integration.conftest import AgentProcess, GitRepo, get_job, wait_for
from tests.integration.test_agents import cli, started

DIGITS = """
    apiVersion: mlsm/v1
    kind: Dataset
    metadata: {name: digits}
    spec:
      format: imagefolder
      locations: [{node: n1, path: datasets/digits}]
"""

SWEEP = """
    apiVersion: mlsm/v1
    kind: TrainingJob
    metadata: {{name: lr, owner: ada}}
    spec:
      runtime: {{venv: {{python: "3.11"}}}}
      trainer: {{model: "builtin:resnet-tiny", pretrained: false, epochs: 1, batchSize: 64,
                 numWorkers: 0}}
      dataset: digits
      resources: {{gpus: 0, cpu: 500m}}
      sweep:
        parameters:
          learningRate: [{rates}]
        parallelism: 1
"""

CHILDREN = ("lr-0", "lr-1")


def phases_of(client: httpx.Client) -> dict[str, str]:
    """The children's phases, read at once (one list: one consistent read)."""
    found = client.get("/api/v1/jobs", params={"selector": "mlsm.dev/sweep=lr"}).json()
    return {j["metadata"]["name"]: j["status"].get("phase", "") for j in found["items"]}


@sqlite_only
def test_a_sweep_runs_its_children_within_its_parallelism_and_ranks_them(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    client, agents = started(start, start_agent, repo, database_url, {"n1": 0})
    write_digits(agents["n1"].root / "datasets" / "digits")
    repo.write("datasets/digits.yaml", DIGITS)
    repo.write("jobs/lr.yaml", SWEEP.format(rates="0.0001, 0.003"))
    repo.commit("Sweep the learning rate")

    most = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        phases = [phases_of(client).get(c, "") for c in CHILDREN]
        most = max(most, sum(p in ("Scheduled", "Starting", "Running") for p in phases))
        if all(p == "Succeeded" for p in phases):
            break
        assert "Failed" not in phases, phases
        time.sleep(0.1)
    assert all(get_job(client, c)["status"]["phase"] == "Succeeded" for c in CHILDREN)
    assert most == 1, "one at once, never two"
    waited = client.get("/api/v1/events", params={"name": "lr-1"}).json()
    assert "sweep lr is at its parallelism (1 at once)" in str(waited)

    child = get_job(client, "lr-1")
    labels = child["metadata"]["labels"]
    assert (labels["learningRate"], labels["mlsm.dev/sweep"]) == ("0.003", "lr")
    assert child["spec"]["trainer"]["learningRate"] == 0.003
    assert "sweep" not in child["spec"]

    board = client.get("/api/v1/sweeps/lr").json()
    scores = [c["best"] for c in board["children"]]
    assert scores == sorted(scores, reverse=True)
    assert board["metric"] == "accuracy"
    table = cli(client, "get", "sweep", "lr").splitlines()
    assert table[0].startswith("sweep lr: 2 children (2 Succeeded), at most 1 at once")
    assert table[1].split() == ["#", "NAME", "PHASE", "LEARNINGRATE", "BEST", "VAL", "ACCURACY",
                                "EPOCH"]  # fmt: skip
    assert [row.split()[1] for row in table[2:]] == [c["name"] for c in board["children"]]
    page = client.get("/sweeps/lr")
    assert page.status_code == 200
    assert '<a href="/jobs/lr-1">lr-1</a>' in page.text
    assert '<a href="/sweeps/lr">lr</a>' in client.get("/jobs/lr-0").text

    # Drop the last value: lr-0 is kept as it was, lr-1 goes.
    repo.write("jobs/lr.yaml", SWEEP.format(rates="0.0001"))
    repo.commit("Narrow the sweep")
    wait_for(lambda: get_job(client, "lr-1")["metadata"]["deletedAt"], timeout=30)
    assert [c["name"] for c in client.get("/api/v1/sweeps/lr").json()["children"]] == ["lr-0"]
    job = get_job(client, "lr-0")
    assert (job["metadata"]["generation"], job["status"]["phase"]) == (1, "Succeeded")
