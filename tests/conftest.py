"""Shared helpers for the test suite."""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import engine as engines
from tests import postgres

# Torch's OpenMP threads wait by sleeping, not spinning: with the suite's workers on two
# cores, spinning threads of one process burn the cores another needs (a training
# took 41 CPU-s beside two busy loops, 17 with this). Set before any test imports
# torch; agents, their venv jobs and the trainer inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `mlsmctl plan` keeps checked files between runs (mlsm/manifests/caching.py): the
# suite's go to a folder of its own, never the user's ~/.cache/mlsm.
os.environ.setdefault("MLSM_CACHE_DIR", tempfile.mkdtemp(prefix="mlsm-test-cache-"))


# The longest first: pytest-xdist hands tests out in collection order, so the long
# integration tests then run side by side from the start, and the many quick unit
# tests fill the end instead of one worker finishing a two-minute test alone. The
# tests that wait for `make engine`'s background build of the Python image (some
# 100 s on a fresh machine) come after the others of their kind.
LONGEST_FIRST = (
    "tests/integration/test_multinode.py",
    "tests/integration/test_up.py",
    "tests/e2e/",
    "tests/training/",
    "tests/integration/",  # the other integration tests, then those that wait:
    "tests/integration/test_docker_runtime.py",
    "tests/integration/test_images.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        found = [(len(p), i) for i, p in enumerate(LONGEST_FIRST) if item.nodeid.startswith(p)]
        return max(found, default=(0, len(LONGEST_FIRST)))[1]  # the narrowest prefix

    items.sort(key=rank)  # stable: a module's tests stay together and in order


@pytest.fixture(scope="session")
def engine() -> engines.Engine:
    """The real container engine (`make engine`); the test fails without one."""
    try:
        return engines.Engine.find()
    except engines.NoEngine as exc:
        pytest.fail(str(exc))


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a dedented manifest file under tmp_path and return its path."""

    def _write(relative: str, text: str) -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


# -- databases ----------------------------------------------------------------------
# Store and controller tests run on SQLite and on a real PostgreSQL server: a
# throwaway cluster this session starts (as the `postgres` user when run as root),
# or the server named by MLSM_TEST_POSTGRES_URL.


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server's `postgres` database."""
    given = os.environ.get("MLSM_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    try:
        cluster = postgres.Cluster.start()
    except postgres.NotInstalled as exc:
        pytest.fail(str(exc))
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    with postgres.fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind, by URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlsm.db'}"
    return str(request.getfixturevalue("postgres_url"))
