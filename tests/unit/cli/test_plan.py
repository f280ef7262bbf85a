"""`mlsmctl plan --base --head`: what merging a pull request would do, from a real git
repository of manifests, as the process a CI job runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ENV = {**os.environ, "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@lab.org",
       "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@lab.org"}  # fmt: skip

NODES = """
    apiVersion: mlsm/v1
    kind: Node
    metadata: {name: gpu-1, labels: {gpu: a100}}
    spec: {capacity: {gpus: 4}}
    ---
    apiVersion: mlsm/v1
    kind: Node
    metadata: {name: cpu-1}
    spec: {runtimes: [venv], capacity: {gpus: 0}}
"""


def job(name: str, gpus: int = 1, extra: str = "") -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: TrainingJob
        metadata: {{name: {name}, owner: ada}}
        spec:
          runtime: {{venv: {{python: "3"}}}}
          command: [python, train.py]
          resources: {{gpus: {gpus}, cpu: 1}}{extra}
    """


class Repo:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(self.root), *args], env=ENV, check=True,
                              capture_output=True, text=True)  # fmt: skip
        return done.stdout.strip()

    def write(self, path: str, text: str) -> None:
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_text(textwrap.dedent(text).lstrip())

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-qm", message)
        return self.git("rev-parse", "--short", "HEAD")


def plan(repo: Repo, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlsm.cli", "plan", "--repo", str(repo.root),
                           *args], capture_output=True, text=True)  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    repo = Repo(tmp_path / "manifests")
    repo.write("nodes/nodes.yaml", NODES)
    repo.write("jobs/old.yaml", job("old"))
    repo.write("jobs/kept.yaml", job("kept", extra="\n          retries: 1"))
    repo.commit("the lab")
    return repo


def test_a_pull_request_s_plan_says_what_changes_and_where_each_job_would_run(
    repo: Repo,
) -> None:
    base = repo.git("rev-parse", "--short", "HEAD")
    repo.write("jobs/kept.yaml", job("kept", gpus=2, extra="\n          retries: 3"))
    repo.write("jobs/new.yaml", job("new", extra="\n          nodeSelector: {gpu: a100}"))
    repo.write("jobs/huge.yaml", job("huge", gpus=4))
    (repo.root / "jobs" / "old.yaml").unlink()
    head = repo.commit("a pull request")

    done = plan(repo, "--base", base, "--head", head)
    assert done.returncode == 1, done.stderr  # changes, as `mlsmctl diff`
    lines = done.stdout.splitlines()
    assert lines[0] == f"{base}..{head}: 2 create, 1 remove, 1 update"
    text = done.stdout
    assert "~ TrainingJob/kept  (jobs/kept.yaml:1)  generation 2" in text
    assert "    ~ spec.resources.gpus: 1 -> 2" in text
    assert "    ~ spec.retries: 1 -> 3" in text
    assert "+ TrainingJob/new  (jobs/new.yaml:1)" in text
    assert "- TrainingJob/old  (jobs/old.yaml:1)  (cancels it if it is still running)" in text
    # the merge's jobs queue in the scheduler's order; gpu-1's 4 GPUs go to the first
    assert "    would run now on gpu-1 (queue position 1)" in text
    assert "    would wait: 0/2 nodes available: 2 insufficient GPUs (queue position 2)" in text
    assert "would wait: 0/2 nodes available: 1 didn't match the node selector, 1 " in text
    assert "not known without --server: whether each node is Ready" in text

    found = json.loads(plan(repo, "--base", base, "--head", head, "-o", "json").stdout)
    changes = {c["name"]: c for c in found["changes"]}
    assert (changes["huge"]["runsOn"], changes["huge"]["queue"]) == (["gpu-1"], 1)
    assert changes["kept"]["waits"] == "0/2 nodes available: 2 insufficient GPUs"
    assert changes["new"]["queue"] == 3
    assert changes["old"]["cancels"] is True
    assert found["changed"] is True


def test_errors_at_the_head_are_located_and_exit_2(repo: Repo) -> None:
    base = repo.git("rev-parse", "--short", "HEAD")
    repo.write("jobs/bad.yaml", job("bad", gpus=-1))
    head = repo.commit("a broken job")
    done = plan(repo, "--base", base, "--head", head)
    assert done.returncode == 2
    assert "jobs/bad.yaml:7:21: error: TrainingJob/bad: spec.resources.gpus" in done.stdout
    assert "spec.resources.gpus" in done.stdout


def test_no_change_exits_0_and_a_bad_revision_is_one_line(repo: Repo) -> None:
    same = plan(repo, "--base", "HEAD", "--head", "HEAD")
    assert (same.returncode, same.stdout.splitlines()[0]) == (0, "HEAD..HEAD: no changes")
    bad = plan(repo, "--base", "no-such-branch")
    assert bad.returncode == 2
    assert "no commit 'no-such-branch'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_markdown_comment_stays_a_table_with_fifty_jobs(repo: Repo) -> None:
    base = repo.git("rev-parse", "--short", "HEAD")
    for index in range(50):
        repo.write(f"jobs/sweep-{index:02}.yaml", job(f"sweep-{index:02}"))
    repo.write("jobs/kept.yaml", job("kept", extra="\n          retries: 2"))
    head = repo.commit("a sweep of 50 jobs")
    done = plan(repo, "--base", base, "--head", head, "-o", "markdown")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == "### mlsm plan"
    rows = [line for line in lines if line.startswith("| ") and "TrainingJob/" in line]
    assert len(rows) == 51, "one row per change"
    assert all(row.count(" | ") == 3 for row in rows), "no cell breaks the table"
    assert "<details><summary>Field by field</summary>" in done.stdout
    assert "~ spec.retries: 1 -> 2" in done.stdout
    running = [row for row in rows if "would run now on gpu-1" in row]
    assert len(running) == 4, "gpu-1's 4 GPUs; the rest wait, and say why"
    assert sum("would wait: 0/2 nodes available: 2 insufficient GPUs" in r for r in rows) == 47


def test_both_commits_are_checked_alike_so_only_the_pull_request_s_changes_show(
    repo: Repo,
) -> None:
    """--path jobs hides the nodes from both commits' cross-checks: the jobs that were
    already unplaceable at the base are not changes of this pull request."""
    base = repo.git("rev-parse", "--short", "HEAD")
    repo.write("jobs/new.yaml", job("new"))
    head = repo.commit("one more job")
    done = plan(repo, "--base", base, "--head", head, "--path", "jobs", "-o", "json")
    changes = json.loads(done.stdout)["changes"]
    assert [(c["name"], c["action"]) for c in changes] == [("new", "invalid")]


def test_a_new_job_named_as_one_in_an_unchanged_file_is_an_error_and_old_errors_stay(
    repo: Repo,
) -> None:
    repo.write("jobs/broken.yaml", job("broken", gpus=-1))
    base = repo.commit("a job that was already broken")
    repo.write("jobs/again.yaml", job("old"))  # jobs/old.yaml, unchanged, has that name
    head = repo.commit("the same name twice")
    done = plan(repo, "--base", base, "--head", head, "-o", "json")
    found = json.loads(done.stdout)
    assert done.returncode == 2
    assert any("duplicate TrainingJob/old" in p for p in found["problems"])
    assert any("jobs/broken.yaml" in p for p in found["problems"]), "every error at the head"
    names = sorted(c["name"] for c in found["changes"])
    assert names == ["old"], "the broken job did not change; the duplicate did"


def test_a_pull_request_that_adds_the_manifests_folder_creates_what_it_holds(
    repo: Repo,
) -> None:
    base = repo.git("rev-parse", "--short", "HEAD")
    repo.write("lab/jobs/first.yaml", job("first"))
    head = repo.commit("a folder of its own")
    done = plan(repo, "--base", base, "--head", head, "--path", "lab", "-o", "json")
    assert [(c["name"], c["action"]) for c in json.loads(done.stdout)["changes"]] == [
        ("first", "invalid")  # no Node in lab/: no node can run it, as at any commit
    ]
    assert plan(repo, "--base", base, "--head", base, "--path", "lab").returncode == 2


SWEPT = """
    apiVersion: mlsm/v1
    kind: TrainingJob
    metadata: {{name: lr, owner: ada}}
    spec:
      runtime: {{venv: {{python: "3"}}}}
      trainer: {{model: "builtin:resnet-tiny"}}
      dataset: digits
      resources: {{gpus: 1}}
      sweep:
        parameters: {{learningRate: [{rates}]}}
        parallelism: 2
"""

DIGITS = """
    apiVersion: mlsm/v1
    kind: Dataset
    metadata: {name: digits}
    spec: {format: imagefolder, locations: [{node: gpu-1, path: datasets/digits}]}
"""


def test_a_sweep_s_plan_shows_its_children_and_a_changed_sweep_adds_keeps_and_removes(
    repo: Repo,
) -> None:
    base = repo.git("rev-parse", "--short", "HEAD")
    repo.write("datasets/digits.yaml", DIGITS)
    repo.write("jobs/lr.yaml", SWEPT.format(rates="0.001, 0.003, 0.01"))
    head = repo.commit("Sweep the learning rate")
    text = plan(repo, "--base", base, "--head", head).stdout
    for k in range(3):
        assert f"+ TrainingJob/lr-{k}  (jobs/lr.yaml:1)" in text
    assert "would wait: sweep lr is at its parallelism (2 at once)" in text
    repo.write("jobs/lr.yaml", SWEPT.format(rates="0.001, 0.03, 0.01, 0.1"))
    changed = repo.commit("Change one value, add one")
    text = plan(repo, "--base", head, "--head", changed).stdout
    assert text.splitlines()[0] == f"{head}..{changed}: 1 create, 1 update"
    assert "~ TrainingJob/lr-1  (jobs/lr.yaml:1)  generation 2" in text
    assert "    ~ spec.trainer.learningRate: 0.003 -> 0.03" in text
    assert "+ TrainingJob/lr-3" in text
    repo.write("jobs/lr.yaml", SWEPT.format(rates="0.001"))
    narrowed = repo.commit("Narrow it")
    text = plan(repo, "--base", changed, "--head", narrowed).stdout
    assert text.splitlines()[0] == f"{changed}..{narrowed}: 3 remove"
    assert "- TrainingJob/lr-3" in text
