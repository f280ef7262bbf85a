"""Helpers for tests on real git repositories and databases."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def controller_bin() -> list[str]:
    return [sys.executable, "-m", "mlsm.controller"]


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (httpx.HTTPError, KeyError, IndexError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def start(tmp_path: Path, database_url: str) -> Iterator[Callable[..., httpx.Client]]:
    processes: list[subprocess.Popen[bytes]] = []
    clients: list[httpx.Client] = []

    def _start(
        repo: str, *flags: str, port: int | None = None, verify: ssl.SSLContext | None = None
    ) -> httpx.Client:
        """`verify`: the controller serves HTTPS (flags name its certificate), and
        the client trusts it with this context."""
        port = port or free_port()
        log = open(tmp_path / f"controller-{port}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [*controller_bin(), "run", "--repo", repo, "--listen", f"127.0.0.1:{port}",
             "--database-url", database_url, "--state-dir", str(tmp_path / "state"), *flags],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        processes.append(process)
        scheme = "https" if verify is not None else "http"
        client = httpx.Client(base_url=f"{scheme}://127.0.0.1:{port}", timeout=5,
                              verify=verify if verify is not None else True)  # fmt: skip
        client.process = process  # type: ignore[attr-defined]  # for tests that kill it
        clients.append(client)
        wait_for(lambda: client.get("/healthz").status_code == 200)
        return client

    yield _start
    for client in clients:  # an open keep-alive TLS connection holds a controller's
        client.close()  # graceful shutdown for its full 2 s
    for process in processes:
        process.terminate()
        process.wait(10)


def issue_node_token(database_url: str, node: str) -> str:
    done = subprocess.run(
        [*controller_bin(), "token", "issue", "--role", "node", "--node", node,
         "--database-url", database_url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


class AgentProcess:
    """A real `mlsm-agent` process with its own storage root."""

    def __init__(self, process: subprocess.Popen[bytes], root: Path, log: Path) -> None:
        self.process, self.root, self.log = process, root, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents: `start_agent(client, node, token, gpus=1)`."""
    agents: list[AgentProcess] = []

    def _start(
        client: httpx.Client,
        node: str,
        token: str,
        *,
        gpus: int = 1,
        again: AgentProcess | None = None,
        controller: str | None = None,
        **env: str,
    ) -> AgentProcess:
        """`again`: start a new agent process on that agent's storage root (a restart)."""
        root = again.root.parent if again is not None else tmp_path / f"agent-{node}-{len(agents)}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "token").write_text(token + "\n")
        (root / "gpus.json").write_text(json.dumps(
            [{"index": i, "uuid": f"GPU-{node}-{i}", "name": "Fake A100", "memory": 80 << 30}
             for i in range(gpus)]
        ))  # fmt: skip
        log = root / f"agent-{len(agents)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "mlsm.agent", "run", "--controller",
             controller or str(client.base_url),
             "--node", node, "--token-file", str(root / "token"), "--storage-root",
             str(root / "storage"), "--heartbeat-interval", "0.5", "--stop-grace", "2",
             "--gpus-file", str(root / "gpus.json")],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "PIP_NO_INDEX": "1", "MLSM_DEBUG": "1", **env},
        )  # fmt: skip
        agents.append(AgentProcess(process, root / "storage", log))
        return agents[-1]

    yield _start
    for agent in agents:
        if agent.process.poll() is None:
            agent.process.send_signal(signal.SIGCONT)
            agent.process.terminate()
            agent.process.wait(10)
        containers = []
        for record in agent.root.glob(".mlsm-agent/runs/*.json"):  # jobs left running
            with contextlib.suppress(ProcessLookupError, ValueError, KeyError):
                facts = json.loads(record.read_text())
                if facts.get("container"):
                    containers.append(facts["container"])
                elif facts["pid"] > 1:
                    os.killpg(int(facts["pid"]), signal.SIGKILL)
        containers += [f"mlsm-{run.name}" for run in agent.root.glob("runs/*")]
        if containers and os.environ.get("DOCKER_HOST"):
            _remove_containers(containers)


def _remove_containers(names: list[str]) -> None:
    import docker
    import docker.errors

    client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], version="auto")
    for name in names:
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(name).remove(force=True)


# -- asking the controller ------------------------------------------------------------


def get_job(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/jobs/{name}")
    if response.status_code == 404:
        raise KeyError(f"no job {name} yet")  # wait_for retries on this
    assert response.status_code == 200, response.text
    return dict(response.json())


def phase(client: httpx.Client, name: str) -> str:
    response = client.get(f"/api/v1/jobs/{name}")
    return str(response.json()["status"]["phase"]) if response.status_code == 200 else ""


def runs_of(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    return list(client.get("/api/v1/runs", params={"job": name}).json()["items"])


def wait_phase(client: httpx.Client, name: str, wanted: str, timeout: float = 30) -> None:
    try:
        wait_for(lambda: phase(client, name) == wanted, timeout=timeout)
    except AssertionError:
        raise AssertionError(
            f"job {name} never reached {wanted}: {get_job(client, name)}"
        ) from None


def ready(client: httpx.Client, name: str) -> bool:
    conditions = client.get(f"/api/v1/nodes/{name}").json()["status"]["conditions"]
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
