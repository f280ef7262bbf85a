"""Helpers for tests on real git repositories and databases."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest


class GitRepo:
    """A real git repository in a temp dir, committed to with the git CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@lab.org",
               "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@lab.org"}  # fmt: skip
        done = subprocess.run(["git", "-C", str(self.root), *args], env=env, check=True,
                              capture_output=True, text=True)  # fmt: skip
        return done.stdout.strip()

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))

    def remove(self, relative: str) -> None:
        self.git("rm", "-q", relative)

    def commit(self, message: str = "change") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


def node(name: str, gpus: int = 8) -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: Node
        metadata: {{name: {name}, labels: {{gpu: a100}}}}
        spec: {{runtimes: [venv, docker], capacity: {{gpus: {gpus}}}}}
    """


def job(name: str, epochs: int = 1, dataset: str = "") -> str:
    data = f"\n          dataset: {dataset}" if dataset else ""
    return f"""
        apiVersion: mlsm/v1
        kind: TrainingJob
        metadata: {{name: {name}, owner: ada}}
        spec:
          runtime: {{venv: {{python: "3.11"}}}}
          command: [python, -c, "print({epochs})"]{data}
          resources: {{gpus: 1}}
    """
