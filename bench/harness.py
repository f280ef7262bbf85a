"""A real controller and a real agent on loopback, over a local git repository: what
the agent benchmarks stand on.

    with Harness(tmp, database_url=None, webhook=True) as h:
        h.commit_job("j1", ["python", "-c", "print(1)"])
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import postgres  # (the repository's root, for the tests package)

SECRET = "bench-secret"
NODE = "apiVersion: mlsm/v1\nkind: Node\nmetadata: {name: n1}\nspec: {runtimes: [venv, docker]}\n"


@contextlib.contextmanager
def databases(kinds: list[str], tmp: Path) -> Iterator[list[tuple[str, str]]]:
    """(kind, URL) for each of 'sqlite' (a file in tmp) and 'postgresql' (a throwaway
    cluster, stopped afterwards)."""
    cluster = postgres.Cluster.start() if "postgresql" in kinds else None
    try:
        yield [(kind, cluster.url if cluster is not None and kind == "postgresql"
                else f"sqlite:///{tmp / kind}.db") for kind in kinds]  # fmt: skip
    finally:
        if cluster is not None:
            cluster.stop()


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(check: Callable[[], Any], timeout: float = 120.0, step: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError, ValueError, KeyError, IndexError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit("bench: timed out waiting; see the logs under the temp dir")
        time.sleep(step)


def job(name: str, command: list[str], image: str | None = None, python: str = "3") -> str:
    runtime = f"{{docker: {{image: '{image}'}}}}" if image else f"{{venv: {{python: '{python}'}}}}"
    return (f"apiVersion: mlsm/v1\nkind: TrainingJob\nmetadata: {{name: {name}, owner: ada}}\n"
            f"spec:\n  runtime: {runtime}\n"
            f"  command: {json.dumps(command)}\n"
            f"  resources: {{gpus: 0, cpu: 0.1}}\n")  # fmt: skip


class Harness:
    """`nodes`: how many nodes (n1, n2, ...), each with its own agent and storage root
    (`storage`, then `storage-n2`, ...), all on loopback."""

    def __init__(self, tmp: Path, *, database_url: str | None = None, webhook: bool = True,
                 agent: bool = True, nodes: int = 1) -> None:  # fmt: skip
        self.tmp, self.webhook, self.with_agent = tmp, webhook, agent
        self.repo, self.storage = tmp / "repo", tmp / "storage"
        self.nodes = [f"n{i}" for i in range(1, nodes + 1)]
        self.agents: list[subprocess.Popen[bytes]] = []
        self.database = database_url or f"sqlite:///{tmp / 'mlsm.db'}"
        self.port = free_port()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self.controller: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Harness:
        (self.repo / "nodes").mkdir(parents=True)
        for node in self.nodes:
            (self.repo / "nodes" / f"{node}.yaml").write_text(NODE.replace("n1", node))
        git(self.repo, "init", "-q", "-b", "main")
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-qm", "node")
        flags = ["--no-watch", "--webhook-secret", SECRET] if self.webhook else []
        self.controller = subprocess.Popen(
            [sys.executable, "-m", "mlsm.controller", "run", "--repo", str(self.repo),
             "--database-url", self.database, "--listen", f"127.0.0.1:{self.port}",
             "--state-dir", str(self.tmp / "state"), "--poll-interval", "600", *flags],
            stdout=(self.tmp / "controller.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait(lambda: all(self.client.get(f"/api/v1/nodes/{n}").status_code == 200
                         for n in self.nodes))  # fmt: skip
        if self.with_agent:
            for node in self.nodes:
                self.start_agent(node)
        return self

    def storage_of(self, node: str) -> Path:
        return self.storage if node == "n1" else self.tmp / f"storage-{node}"

    def start_agent(self, node: str = "n1") -> subprocess.Popen[bytes]:
        token = subprocess.run(
            [sys.executable, "-m", "mlsm.controller", "token", "issue", "--role", "node",
             "--node", node, "--database-url", self.database],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        suffix = "" if node == "n1" else f"-{node}"
        (self.tmp / f"token{suffix}").write_text(token)
        (self.tmp / "gpus.json").write_text("[]")
        agent = subprocess.Popen(
            [sys.executable, "-m", "mlsm.agent", "run", "--controller", str(self.client.base_url),
             "--node", node, "--token-file", str(self.tmp / f"token{suffix}"), "--storage-root",
             str(self.storage_of(node)), "--gpus-file", str(self.tmp / "gpus.json"),
             "--advertise-address", "127.0.0.1"],
            stdout=(self.tmp / f"agent{suffix}.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.agents.append(agent)
        if node == "n1":
            self.agent = agent
        return agent

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        for process in (*self.agents, self.controller):
            if process is not None:
                process.terminate()
                process.wait(10)
        self.client.close()

    def commit_job(
        self,
        name: str,
        command: list[str],
        image: str | None = None,
        extra: str = "",
        python: str = "3",
    ) -> float:
        """Commit a job (and send the webhook); the wall-clock time before the commit.
        `image`: a docker job in that image (else a venv job); `extra`: more of its
        spec, as YAML lines."""
        text = job(name, command, image, python) + extra
        return self.commit_files({f"jobs/{name}.yaml": text}, f"add {name}")

    def commit_files(self, files: dict[str, str | None], message: str) -> float:
        """Write (or, for None, remove) files, commit them, send the webhook; the
        wall-clock time before the commit."""
        for relative, text in files.items():
            path = self.repo / relative
            if text is None:
                path.unlink(missing_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.repo, "add", "-A")
        before = time.time()
        git(self.repo, "commit", "-qm", message)
        if self.webhook:
            body = json.dumps({"ref": "refs/heads/main"}).encode()
            signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            self.client.post("/api/v1/hooks/git", content=body,
                             headers={"X-Hub-Signature-256": f"sha256={signature}"})  # fmt: skip
        return before

    def run_of(self, name: str) -> dict[str, Any]:
        """The job's first run, once it exists."""
        found: list[dict[str, Any]] = []

        def exists() -> bool:
            found[:] = self.client.get("/api/v1/runs", params={"job": name}).json()["items"]
            return bool(found)

        wait(exists)
        return found[0]

    def phase(self, name: str) -> str:
        response = self.client.get(f"/api/v1/jobs/{name}")
        return str(response.json()["status"]["phase"]) if response.status_code == 200 else ""
