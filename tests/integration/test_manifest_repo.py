"""deploy/manifest-repo/, the starter for a lab's manifests repository: its CI for
GitHub and GitLab run step by step on a sample repository made from it (real git,
real mlsmctl), the plan comment posted and then updated through each forge's REST
API (served here by a small in-memory stand-in, the one part that cannot be real
offline), the pre-commit hook through `pre-commit try-repo`, CODEOWNERS, and the
editor schema kept current."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STARTER = ROOT / "deploy" / "manifest-repo"
BIN = Path(sys.executable).parent
MARKER = "<!-- mlsm-plan -->"

NEW_JOB = """\
apiVersion: mlsm/v1
kind: TrainingJob
metadata: {name: resnet-lr3, owner: bob}
spec:
  runtime: {venv: {python: "3.11"}}
  command: [python, train.py]
  dataset: digits
  resources: {gpus: 2}
"""

BAD_JOB = """\
apiVersion: mlsm/v1
kind: TrainingJob
metadata: {name: typo}
spec:
  runtime: {venv: {python: "3.11"}}
  command: [python, train.py]
  resorces: {gpus: 1}
"""


# -- a forge's comment API, in memory -------------------------------------------------


@dataclass
class Forge:
    """GitHub's issue comments and GitLab's merge request notes, as far as
    ci/plan-comment.py uses them: list (paged), create, edit."""

    token: str
    comments: dict[int, str] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    refuse: int = 0
    """Answer every call with this status (403: a fork's read-only token)."""

    def handle(self, method: str, url: str, headers: Any, body: bytes) -> tuple[int, Any]:
        self.calls.append((method, url))
        if self.refuse:
            return self.refuse, {"message": "Resource not accessible by integration"}
        given = headers.get("Authorization", "") or "Bearer " + headers.get("PRIVATE-TOKEN", "")
        if given != f"Bearer {self.token}":
            return 401, {"message": "Bad credentials"}
        parts = urlsplit(url)
        path, query = parts.path, parse_qs(parts.query)
        collection = re.fullmatch(
            r"/repos/lab/manifests/issues/7/comments"
            r"|/api/v4/projects/lab%2Fmanifests/merge_requests/3/notes",
            path,
        )
        one = re.fullmatch(
            r"/repos/lab/manifests/issues/comments/(\d+)"
            r"|/api/v4/projects/lab%2Fmanifests/merge_requests/3/notes/(\d+)",
            path,
        )
        if collection and method == "GET":
            page, per = int(query["page"][0]), int(query["per_page"][0])
            items = [{"id": i, "body": b} for i, b in sorted(self.comments.items())]
            return 200, items[(page - 1) * per : page * per]
        if collection and method == "POST":
            number = max(self.comments, default=0) + 1
            self.comments[number] = json.loads(body)["body"]
            return 201, {"id": number}
        if one and method in ("PATCH", "PUT"):
            number = int(one.group(1) or one.group(2))
            expected = "PATCH" if path.startswith("/repos/") else "PUT"
            if method != expected or number not in self.comments:
                return 404, {"message": "Not Found"}
            self.comments[number] = json.loads(body)["body"]
            return 200, {"id": number}
        return 404, {"message": f"no route {method} {path}"}

    def plans(self) -> list[str]:
        return [body for body in self.comments.values() if MARKER in body]


@pytest.fixture
def forge() -> Iterator[tuple[Forge, str]]:
    state = Forge(token="t0ken")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, payload = state.handle(
                self.command, self.path, self.headers, self.rfile.read(length)
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# -- a sample repository made from the starter -----------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@lab.org",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@lab.org"}  # fmt: skip
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """The starter as a lab's repository, main at its first commit, and branch `pr`
    adding a job, changing one, and adding one with a typo."""
    repo = tmp_path / "manifests"
    shutil.copytree(STARTER, repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "Start from mlsm's starter")
    git(repo, "checkout", "-qb", "pr")
    (repo / "jobs" / "resnet-lr3.yaml").write_text(NEW_JOB)
    (repo / "jobs" / "typo.yaml").write_text(BAD_JOB)
    vit = repo / "jobs" / "digits-vit.yaml"
    vit.write_text(vit.read_text().replace("epochs: 10", "epochs: 20"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "Sweep the learning rate")
    return repo


def ci_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A CI job's environment: mlsmctl on PATH (the install step is tested apart)."""
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "HOME": str(tmp_path), **extra}


# -- GitHub Actions ------------------------------------------------------------------

WORKFLOW = STARTER / ".github" / "workflows" / "mlsm.yml"
KNOWN_CONDITIONS = {
    "${{ !cancelled() && hashFiles('plan.md') != '' }}": lambda repo, outcomes: (
        repo / "plan.md"
    ).exists(),
    "${{ steps.validate.outcome == 'failure' }}": lambda repo, outcomes: (
        outcomes.get("validate") == "failure"
    ),
}


def workflow() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def expand(value: str, context: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        assert expression in context, f"the test does not know ${{{{ {expression} }}}}"
        return context[expression]

    return re.sub(r"\$\{\{(.*?)\}\}", one, value)


def run_workflow(repo: Path, env: dict[str, str], context: dict[str, str]) -> dict[str, Any]:
    """Each `run` step of the one job, in order, as a runner would: `bash -e`, the
    step's env expanded, `if` and `continue-on-error` honoured. The `uses` steps
    (checkout, setup-python) are what `sample` and this interpreter already are."""
    (job,) = workflow()["jobs"].values()
    outcomes: dict[str, str] = {}
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    for step in job["steps"]:
        if "run" not in step or step["name"] == "Install mlsm":
            continue
        if "if" in step:
            assert step["if"] in KNOWN_CONDITIONS, step["if"]
            if not KNOWN_CONDITIONS[step["if"]](repo, outcomes):
                continue
        step_env = {k: expand(str(v), context) for k, v in step.get("env", {}).items()}
        done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=repo,
                              env={**env, **step_env}, capture_output=True, text=True)  # fmt: skip
        results[step["name"]] = done
        outcome = "success" if done.returncode == 0 else "failure"
        if "id" in step:
            outcomes[step["id"]] = outcome
        if outcome == "failure" and not step.get("continue-on-error"):
            return {"failed": step["name"], "results": results}
    return {"failed": None, "results": results}


def test_the_github_workflow_asks_for_what_it_uses() -> None:
    data = workflow()
    assert data["on"] == {"pull_request": None}
    assert data["permissions"] == {"contents": "read", "pull-requests": "write"}
    (job,) = data["jobs"].values()
    uses = [s["uses"] for s in job["steps"] if "uses" in s]
    assert uses == ["actions/checkout@v4", "actions/setup-python@v5", "actions/cache@v4"]
    cache = next(s for s in job["steps"] if s.get("uses") == "actions/cache@v4")["with"]
    assert cache["path"] == "~/.cache/mlsm"  # where mlsmctl plan keeps checked files
    assert job["steps"][0]["with"]["fetch-depth"] == 2  # the merge commit and its base
    for step in job["steps"]:
        if "run" in step:
            syntax = subprocess.run(["bash", "-n", "-c", step["run"]], capture_output=True)
            assert syntax.returncode == 0, (step["name"], syntax.stderr)


def test_the_github_workflow_annotates_plans_and_comments_once(
    sample: Path, forge: tuple[Forge, str], tmp_path: Path
) -> None:
    state, url = forge
    repo = sample
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "pr", "-m", "Merge pull request #7")  # as Actions does
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    env = ci_env(tmp_path, GITHUB_STEP_SUMMARY=str(summary), GITHUB_OUTPUT=str(output),
                 GITHUB_REPOSITORY="lab/manifests", GITHUB_API_URL=url)  # fmt: skip
    context = {"github.token": "t0ken", "github.event.pull_request.number": "7"}

    ran = run_workflow(repo, env, context)
    assert ran["failed"] == "Fail on manifest errors"  # the typo fails the check, at the end
    validate = ran["results"]["Validate"]
    assert validate.returncode == 1
    assert validate.stdout.startswith(
        "::error file=jobs/typo.yaml,line=7,col=3,title=mlsm validate::"
        "TrainingJob/typo: spec.resorces: unknown field; did you mean 'resources'?"
    )
    plan = (repo / "plan.md").read_text()
    assert plan.startswith("### mlsm plan")
    assert (
        "| + | TrainingJob/resnet-lr3 | `jobs/resnet-lr3.yaml:1` | created; would run now on gpu-1"
        in plan
    )
    assert (
        "| ~ | TrainingJob/digits-vit | `jobs/digits-vit.yaml:3` | changed (generation 2)" in plan
    )
    assert "jobs/typo.yaml:7:3" in plan
    assert summary.read_text() == plan
    assert ran["results"]["Comment"].stdout.strip() == "plan-comment: posted the plan"
    assert state.plans() == [f"{MARKER}\n{plan}"]

    # The next push: the same comment is edited, not a second one posted.
    typo = repo / "jobs" / "typo.yaml"
    typo.write_text(BAD_JOB.replace("resorces", "resources"))
    git(repo, "commit", "-qam", "Fix the typo")
    again = run_workflow(repo, env, context)
    assert again["failed"] is None
    assert (
        again["results"]["Comment"].stdout.strip() == "plan-comment: updated the plan (comment 1)"
    )
    (only,) = state.plans()
    assert "jobs/typo.yaml:7:3" not in only
    assert "TrainingJob/typo" in only
    assert [m for m, _ in state.calls].count("POST") == 1


def test_a_token_that_may_not_comment_leaves_the_plan_in_the_summary(
    sample: Path, forge: tuple[Forge, str], tmp_path: Path
) -> None:
    state, url = forge
    state.refuse = 403  # a pull request from a fork: its token is read-only
    (sample / "plan.md").write_text("### mlsm plan\n")
    env = ci_env(tmp_path, GITHUB_TOKEN="t0ken", GITHUB_REPOSITORY="lab/manifests",
                 PULL_REQUEST="7", GITHUB_API_URL=url)  # fmt: skip
    script = sample / "ci" / "plan-comment.py"
    done = subprocess.run([sys.executable, str(script), "github", "plan.md"], cwd=sample,
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("plan-comment: not commenting: the token may not (403")
    unset = subprocess.run([sys.executable, str(script), "gitlab", "plan.md"], cwd=sample,
                           env=ci_env(tmp_path), capture_output=True, text=True)  # fmt: skip
    assert (unset.returncode, unset.stdout.strip()) == (0, "plan-comment: not commenting: "
            "MLSM_GITLAB_TOKEN is not set (a project access token with scope api)")  # fmt: skip


def test_the_plan_comment_is_found_past_the_first_page(
    sample: Path, forge: tuple[Forge, str], tmp_path: Path
) -> None:
    state, url = forge
    state.comments = {i: f"LGTM {i}" for i in range(1, 151)} | {151: f"{MARKER}\nold plan"}
    (sample / "plan.md").write_text("### mlsm plan\nnew\n")
    env = ci_env(tmp_path, GITHUB_TOKEN="t0ken", GITHUB_REPOSITORY="lab/manifests",
                 PULL_REQUEST="7", GITHUB_API_URL=url)  # fmt: skip
    done = subprocess.run([sys.executable, "ci/plan-comment.py", "github", "plan.md"],
                          cwd=sample, env=env, capture_output=True, text=True)  # fmt: skip
    assert done.stdout.strip() == "plan-comment: updated the plan (comment 151)", done.stderr
    assert state.plans() == [f"{MARKER}\n### mlsm plan\nnew\n"]


# -- GitLab CI -------------------------------------------------------------------------


def test_the_gitlab_job_checks_plans_and_keeps_one_note(
    sample: Path, forge: tuple[Forge, str], tmp_path: Path
) -> None:
    state, url = forge
    data = yaml.safe_load((STARTER / ".gitlab-ci.yml").read_text())
    job = data["mlsm"]
    assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert job["image"] == "python:3.11"  # with git, which mlsmctl plan reads commits with
    assert job["artifacts"] == {"when": "always", "paths": ["plan.md"]}
    assert job["cache"] == {"key": "mlsm-checked", "paths": [".cache/mlsm"]}
    assert job["variables"]["MLSM_CACHE_DIR"] == "$CI_PROJECT_DIR/.cache/mlsm"
    base = git(sample, "merge-base", "main", "pr")
    env = ci_env(tmp_path, CI_MERGE_REQUEST_DIFF_BASE_SHA=base, MLSM_GITLAB_TOKEN="t0ken",
                 CI_API_V4_URL=f"{url}/api/v4", CI_PROJECT_ID="lab/manifests",
                 CI_MERGE_REQUEST_IID="3")  # fmt: skip

    def pipeline() -> subprocess.CompletedProcess[str]:
        # The runner runs the script's lines in one shell that stops at a failing one.
        script = "\n".join(job["script"])
        return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=sample, env=env,
                              capture_output=True, text=True)  # fmt: skip

    first = pipeline()
    assert first.returncode == 1, first.stderr  # the typo
    assert (
        "jobs/typo.yaml:7:3: error: TrainingJob/typo: spec.resorces: unknown field" in first.stdout
    )
    assert "plan-comment: posted the plan" in first.stdout
    (note,) = state.plans()
    assert "TrainingJob/resnet-lr3" in note
    assert "would run now on gpu-1" in note

    (sample / "jobs" / "typo.yaml").unlink()
    git(sample, "commit", "-qam", "Drop the typo")
    second = pipeline()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "plan-comment: updated the plan (comment 1)" in second.stdout
    (note,) = state.plans()
    assert "typo" not in note


# -- installing mlsmctl in CI ---------------------------------------------------------


def test_the_install_step_uses_the_image_s_mlsmctl_or_says_what_to_set(tmp_path: Path) -> None:
    script = STARTER / "ci" / "install-mlsm.sh"
    there = subprocess.run(["sh", str(script)], env=ci_env(tmp_path), capture_output=True,
                           text=True)  # fmt: skip
    assert there.returncode == 0, there.stderr
    assert there.stdout.startswith("mlsmctl 0.")
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no mlsmctl, no MLSM_PACKAGE
    missing = subprocess.run(["sh", str(script)], env=bare, capture_output=True, text=True)
    assert missing.returncode == 1
    assert "MLSM_PACKAGE is not set" in missing.stderr
    assert "git+https://github.com/your-lab/mlsm@v0.1.0" in missing.stderr


# -- pre-commit -------------------------------------------------------------------------


def test_the_pre_commit_hook_runs_through_try_repo(sample: Path, tmp_path: Path) -> None:
    """The hook as pre-commit installs it from this repository: its own virtualenv
    with mlsm built from the source. Offline here, so pip takes mlsm alone and the
    hook finds its dependencies on PYTHONPATH (this interpreter's site-packages)."""
    site = sysconfig.get_paths()["purelib"]
    env = ci_env(tmp_path, PRE_COMMIT_HOME=str(tmp_path / "pre-commit"), PIP_NO_DEPS="1",
                 PIP_NO_BUILD_ISOLATION="0", PIP_NO_INDEX="1", PYTHONPATH=site,
                 VIRTUALENV_SYSTEM_SITE_PACKAGES="0")  # fmt: skip

    def try_repo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "pre-commit"), "try-repo", str(ROOT), "mlsm-validate", "--all-files"],
            cwd=sample, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    failing = try_repo()
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert re.search(r"^mlsm validate\.+Failed$", failing.stdout, re.M), failing.stdout
    assert "jobs/typo.yaml:7:3: error: TrainingJob/typo: spec.resorces" in failing.stdout
    (sample / "jobs" / "typo.yaml").unlink()
    passing = try_repo()
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert re.search(r"^mlsm validate\.+Passed$", passing.stdout, re.M), passing.stdout


# -- CODEOWNERS, and the schema for editors -------------------------------------------------


def owners(path: str) -> list[str]:
    """The owners of a path: the last matching line, with GitHub's pattern rules for
    the patterns the file uses (`*`, `/dir/`, `/file`)."""
    found: list[str] = []
    for line in (STARTER / ".github" / "CODEOWNERS").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pattern, *who = line.split()
        if pattern == "*":
            matches = True
        elif pattern.endswith("/"):
            matches = ("/" + path).startswith(pattern)
        else:
            matches = "/" + path == pattern
        if matches:
            found = who
    return found


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("nodes/gpu-1.yaml", ["@your-lab/mlsm-admins"]),
        ("datasets/digits.yaml", ["@your-lab/mlsm-admins"]),
        ("jobs/digits-vit.yaml", ["@your-lab/job-reviewers", "@your-lab/mlsm-admins"]),
        ("jobs/sweeps/lr.yaml", ["@your-lab/job-reviewers", "@your-lab/mlsm-admins"]),
        (".github/workflows/mlsm.yml", ["@your-lab/mlsm-admins"]),
        ("ci/plan-comment.py", ["@your-lab/mlsm-admins"]),
        ("README.md", ["@your-lab/mlsm-admins"]),
    ],
)
def test_codeowners_give_admins_nodes_and_datasets_and_reviewers_jobs(
    path: str, expected: list[str]
) -> None:
    assert owners(path) == expected


def test_the_editor_schema_is_mlsmctl_s_and_every_example_points_at_it() -> None:
    schema = subprocess.run([str(BIN / "mlsmctl"), "schema"], capture_output=True, text=True)
    assert (STARTER / "schemas" / "mlsm.schema.json").read_text() == schema.stdout, (
        "deploy/manifest-repo/schemas/mlsm.schema.json is out of date: "
        "mlsmctl schema > deploy/manifest-repo/schemas/mlsm.schema.json"
    )
    settings = json.loads((STARTER / ".vscode" / "settings.json").read_text())
    assert settings["yaml.schemas"] == {
        "./schemas/mlsm.schema.json": ["nodes/**/*.yaml", "datasets/**/*.yaml", "jobs/**/*.yaml"]
    }
    examples = sorted(STARTER.glob("*/*.yaml"))
    assert [p.relative_to(STARTER).parts[0] for p in examples] == ["datasets", "jobs", "nodes"]
    for example in examples:
        first = example.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../schemas/mlsm.schema.json", example
    checked = subprocess.run([str(BIN / "mlsmctl"), "validate", "."], cwd=STARTER,
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout
