"""`mlsmctl get` and `describe` against a real controller process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import httpx

from tests.integration.conftest import GitRepo, job, node, wait_for


def mlsmctl(client: httpx.Client, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLSM_SERVER": str(client.base_url)}
    return subprocess.run([sys.executable, "-m", "mlsm.cli", *args], capture_output=True,
                          text=True, env=env)  # fmt: skip


def test_get_and_describe_show_what_the_controller_holds(
    start: Callable[..., httpx.Client], repo: GitRepo
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1"))
    repo.write("jobs/train.yaml", job("train"))
    repo.write("jobs/other.yaml", job("other"))
    first = repo.commit("Add a node and two jobs")
    client = start(str(repo.root), "--poll-interval", "0.2", "--no-watch")

    def synced(sha: str) -> bool:
        return bool(client.get("/api/v1/sync").json()["items"][0]["commit"]["sha"] == sha)

    wait_for(lambda: synced(first))
    repo.write("jobs/train.yaml", job("train", epochs=2))
    sha = repo.commit("Train longer")
    wait_for(lambda: synced(sha))

    table = mlsmctl(client, "get", "jobs")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "OWNER", "PHASE", "GPUS", "PRIORITY", "VALID", "AGE"]
    assert [line.split()[:3] for line in lines[1:]] == [["other", "ada", "Pending"],
                                                        ["train", "ada", "Pending"]]  # fmt: skip
    wide = mlsmctl(client, "get", "no", "-o", "wide", "-l", "gpu=a100").stdout
    assert "nodes/gpu-1.yaml:1" in wide
    assert first[:10] in wide  # the commit that last changed the node
    assert "venv,docker" in wide  # defaults filled in
    as_json = json.loads(mlsmctl(client, "get", "jobs", "train", "-o", "json").stdout)
    assert as_json["items"][0]["metadata"]["generation"] == 2
    assert "kind: TrainingJob" in mlsmctl(client, "get", "tj", "-o", "yaml").stdout

    page = mlsmctl(client, "describe", "job", "train")
    assert page.returncode == 0, page.stderr
    for fragment in ("Name:         train", "Phase:        Pending", "Generation:   2",
                     "Source:       jobs/train.yaml:1", f"Commit:       {sha[:10]} Train longer",
                     "Author:       Ada <ada@lab.org>", "Valid   True", "print(2)",
                     "Created", "Updated", "generation 2 from"):  # fmt: skip
        assert fragment in page.stdout, fragment

    missing = mlsmctl(client, "describe", "job", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("TrainingJob/nope not found")
    unknown = mlsmctl(client, "get", "widgets")
    assert unknown.returncode == 2
    assert "unknown kind 'widgets'" in unknown.stderr


def test_an_unreachable_controller_is_one_line() -> None:
    env = {**os.environ, "MLSM_SERVER": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "mlsm.cli", "get", "jobs"], capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert done.returncode == 1
    assert "cannot reach the controller at http://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr
