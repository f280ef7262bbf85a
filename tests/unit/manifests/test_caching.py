"""The checked files `mlsmctl plan` keeps between runs (`manifests/caching.py`): read
back instead of checked again, and never trusted when they cannot be."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from mlsm import manifests
from mlsm.manifests import caching, loading
from tests.unit.manifests.test_loading import NODE, git

JOB = """\
apiVersion: mlsm/v1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  runtime: {{venv: {{python: "3.11"}}}}
  command: [python, train.py]
  {extra}
"""


@pytest.fixture
def change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[int]]:
    """A repository whose last commit adds a job beside unchanged ones (one with an
    error), the cache in tmp_path, and how many files each load checks unchanged."""
    monkeypatch.setenv(caching.CACHE_ENV, str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "n.yaml").write_text(NODE.format(name="gpu-1"))
    for i in range(5):
        (repo / f"j{i}.yaml").write_text(JOB.format(name=f"j{i}", extra=""))
    (repo / "bad.yaml").write_text(JOB.format(name="bad", extra="epochs: 3"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    (repo / "new.yaml").write_text(JOB.format(name="new", extra=""))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "head")
    counts: list[int] = []
    real = loading._check_texts_in_workers

    def counting(items: Any, *args: Any) -> Any:
        counts.append(len(items))
        return real(items, *args)

    monkeypatch.setattr(loading, "_check_texts_in_workers", counting)
    return repo, counts


def summary(result: tuple[manifests.LoadResult, manifests.LoadResult]) -> Any:
    return [(sorted(o.name for o in r.objects), [str(p) for p in r.problems]) for r in result]


def test_a_second_plan_checks_only_what_the_change_touches(
    change: tuple[Path, list[int]],
) -> None:
    repo, counts = change
    first = manifests.load_git_change(repo, "HEAD~1", "HEAD")
    second = manifests.load_git_change(repo, "HEAD~1", "HEAD")
    assert counts == [7, 0]  # the node, five jobs and the broken one; then none
    assert summary(second) == summary(first)
    (_, head) = second
    assert sorted(o.name for o in head.objects) == ["gpu-1", "new"]  # jobs: only changed
    assert [p.path for p in head.problems] == ["bad.yaml"], head.problems


def test_a_file_changed_since_is_checked_again(change: tuple[Path, list[int]]) -> None:
    repo, counts = change
    manifests.load_git_change(repo, "HEAD~1", "HEAD")
    (repo / "j0.yaml").write_text(JOB.format(name="j0", extra="retries: 1"))
    git(repo, "commit", "-qam", "base moves on")
    again = manifests.load_git_change(repo, "HEAD~2", "HEAD")
    # j0 is now part of the change (checked with it); the shard that held it is used
    # whole or not at all, so the other six are checked again.
    assert counts == [7, 6]
    assert not [p for p in again[1].problems if "j0" in p.path]


OLDER = {"fingerprint": "an older mlsm", "outcomes": {}}


OLDER = {"fingerprint": "an older mlsm", "outcomes": {}}


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda path: path.write_bytes(b"\x80\x05not a pickle"), id="corrupt"),
        pytest.param(lambda path: path.write_bytes(path.read_bytes()[:100]), id="truncated"),
        pytest.param(lambda path: path.write_bytes(pickle.dumps(OLDER)), id="other-fingerprint"),
        pytest.param(lambda path: path.write_bytes(pickle.dumps(os.getpid)), id="foreign-class"),
    ],
)
def test_a_cache_that_cannot_be_trusted_counts_as_none(
    change: tuple[Path, list[int]], spoil: Any
) -> None:
    repo, counts = change
    first = manifests.load_git_change(repo, "HEAD~1", "HEAD")
    (cached,) = Path(os.environ[caching.CACHE_ENV]).glob("checked-*.pickle")
    spoil(cached)
    again = manifests.load_git_change(repo, "HEAD~1", "HEAD")
    assert counts == [7, 7]
    assert summary(again) == summary(first)


def test_an_unpickler_builds_nothing_but_mlsm_s_classes() -> None:
    class Boom:
        def __reduce__(self) -> Any:
            return (os.system, ("echo pwned > /dev/null",))

    unpickler = caching._OwnClasses(__import__("io").BytesIO(pickle.dumps(Boom())))
    with pytest.raises(pickle.UnpicklingError, match=r"posix\.system is not mlsm's"):
        unpickler.load()


def test_caching_off_or_unwritable_changes_nothing_but_speed(
    change: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    repo, counts = change
    monkeypatch.setenv(caching.CACHE_ENV, "")  # off
    first = manifests.load_git_change(repo, "HEAD~1", "HEAD")
    assert not (tmp_path / "cache").exists()
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv(caching.CACHE_ENV, str(blocked / "mlsm"))
    second = manifests.load_git_change(repo, "HEAD~1", "HEAD")
    assert counts == [7, 7]
    assert summary(second) == summary(first)
