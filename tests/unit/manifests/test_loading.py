"""Loading from directories, bytes and real git repositories, serially and in workers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mlsm import manifests, schemas

NODE = """
apiVersion: mlsm/v1
kind: Node
metadata:
  name: {name}
"""

JOB = """
apiVersion: mlsm/v1
kind: TrainingJob
metadata:
  name: {name}
spec:
  runtime:
    venv: {{python: "3.11"}}
  command: [python, train.py]
  resources:
    gpus: {gpus}
"""

EXAMPLES = Path(__file__).parents[3] / "manifests"


def test_the_example_repository_is_valid() -> None:
    result = manifests.load_paths([EXAMPLES])
    assert [str(p) for p in result.problems] == []
    kinds = sorted(o.kind for o in result.objects)
    assert kinds.count("Node") == 3  # local (mlsmctl up), cpu-1, gpu-1
    assert kinds.count("Dataset") == 1
    jobs = [o.manifest for o in result.objects if isinstance(o.manifest, schemas.TrainingJob)]
    assert {j.spec.runtime.docker is not None for j in jobs} == {True, False}
    assert any(j.spec.trainer is not None for j in jobs)
    assert any(j.spec.command is not None for j in jobs)


def test_directories_are_walked_and_hidden_folders_skipped(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write("nodes/a.yaml", NODE.format(name="a"))
    write("nodes/deeper/b.yml", NODE.format(name="b"))
    write(".git/c.yaml", NODE.format(name="c"))
    write("notes.txt", "not yaml")
    result = manifests.load_paths([tmp_path])
    assert sorted(o.name for o in result.objects) == ["a", "b"]
    assert result.files == 2


def test_a_missing_path_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(manifests.SourceError, match="no such file or directory"):
        manifests.load_paths([tmp_path / "absent"])


def test_one_bad_document_never_hides_the_others(write: Callable[[str, str], Path]) -> None:
    path = write(
        "all.yaml",
        NODE.format(name="ok") + "---" + JOB.format(name="bad", gpus=-1) + "---"
        + JOB.format(name="worse", gpus="lots") + "---" + NODE.format(name="Bad_Name"),
    )  # fmt: skip
    result = manifests.load_paths([path])
    assert [o.name for o in result.objects] == ["ok"]
    assert [p.name for p in result.problems] == ["bad", "worse", "Bad_Name"]


def test_raise_for_problems_carries_every_problem(write: Callable[[str, str], Path]) -> None:
    path = write("j.yaml", JOB.format(name="bad", gpus=-1))
    result = manifests.load_paths([path])
    with pytest.raises(manifests.ManifestError) as caught:
        result.raise_for_problems()
    assert len(caught.value.problems) == 1
    assert "spec.resources.gpus: must be >= 0, got -1" in str(caught.value)


def test_load_bytes_reads_text() -> None:
    result = manifests.load_bytes(NODE.format(name="n"), "stdin.yaml")
    assert [o.name for o in result.objects] == ["n"]


def test_workers_find_the_same_problems_as_one_process(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    count = manifests.loading.PARALLEL_MIN_FILES + 50
    for i in range(count):
        text = JOB.format(name=f"job-{i}", gpus=-1 if i % 37 == 0 else 1)
        write(f"jobs/job-{i}.yaml", text)
    write("nodes/n.yaml", NODE.format(name="n"))
    serial = manifests.load_paths([tmp_path])
    parallel = manifests.check_paths([tmp_path], workers=2)
    assert parallel.problems == serial.problems
    assert len(serial.problems) == len(range(0, count, 37))
    assert parallel.checked == len(serial.objects) == count + 1 - len(serial.problems)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
        env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
             "GIT_COMMITTER_EMAIL": "t@x", "HOME": str(repo), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    return root


def test_git_tree_is_read_at_a_commit_not_the_working_tree(repo: Path) -> None:
    (repo / "cluster" / "nodes").mkdir(parents=True)
    (repo / "cluster" / "nodes" / "a.yaml").write_text(NODE.format(name="a"))
    (repo / "README.md").write_text("hi")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "cluster" / "nodes" / "b.yaml").write_text(NODE.format(name="b"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "second")
    (repo / "cluster" / "nodes" / "c.yaml").write_text(NODE.format(name="uncommitted"))

    at_head = manifests.load_git_tree(repo, "main", "cluster")
    assert sorted(o.name for o in at_head.objects) == ["a", "b"]
    assert {o.path for o in at_head.objects} == {"cluster/nodes/a.yaml", "cluster/nodes/b.yaml"}
    at_first = manifests.load_git_tree(repo, first)
    assert [o.name for o in at_first.objects] == ["a"]


def test_a_git_tree_cache_rereads_only_changed_files(repo: Path) -> None:
    (repo / "nodes").mkdir()
    for name in ("a", "b"):
        (repo / "nodes" / f"{name}.yaml").write_text(NODE.format(name=name))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first")
    cache = manifests.GitTreeCache()
    first = manifests.load_git_tree(repo, cache=cache)
    kept = dict(cache.outcomes)
    (repo / "nodes" / "b.yaml").write_text(NODE.format(name="b2"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "second")
    second = manifests.load_git_tree(repo, cache=cache)
    assert sorted(o.name for o in first.objects) == ["a", "b"]
    assert sorted(o.name for o in second.objects) == ["a", "b2"]
    [(a_key, a_outcome)] = [(k, v) for k, v in kept.items() if k[0] == "nodes/a.yaml"]
    assert cache.outcomes[a_key] is a_outcome  # reused, not read again
    assert len(cache.outcomes) == 2  # the old b is forgotten


def test_git_tree_problems_are_located(repo: Path) -> None:
    (repo / "jobs").mkdir()
    (repo / "jobs" / "j.yaml").write_text(JOB.format(name="j", gpus=-2).lstrip())
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "bad job")
    result = manifests.load_git_tree(repo)
    assert [str(p) for p in result.problems] == [
        "jobs/j.yaml:10:11: error: TrainingJob/j: spec.resources.gpus: must be >= 0, got -2"
    ]


@pytest.mark.parametrize(
    ("commit", "subdir", "fragment"),
    [("nope", "", "no commit 'nope'"), ("HEAD", "absent", "no folder 'absent'")],
)
def test_git_source_errors(repo: Path, commit: str, subdir: str, fragment: str) -> None:
    (repo / "a.yaml").write_text(NODE.format(name="a"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "x")
    with pytest.raises(manifests.SourceError, match=fragment):
        manifests.load_git_tree(repo, commit, subdir)


def test_an_empty_repository_is_a_source_error(repo: Path) -> None:
    with pytest.raises(manifests.SourceError, match="is the branch empty"):
        manifests.load_git_tree(repo)


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(manifests.SourceError, match="not a git repository"):
        manifests.load_git_tree(tmp_path)


def test_a_message_repeats_only_a_short_escaped_excerpt_of_a_value() -> None:
    secret = "root:x:0:0:" + "s" * 200 + "\x1b[31m"
    [problem] = manifests.load_bytes(
        f'"{secret}"\n'.encode().replace(b"\x1b", b"\\e"), "f"
    ).problems
    excerpt = problem.message.split("got ", 1)[1]
    assert len(excerpt) <= 45
    assert "\x1b" not in problem.message
    [problem] = manifests.load_bytes(b'"root\\e[31m:x"\n', "f").problems
    assert problem.message.endswith("got 'root\\x1b[31m:x'")


def test_an_augmentation_error_points_at_the_op_not_at_the_union(
    write: Callable[[str, str], Path],
) -> None:
    text = JOB.format(name="aug", gpus=0).replace(
        "  command: [python, train.py]\n",
        "  dataset: digits\n  trainer:\n    model: builtin:resnet-tiny\n"
        "    augmentation:\n      rotation: 10\n      flip: 0.5\n",
    )
    result = manifests.load_paths([write("aug.yaml", text)])
    [problem] = result.problems
    assert (problem.line, problem.field) == (13, "spec.trainer.augmentation.flip")
    assert "unknown field; allowed here: randomResizedCrop, rotation" in problem.message
    [preset] = manifests.load_paths([write("p.yaml", text.replace(
        "    augmentation:\n      rotation: 10\n      flip: 0.5\n", "    augmentation: ligth\n"
    ))]).problems  # fmt: skip
    assert preset.field == "spec.trainer.augmentation"
    assert "must be one of 'none', 'light', 'strong', got 'ligth'; did you mean 'light'" in (
        preset.message)  # fmt: skip
