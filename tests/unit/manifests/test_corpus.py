"""The corpus of invalid manifests: each file lists, in `# expect:` comments, the
exact `line:col: error: ...` lines that validating it must print, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsm import manifests

CORPUS = Path(__file__).parents[2] / "corpus" / "invalid"
CASES = sorted(CORPUS.glob("*.yaml"))


def expected(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    prefix = "# expect: "
    return [
        line.removeprefix(prefix).replace("{dir}", str(CORPUS))
        for line in lines
        if line.startswith(prefix)
    ]


def test_the_corpus_is_not_empty() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_invalid_manifest_is_reported_exactly(path: Path) -> None:
    want = expected(path)
    assert want, f"{path.name} has no '# expect:' line"
    result = manifests.load_paths([path])
    got = [str(problem).removeprefix(f"{path}:") for problem in result.problems]
    assert got == want


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_worker_processes_report_the_same(path: Path) -> None:
    serial = manifests.load_paths([path]).problems
    assert manifests.check_paths([path], workers=1).problems == serial
