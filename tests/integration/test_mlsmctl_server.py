"""`mlsmctl get` and `describe` against a real controller process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

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


def test_diff_says_what_the_controller_would_do_with_a_path(
    start: Callable[..., httpx.Client], repo: GitRepo, tmp_path: Path
) -> None:
    repo.write("jobs/keep.yaml", job("keep"))
    repo.write("jobs/change.yaml", job("change"))
    repo.write("jobs/drop.yaml", job("drop"))
    sha = repo.commit()
    client = start(str(repo.root), "--poll-interval", "0.2", "--no-watch")
    wait_for(lambda: client.get("/api/v1/sync").json()["items"][0]["commit"]["sha"] == sha)
    checkout = tmp_path / "checkout"
    shutil.copytree(repo.root, checkout, ignore=shutil.ignore_patterns(".git"))
    same = mlsmctl(client, "diff", "-f", str(checkout))
    assert (same.returncode, same.stdout, same.stderr.strip()) == (0, "", "no changes")

    (checkout / "jobs" / "change.yaml").write_text(
        textwrap.dedent(job("change", epochs=4)).lstrip()
    )
    (checkout / "jobs" / "drop.yaml").unlink()
    (checkout / "jobs" / "new.yaml").write_text(textwrap.dedent(job("new")).lstrip())
    (checkout / "jobs" / "bad.yaml").write_text(
        textwrap.dedent(job("bad")).lstrip().replace("resources", "resorces")
    )
    changed = mlsmctl(client, "diff", "-f", str(checkout))
    assert changed.returncode == 1, changed.stderr
    assert changed.stdout.splitlines() == [
        "! TrainingJob/bad: would be created invalid: jobs/bad.yaml:7:3: TrainingJob/bad: "
        "spec.resorces: unknown field; did you mean 'resources'?",
        "~ TrainingJob/change  generation 2",
        '    ~ spec.command: ["python", "-c", "print(1)"] -> ["python", "-c", "print(4)"]',
        "+ TrainingJob/new  (jobs/new.yaml:1)",
        "- TrainingJob/drop (cancels it: it has not finished)",
    ]
