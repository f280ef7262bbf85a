"""deploy/Dockerfile, built with Podman on a base made offline (`make engine`'s
Debian Python image) from wheels of the locked versions: the controller image serves
/healthz against a real PostgreSQL and syncs a repository, and an agent from the agent
image joins it and runs a venv job in its container."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.engine import Engine
from tests.integration.conftest import GitRepo, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
# The build context: what .dockerignore lets through (its "!name" lines), and itself.
CONTEXT = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines()
           if line.startswith("!") and (ROOT / line[1:]).exists()] + [".dockerignore"]  # fmt: skip


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def images(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Both targets, built from a copy of the build context with a wheelhouse in it,
    as a lab without PyPI would (PIP_OPTIONS); tagged by what they are made of."""
    base = engine.python_ready()
    context = tmp_path_factory.mktemp("context")
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, context / name)
    wheels = subprocess.run([sys.executable, str(ROOT / "tools" / "engine.py"), "--wheels",
                             str(context / "wheels")], capture_output=True, text=True)  # fmt: skip
    assert wheels.returncode == 0, wheels.stdout + wheels.stderr
    digest = hashlib.sha256(base.encode())
    for path in sorted(p for p in context.rglob("*") if p.is_file() and "wheels" not in p.parts):
        digest.update(str(path.relative_to(context)).encode() + path.read_bytes())
    digest.update((ROOT / "deploy" / "Dockerfile").read_bytes())
    built = {}
    for target in ("controller", "agent"):
        tag = f"localhost/mlsm-test/{target}:{digest.hexdigest()[:12]}"
        if podman("image", "exists", tag).returncode != 0:
            done = podman(
                "build", "--file", str(ROOT / "deploy" / "Dockerfile"), "--target", target,
                "--build-arg", f"BASE={base}",
                "--build-arg", "PIP_OPTIONS=--no-index --find-links=/src/wheels",
                "--tag", tag, str(context), timeout=600,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        built[target] = tag
    return built


@pytest.fixture
def containers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(subprocess.TimeoutExpired):
            podman("rm", "--force", "--time", "2", name)


def run_container(names: list[str], name: str, image: str, *args: str) -> None:
    """On the host's network: the test's PostgreSQL listens on its loopback."""
    done = podman("run", "--detach", "--name", name, "--network", "host", *args, image)
    assert done.returncode == 0, done.stderr
    names.append(name)


def logs(name: str) -> str:
    done = podman("logs", name)
    return done.stdout[-3000:] + done.stderr[-3000:]


def test_the_images_run_a_controller_on_postgresql_and_an_agent_that_runs_a_job(
    images: dict[str, str], postgres_url: str, tmp_path: Path, containers: list[str]
) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.write("nodes/box.yaml", """
        apiVersion: mlsm/v1
        kind: Node
        metadata: {name: box}
        spec: {runtimes: [venv], capacity: {gpus: 0}}
    """)  # fmt: skip
    repo.write("jobs/hello.yaml", """
        apiVersion: mlsm/v1
        kind: TrainingJob
        metadata: {name: hello, owner: ada}
        spec:
          runtime: {venv: {python: "3.11"}}
          command: [python, -c, "import sys; print('hello from', sys.prefix)"]
    """)  # fmt: skip
    repo.commit("a node and a job")
    os.chown(repo.root, 10001, 10001)  # the image's user mlsm reads it (git checks owners)
    for path in repo.root.rglob("*"):
        os.lchown(path, 10001, 10001)
    port = free_port()
    suffix = tmp_path.name[-12:]
    run_container(
        containers, f"mlsm-test-controller-{suffix}", images["controller"],
        "--env", f"MLSM_DATABASE_URL={postgres_url}", "--env", f"MLSM_LISTEN=127.0.0.1:{port}",
        "--env", "MLSM_REPO=/manifests", "--env", "MLSM_POLL_INTERVAL=1",
        "--volume", f"{repo.root}:/manifests:ro",
    )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    try:
        wait_for(lambda: client.get("/healthz").status_code == 200, timeout=60)
    except AssertionError:
        raise AssertionError(f"the controller never answered:\n{logs(containers[0])}") from None
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["leader"]["leading"] is True  # PostgreSQL: the lock is its
    wait_for(lambda: client.get("/api/v1/nodes/box").status_code == 200, timeout=30)

    issued = podman("exec", containers[0], "mlsm-controller", "token", "issue", "--role",
                    "node", "--node", "box")  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    token = tmp_path / "token"
    token.write_text(issued.stdout.strip().splitlines()[-1] + "\n")
    token.chmod(0o644)
    storage = tmp_path / "storage"
    storage.mkdir()
    os.chown(storage, 10001, 10001)
    run_container(
        containers, f"mlsm-test-agent-{suffix}", images["agent"],
        "--env", f"MLSM_AGENT_CONTROLLER=http://127.0.0.1:{port}",
        "--env", "MLSM_AGENT_NODE=box", "--env", "MLSM_AGENT_TOKEN_FILE=/etc/mlsm/token",
        "--env", "MLSM_AGENT_HEARTBEAT_INTERVAL=0.5", "--env", "PIP_NO_INDEX=1",
        "--env", f"MLSM_AGENT_STORAGE_ROOT={storage}",
        "--volume", f"{token}:/etc/mlsm/token:ro", "--volume", f"{storage}:{storage}",
    )  # fmt: skip

    def succeeded() -> bool:
        return client.get("/api/v1/jobs/hello").json()["status"]["phase"] == "Succeeded"

    try:
        wait_for(succeeded, timeout=90)
    except AssertionError:
        raise AssertionError(
            f"{client.get('/api/v1/jobs/hello').json()}\nagent:\n{logs(containers[1])}"
            f"\ncontroller:\n{logs(containers[0])}"
        ) from None
    [run] = client.get("/api/v1/runs", params={"job": "hello"}).json()["items"]
    lines = client.get(f"/api/v1/runs/{run['id']}/logs").json()["lines"]
    assert any(f"hello from {storage}/envs/" in line["text"] for line in lines), lines
    client.close()
