"""mlsmctl as a user runs it: a real process, its output and its exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlsm.errors import UserError

ROOT = Path(__file__).parents[3]
BAD = ROOT / "tests" / "corpus" / "invalid" / "negative-gpus.yaml"


def mlsmctl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlsm.cli", *args],
        input=stdin.decode("utf-8", "replace") if stdin is not None else None,
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


def test_version() -> None:
    done = mlsmctl("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("mlsmctl 0.")


@pytest.mark.parametrize("command", [[], ["validate"], ["schema"]])
def test_help_on_every_command(command: list[str]) -> None:
    done = mlsmctl(*command, "--help")
    assert done.returncode == 0
    assert "Usage: mlsmctl" in done.stdout


@pytest.mark.parametrize("command", ["validate", "schema"])
def test_version_on_every_command(command: str) -> None:
    done = mlsmctl(command, "--version")
    assert (done.returncode, done.stdout.strip()) == (0, mlsmctl("--version").stdout.strip())


def test_valid_tree_exits_zero() -> None:
    done = mlsmctl("validate", "manifests")
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip() == "7 objects in 7 files: all valid"


def test_invalid_file_exits_one_with_located_text() -> None:
    done = mlsmctl("validate", str(BAD))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{BAD}:11:11: error: TrainingJob/neg: spec.resources.gpus: must be >= 0, got -1",
        "1 error in 1 file (0 objects in 1 file checked)",
    ]


def test_json_output() -> None:
    done = mlsmctl("validate", "-o", "json", str(BAD))
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["valid"] is False
    assert report["errors"] == [
        {"path": str(BAD), "line": 11, "column": 11, "kind": "TrainingJob", "name": "neg",
         "field": "spec.resources.gpus", "message": "must be >= 0, got -1"}
    ]  # fmt: skip


@pytest.mark.parametrize(
    "given", [str(BAD), "./" + str(BAD.relative_to(ROOT))], ids=["absolute", "dot-slash"]
)
def test_github_output_annotates_the_diff(given: str) -> None:
    """Paths as GitHub matches them to the diff: relative to the workspace, no `./`."""
    done = mlsmctl("validate", "-o", "github", given)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        f"::error file={BAD.relative_to(ROOT)},line=11,col=11,title=mlsm validate::"
        "TrainingJob/neg: spec.resources.gpus: must be >= 0, got -1"
    )


def test_github_output_escapes_newlines_and_percent(tmp_path: Path) -> None:
    path = tmp_path / "x,y.yaml"
    path.write_text("apiVersion: mlsm/v1\nkind: Node\nmetadata: {name: 'a%b'}\n")
    done = mlsmctl("validate", "-o", "github", str(path))
    first = done.stdout.splitlines()[0]
    assert "file=" + str(path).replace(",", "%2C") in first
    assert "::Node/a%25b: metadata.name:" in first


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["validate", "does-not-exist"], id="missing-path"),
        pytest.param(["validate"], id="no-path"),
        pytest.param(["validate", "--bogus", "x"], id="unknown-option"),
        pytest.param(["validate", "-o", "yaml", "manifests"], id="bad-format"),
        pytest.param(["schema", "pod"], id="unknown-kind"),
        pytest.param(["frobnicate"], id="unknown-command"),
    ],
)
def test_usage_errors_exit_two_without_traceback(args: list[str]) -> None:
    done = mlsmctl(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "data",
    [b"\x00\xff\xfe garbage", b"[" * 100_000, b"kind: Node\n" * 3, b"{{{{", b"- - - -"],
)
def test_garbage_on_stdin_never_gives_a_traceback(data: bytes) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mlsm.cli", "validate", "-"], input=data, capture_output=True,
        cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert b"Traceback" not in done.stderr + done.stdout
    assert done.stdout.startswith(b"<stdin>:")


def test_schema_of_one_kind_and_all() -> None:
    job = json.loads(mlsmctl("schema", "job").stdout)
    assert job["title"] == "TrainingJob"
    assert "spec" in job["required"]
    everything = json.loads(mlsmctl("schema").stdout)
    assert set(everything["discriminator"]["mapping"]) == {"Node", "Dataset", "TrainingJob"}


def test_no_cross_checks_for_single_files(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: mlsm/v1\nkind: TrainingJob\nmetadata: {name: j}\nspec:\n"
        "  runtime: {venv: {python: '3.11'}}\n  command: [x]\n  dataset: elsewhere\n"
    )
    assert mlsmctl("validate", str(path)).returncode == 1
    assert mlsmctl("validate", "--no-cross-checks", str(path)).returncode == 0


def _run(run_id: str, attempt: int, rank: int, ranks: list[int]) -> dict[str, object]:
    return {"id": run_id, "attempt": attempt, "rank": rank, "ranks": ranks, "createdAt": ""}


def test_logs_rank_k_reads_the_run_that_holds_that_process() -> None:
    from mlsm.cli.main import _latest, _rank_run

    runs = [_run("old", 1, 0, [0, 1]), _run("a", 2, 0, [2, 3]), _run("b", 2, 1, [0, 1])]
    assert _rank_run("j", runs, 0) == (runs[2], True), "the latest attempt's, filtered"
    assert _rank_run("j", runs, 3) == (runs[1], True)
    assert _latest(runs)["id"] == "b", "metrics: the run hosting process rank 0"
    with pytest.raises(UserError, match="rank 7 of job j has written no line yet; ranks seen"):
        _rank_run("j", runs, 7)
    # one process per node (no marked lines): rank K is node rank K, unfiltered
    plain = [_run("x", 1, 0, []), _run("y", 1, 1, [])]
    assert _rank_run("j", plain, 1) == (plain[1], False)
    with pytest.raises(UserError, match="has node ranks 0-1; no rank 2"):
        _rank_run("j", plain, 2)
