"""`mlsmctl get` and `describe` against a real controller process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.databases import sqlite_only
from tests.integration.conftest import GitRepo, issue_node_token, job, node, phase, wait_for


def mlsmctl(client: httpx.Client, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLSM_SERVER": str(client.base_url)}
    return subprocess.run([sys.executable, "-m", "mlsm.cli", *args], capture_output=True,
                          text=True, env=env)  # fmt: skip


@sqlite_only
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
    assert lines[0].split() == [
        "NAME", "OWNER", "PHASE", "NODE", "RESTARTS", "GPUS", "PRIORITY", "VALID", "AGE"
    ]  # fmt: skip
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
                     "Author:       Ada <ada@lab.org>", "Unschedulable", "print(2)",
                     "Created", "Updated", "generation 2 from"):  # fmt: skip
        assert fragment in page.stdout, fragment
    assert re.search(r"Valid\s+True", page.stdout)

    missing = mlsmctl(client, "describe", "job", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("TrainingJob/nope not found")
    unknown = mlsmctl(client, "get", "widgets")
    assert unknown.returncode == 2
    assert "unknown kind 'widgets'" in unknown.stderr
    assert "could not be read" not in table.stderr

    # A file that cannot be read names no object: the sync, and every table, say so.
    (repo.root / "jobs" / "other.yaml").write_bytes(b"kind: TrainingJob\nname: \xff\n")
    broken = repo.commit("Break a file")
    wait_for(lambda: synced(broken))
    sync = mlsmctl(client, "get", "sync")
    assert sync.returncode == 0, sync.stderr
    assert sync.stdout.splitlines()[0].split()[:3] == ["SOURCE", "STATUS", "COMMIT"]
    assert "Synced" in sync.stdout
    assert "1 broken" in sync.stdout
    assert "jobs/other.yaml:2:7: error: invalid text" in sync.stdout
    again = mlsmctl(client, "get", "jobs")
    assert "other" in again.stdout  # kept, with its last valid spec
    assert "warning: 1 file(s) in the source could not be read" in again.stderr
    state = json.loads(mlsmctl(client, "get", "sync", "-o", "json").stdout)["items"][0]
    assert (state["invalid"], state["brokenFiles"]) == (1, 1)


def test_an_unreachable_controller_is_one_line() -> None:
    env = {**os.environ, "MLSM_SERVER": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "mlsm.cli", "get", "jobs"], capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert done.returncode == 1
    assert "cannot reach the controller at http://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr


@sqlite_only
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


def gpu_job(name: str, gpus: int, owner: str = "ada") -> str:
    return (
        textwrap.dedent(job(name))
        .lstrip()
        .replace("gpus: 1", f"gpus: {gpus}")
        .replace("owner: ada", f"owner: {owner}")
    )


@sqlite_only
def test_plan_against_the_controller_knows_the_fleet_and_the_queue(
    start: Callable[..., httpx.Client], repo: GitRepo, tmp_path: Path, database_url: str
) -> None:
    """`mlsmctl plan -f PATH`: the live node (its heartbeat, its free GPUs), the jobs
    bound on it, the queue, and a removed job's GPUs taken as freed by its cancel."""
    repo.write("nodes/gpu-1.yaml", node("gpu-1", gpus=2))
    repo.write("jobs/train.yaml", job("train"))
    repo.write("jobs/drop.yaml", job("drop"))
    sha = repo.commit()
    client = start(str(repo.root), "--poll-interval", "0.2", "--no-watch")
    wait_for(lambda: client.get("/api/v1/sync").json()["items"][0]["commit"]["sha"] == sha)
    token = issue_node_token(database_url, "gpu-1")
    gpus = [{"index": 0, "uuid": "GPU-0"}, {"index": 1, "uuid": "GPU-1"}]
    inventory = {"cpus": 8, "memory": 32 << 30, "runtimes": ["venv"], "gpus": gpus}
    beat = client.post("/api/v1/agent/nodes/gpu-1/heartbeat", json={"inventory": inventory},
                       headers={"authorization": f"Bearer {token}"})  # fmt: skip
    assert beat.status_code == 200, beat.text
    wait_for(lambda: phase(client, "train") == phase(client, "drop") == "Scheduled")

    checkout = tmp_path / "checkout"
    shutil.copytree(repo.root, checkout, ignore=shutil.ignore_patterns(".git"))
    (checkout / "jobs" / "drop.yaml").unlink()  # frees one GPU when the merge cancels it
    (checkout / "jobs" / "big.yaml").write_text(gpu_job("big", 2, owner="bob"))
    (checkout / "jobs" / "small.yaml").write_text(gpu_job("small", 1, owner="bob"))
    (checkout / "jobs" / "train.yaml").write_text(textwrap.dedent(job("train", epochs=3)).lstrip())
    done = mlsmctl(client, "plan", "-f", str(checkout))
    assert done.returncode == 1, done.stderr
    text = done.stdout
    assert (
        text.splitlines()[0]
        == f"{checkout} against {client.base_url}: 2 create, 1 remove, 1 update"
    )
    assert "- TrainingJob/drop  (jobs/drop.yaml:1)  (cancels it if it is still running)" in text
    assert "    would run now on gpu-1 (2 of 2 in the queue)" in text  # small: drop's GPU
    assert "would wait: 0/1 nodes available: 1 insufficient GPUs (1 of 2 in the queue)" in text
    assert "    Scheduled: the change reaches its next attempt, not the one running" in text
    assert "not known without --server" not in text

    markdown = mlsmctl(client, "plan", "-f", str(checkout), "-o", "markdown").stdout
    assert f"`{checkout}` against {client.base_url}" in markdown
    assert "Not known from the manifests alone" not in markdown
    as_json = json.loads(mlsmctl(client, "plan", "-f", str(checkout), "-o", "json").stdout)
    small = next(c for c in as_json["changes"] if c["name"] == "small")
    assert (small["runsOn"], small["queue"], as_json["queued"]) == (["gpu-1"], 2, 2)
    with_both = mlsmctl(client, "plan", "-f", str(checkout), "--base", "main")
    assert with_both.returncode == 2
    assert "not both" in with_both.stderr
    assert len(client.get("/api/v1/runs").json()["items"]) == 2  # the plans bound nothing


def issue_token(client: httpx.Client, database_url: str, role: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mlsm.controller", "token", "issue", "--role", role,
         "--database-url", database_url], capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


@sqlite_only
def test_apply_and_delete_commit_into_a_local_source(
    start: Callable[..., httpx.Client], repo: GitRepo, tmp_path: Path, database_url: str
) -> None:
    repo.write("jobs/old.yaml", job("old"))
    repo.write("jobs/pair.yaml", job("p1") + "\n---\n" + textwrap.dedent(job("p2")))
    sha = repo.commit()
    client = start(str(repo.root), "--poll-interval", "600")
    wait_for(lambda: client.get("/api/v1/sync").json()["items"][0]["commit"]["sha"] == sha)
    admin = issue_token(client, database_url, "admin")
    reader = issue_token(client, database_url, "read")
    new = tmp_path / "new.yaml"
    new.write_text(textwrap.dedent(job("new")).lstrip())

    refused = mlsmctl(client, "apply", "-f", str(new))
    assert refused.returncode == 1
    assert "apply and delete need an admin token" in refused.stderr
    read_only = mlsmctl(client, "apply", "-f", str(new), "--token", reader)
    assert "a read token cannot apply or delete" in read_only.stderr

    applied = mlsmctl(client, "apply", "-f", str(new), "--token", admin)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("TrainingJob/new applied (jobs/new.yaml, commit ")
    assert repo.git("log", "-1", "--format=%an|%s") == (
        f"{_git_name()}|mlsmctl apply: TrainingJob/new"
    )
    assert repo.git("show", "HEAD:jobs/new.yaml") == new.read_text().strip()
    wait_for(lambda: client.get("/api/v1/jobs/new").status_code == 200, timeout=5)

    (tmp_path / "old.yaml").write_text(textwrap.dedent(job("old")).lstrip())
    deleted = mlsmctl(client, "delete", "-f", str(tmp_path / "old.yaml"), "--token", admin)
    assert deleted.returncode == 0, deleted.stderr
    assert "jobs/old.yaml" not in repo.git("ls-tree", "-r", "--name-only", "HEAD")
    wait_for(lambda: client.get("/api/v1/jobs/old").json()["metadata"]["deletedAt"], timeout=5)

    (tmp_path / "p1.yaml").write_text(textwrap.dedent(job("p1", epochs=7)).lstrip())
    shared = mlsmctl(client, "apply", "-f", str(tmp_path / "p1.yaml"), "--token", admin)
    assert shared.returncode == 1
    assert "is defined in jobs/pair.yaml together with other objects" in shared.stderr
    (tmp_path / "bad.yaml").write_text("kind: TrainingJob\nmetadata: {name: x}\n")
    bad = mlsmctl(client, "apply", "-f", str(tmp_path / "bad.yaml"), "--token", admin)
    assert bad.returncode == 1
    assert "required field is missing" in bad.stderr


@sqlite_only
def test_apply_is_refused_for_a_remote_branch(
    start: Callable[..., httpx.Client], repo: GitRepo, tmp_path: Path, database_url: str
) -> None:
    repo.write("jobs/a.yaml", job("a"))
    repo.commit()
    client = start(f"file://{repo.root}", "--poll-interval", "600")
    admin = issue_token(client, database_url, "admin")
    (tmp_path / "b.yaml").write_text(textwrap.dedent(job("b")).lstrip())
    done = mlsmctl(client, "apply", "-f", str(tmp_path / "b.yaml"), "--token", admin)
    assert done.returncode == 1
    assert "open a pull request" in done.stderr


def _git_name() -> str:
    done = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True)
    return done.stdout.strip() or os.environ.get("USER", "") or "mlsmctl"
