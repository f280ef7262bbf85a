"""The docker runtime against a real Docker Engine API (Podman's, from `make engine`),
with a real controller and real `mlsm-agent` processes on loopback: a job's output,
its exit code, its limits and mounts; cancel from git and maxDuration; an agent
killed and restarted while a container runs, and one down while it ends; an image
that cannot be had; a memory limit exceeded; a mount outside the storage root; a
node with no engine; the built-in trainer in a container; and the containers of a
job on two nodes meeting at node rank 0's endpoint."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.databases import sqlite_only
from tests.engine import Engine, NoEngine
from tests.integration.conftest import (
    AgentProcess,
    GitRepo,
    get_job,
    issue_node_token,
    phase,
    ready,
    runs_of,
    wait_for,
    wait_phase,
)


def node(name: str, runtimes: str = "[venv, docker]") -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: Node
        metadata: {{name: {name}}}
        spec: {{runtimes: {runtimes}}}
    """


def job(name: str, image: str, script: str, *, extra: str = "", gpus: int = 0) -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: TrainingJob
        metadata: {{name: {name}, owner: ada}}
        spec:
          runtime: {{docker: {{image: "{image}"}}}}
          command: [sh, -c, {json.dumps(script)}]
          resources: {{gpus: {gpus}, cpu: 0.5}}{extra}
    """


def logs(client: httpx.Client, run: str) -> list[str]:
    """All the run's shipped log lines, page by page."""
    lines: list[str] = []
    after = -1
    while True:
        params = {"after": after, "limit": 1000}
        body = client.get(f"/api/v1/runs/{run}/logs", params=params).json()
        lines += [line["text"] for line in body["lines"]]
        if len(body["lines"]) < 1000:
            return lines
        after = body["next"]


def containers(engine: Engine, **labels: str) -> list[Any]:
    """The containers with these labels. The SDK lists them, then inspects each: one
    removed in between (a run just released) makes it ask again."""
    import docker

    filters = [f"{k.replace('_', '.')}={v}" for k, v in labels.items()]
    for _ in range(10):
        try:
            return list(engine.client().containers.list(all=True, filters={"label": filters}))
        except docker.errors.APIError as exc:
            if "no such container" not in str(exc):
                raise
    raise AssertionError(f"containers {filters} kept vanishing while listed")


@dataclass
class Cluster:
    client: httpx.Client
    agent: AgentProcess
    repo: GitRepo
    engine: Engine
    restart: Callable[[], AgentProcess]
    """A new agent process on the same storage root (after the old one died)."""


@pytest.fixture
def boot(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
    engine: Engine,
) -> Callable[..., Cluster]:
    """A controller and the agent of node n1, given `docker_host` (the engine's by
    default)."""

    def _boot(docker_host: str | None = None) -> Cluster:
        repo.write("nodes/n1.yaml", node("n1"))
        repo.commit("a node")
        client = start(str(repo.root), "--poll-interval", "600")
        wait_for(lambda: client.get("/api/v1/nodes/n1").status_code == 200)
        token = issue_node_token(database_url, "n1")
        host = docker_host or engine.host
        agent = start_agent(client, "n1", token, gpus=1, DOCKER_HOST=host)
        wait_for(lambda: ready(client, "n1"))

        def restart() -> AgentProcess:
            return start_agent(client, "n1", token, gpus=1, again=agent, DOCKER_HOST=host)

        return Cluster(client, agent, repo, engine, restart)

    return _boot


SEEN = (
    "env | grep -E '^(MLSM_|GREETING|CUDA_VISIBLE)' | sort > $MLSM_OUTPUT_DIR/env.txt; "
    "pwd > $MLSM_OUTPUT_DIR/cwd.txt; "
    "cat $MLSM_DATASET_DIR/train/cat/0.png > $MLSM_OUTPUT_DIR/read.txt; "
    "echo x > $MLSM_DATASET_DIR/written 2>/dev/null && echo dataset-writable "
    "|| echo dataset-read-only; "
    "echo to stderr >&2; echo hello from the container; "
    "while [ ! -e $MLSM_OUTPUT_DIR/finish ]; do sleep 0.05; done"
)


def dataset() -> str:
    return """
        apiVersion: mlsm/v1
        kind: Dataset
        metadata: {name: cats}
        spec:
          format: imagefolder
          locations: [{node: n1, path: datasets/cats}]
    """


@sqlite_only
def test_containers_run_succeed_fail_and_are_refused_what_they_may_not_have(
    boot: Callable[..., Cluster], tmp_path: Any
) -> None:
    cluster = boot()
    client, agent, repo, engine = cluster.client, cluster.agent, cluster.repo, cluster.engine
    status = client.get("/api/v1/nodes/n1").json()["status"]
    assert status["runtimes"] == ["docker", "venv"]
    data = agent.root / "datasets/cats"
    for split in ("train", "val"):
        (data / split / "cat").mkdir(parents=True)
        (data / split / "cat" / "0.png").write_bytes(b"a cat")
    # A job whose output folder is a link out of the storage root.
    outside = tmp_path / "outside"
    outside.mkdir()
    (agent.root / "jobs").mkdir(exist_ok=True)
    (agent.root / "jobs" / "escape").symlink_to(outside)
    repo.write("datasets/cats.yaml", dataset())
    bb = engine.busybox
    extra = "\n          dataset: cats\n          env: {GREETING: hi}\n          "
    extra += "resources: {gpus: 1, cpu: 0.5, memory: 64Mi}"
    repo.write("jobs/ok.yaml", job("ok", bb, SEEN, extra=extra).replace(
        "          resources: {gpus: 0, cpu: 0.5}", "", 1))  # fmt: skip
    repo.write("jobs/bad.yaml", job("bad", bb, "echo boom; exit 3"))
    fill = "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived"
    repo.write("jobs/hog.yaml", job("hog", bb, fill).replace(
        "cpu: 0.5}", "cpu: 0.5, memory: 32Mi}"))  # fmt: skip
    repo.write("jobs/nowhere.yaml", job("nowhere", "localhost/mlsm-test/no-such-image:1", "true"))
    repo.write("jobs/escape.yaml", job("escape", bb, "echo should not run"))
    repo.commit("five container jobs")

    wait_phase(client, "ok", "Running")
    [run] = runs_of(client, "ok")
    assert (
        "enforced by the container engine: cpu 0.5 as the container's nano_cpus" in run["message"]
    )
    assert "memory 64Mi as its mem_limit (no swap)" in run["message"]
    assert "GPUs 0 as a DeviceRequest" in run["message"]
    [box] = containers(engine, mlsm_run=run["id"])
    assert box.labels == {"mlsm.run": run["id"], "mlsm.job": "ok", "mlsm.node": "n1"}
    assert box.attrs["HostConfig"]["Memory"] == 64 << 20
    assert box.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    output = agent.root / "jobs/ok/output"
    wait_for((output / "read.txt").is_file)
    (output / "finish").write_text("")
    wait_phase(client, "ok", "Succeeded")
    env = dict(line.split("=", 1) for line in (output / "env.txt").read_text().splitlines())
    assert env["MLSM_RUN_ID"] == run["id"]
    assert env["MLSM_JOB"] == "ok"
    assert env["GREETING"] == "hi"
    assert env["MLSM_OUTPUT_DIR"] == "/mlsm/output"
    assert env["MLSM_RUN_DIR"] == "/mlsm/run"
    assert env["MLSM_METRICS_FILE"] == "/mlsm/run/metrics.jsonl"
    assert env["MLSM_DATASET_DIR"] == "/mlsm/dataset"
    assert "CUDA_VISIBLE_DEVICES" not in env, "the engine exposes the GPUs it was asked for"
    assert (output / "cwd.txt").read_text().strip() == "/mlsm/run"
    assert (output / "read.txt").read_text() == "a cat"
    assert not (data / "written").exists()
    wait_for(lambda: "hello from the container" in logs(client, run["id"]))
    shipped = logs(client, run["id"])
    assert "to stderr" in shipped
    assert "dataset-read-only" in shipped
    assert (
        "enforced by the container engine: cpu 0.5 as the container's nano_cpus" in run["message"]
    )
    assert "memory 64Mi as its mem_limit (no swap)" in run["message"]
    assert "GPUs 0 as a DeviceRequest" in run["message"]
    # Removed once its output is shipped.
    wait_for(lambda: not containers(engine, mlsm_run=run["id"]), timeout=30)

    wait_phase(client, "bad", "Failed")
    [bad] = runs_of(client, "bad")
    assert (bad["reason"], bad["exitCode"]) == ("Error", 3)
    assert "boom" in bad["message"]

    wait_phase(client, "hog", "Failed")
    [hog] = runs_of(client, "hog")
    assert hog["reason"] == "OOMKilled", hog
    assert "32Mi it is allowed" in hog["message"]
    assert hog["exitCode"] == 137

    started_at = time.monotonic()
    wait_phase(client, "nowhere", "Failed")
    [nowhere] = runs_of(client, "nowhere")
    assert nowhere["reason"] == "ImagePullFailed"
    assert "localhost/mlsm-test/no-such-image:1" in nowhere["message"]
    assert "cannot be pulled" in nowhere["message"]
    assert time.monotonic() - started_at < 30

    wait_phase(client, "escape", "Failed")
    [escape] = runs_of(client, "escape")
    assert escape["reason"] == "StartFailed"
    assert "outside the storage root" in escape["message"]
    assert "nothing was started or created" in escape["message"]
    assert not containers(engine, mlsm_job="escape"), "refused before any container exists"
    assert not list(outside.iterdir())


@sqlite_only
def test_cancel_from_git_and_max_duration_stop_a_container_with_its_grace_period(
    boot: Callable[..., Cluster],
) -> None:
    cluster = boot()
    client, agent, repo, engine = cluster.client, cluster.agent, cluster.repo, cluster.engine
    trap = "trap 'echo got TERM; exit 143' TERM; echo up; while true; do sleep 0.1; done"
    repo.write("jobs/polite.yaml", job("polite", engine.busybox, trap))
    repo.write("jobs/deaf.yaml", job("deaf", engine.busybox, "trap '' TERM; echo up; sleep 600",
                                     extra="\n          maxDuration: 3s"))  # fmt: skip
    repo.commit("two long jobs")
    wait_phase(client, "polite", "Running")
    [polite] = runs_of(client, "polite")
    wait_for(lambda: "up" in logs(client, polite["id"]))
    assert [c.status for c in containers(engine, mlsm_run=polite["id"])] == ["running"]

    repo.remove("jobs/polite.yaml")
    repo.commit("cancel polite")
    client.post("/api/v1/sync")
    wait_for(lambda: "got TERM" in logs(client, polite["id"]), timeout=30)
    wait_for(lambda: not containers(engine, mlsm_run=polite["id"]), timeout=30)

    wait_phase(client, "deaf", "Failed", timeout=60)
    [deaf] = runs_of(client, "deaf")
    assert deaf["reason"] == "DeadlineExceeded"
    # It ignores SIGTERM: SIGKILL after the grace period (2 s in these tests).
    wait_for(lambda: "did not stop within 2s: SIGKILL" in agent.output(), timeout=30)
    wait_for(lambda: not containers(engine, mlsm_run=deaf["id"]), timeout=30)


CHATTY = (
    "i=0; while [ ! -e $MLSM_OUTPUT_DIR/finish ]; do for _ in 1 2 3 4 5 6 7 8 9 10; do "
    "echo line $i; i=$((i+1)); done; sleep 0.01; done; echo done"
)


def shipped(client: httpx.Client, run: str) -> int:
    return int(client.get(f"/api/v1/runs/{run}/logs", params={"tail": 1}).json()["logOffset"])


@sqlite_only
def test_an_agent_killed_while_a_container_runs_adopts_it_and_ships_on_without_gap(
    boot: Callable[..., Cluster],
) -> None:
    cluster = boot()
    client, agent, repo, engine = cluster.client, cluster.agent, cluster.repo, cluster.engine
    repo.write("jobs/chatty.yaml", job("chatty", engine.busybox, CHATTY))
    lonely = "while [ ! -e $MLSM_OUTPUT_DIR/finish ]; do sleep 0.05; done; echo bye; exit 4"
    repo.write("jobs/lonely.yaml", job("lonely", engine.busybox, lonely))
    repo.commit("two jobs")
    wait_phase(client, "chatty", "Running")
    wait_phase(client, "lonely", "Running")
    [run] = runs_of(client, "chatty")
    [ended] = runs_of(client, "lonely")
    wait_for(lambda: shipped(client, run["id"]) > 5000, timeout=30)
    [first] = containers(engine, mlsm_run=run["id"])

    agent.process.kill()  # kill -9: the containers go on
    agent.process.wait()
    (agent.root / "jobs/lonely/output/finish").write_text("")  # ends while it is down
    wait_for(lambda: containers(engine, mlsm_run=ended["id"])[0].status == "exited")
    agent = cluster.restart()
    wait_for(lambda: agent.output().count("adopted") >= 2, timeout=30)
    before = shipped(client, run["id"])
    wait_for(lambda: shipped(client, run["id"]) > before + 5000, timeout=30)
    [same] = containers(engine, mlsm_run=run["id"])
    assert same.id == first.id, "adopted, not started again"

    wait_phase(client, "lonely", "Failed")
    [lonely_run] = runs_of(client, "lonely")
    assert (lonely_run["exitCode"], lonely_run["reason"]) == (4, "Error")
    assert "bye" in lonely_run["message"]

    (agent.root / "jobs/chatty/output/finish").write_text("")
    wait_phase(client, "chatty", "Succeeded")
    assert [r["id"] for r in runs_of(client, "chatty")] == [run["id"]], "never started twice"
    size = (agent.root / "runs" / run["id"] / "output.log").stat().st_size
    wait_for(lambda: shipped(client, run["id"]) == size, timeout=30)
    lines = logs(client, run["id"])
    assert lines[-1] == "done"
    assert lines[:-1] == [f"line {i}" for i in range(len(lines) - 1)], "no gap, no duplicate"
    wait_for(lambda: not containers(engine, mlsm_node="n1"), timeout=30)


@sqlite_only
def test_a_node_without_an_engine_never_gets_docker_jobs_and_says_why(
    boot: Callable[..., Cluster], tmp_path: Any
) -> None:
    nowhere = f"unix://{tmp_path}/no-engine.sock"
    cluster = boot(nowhere)
    client, agent, repo, engine = cluster.client, cluster.agent, cluster.repo, cluster.engine
    status = client.get("/api/v1/nodes/n1").json()["status"]
    assert status["runtimes"] == ["venv"]
    assert "no container engine answers at" in status["runtimeProblems"]["docker"]
    assert "runtime docker: not offered: no container engine answers" in agent.output()
    repo.write("jobs/boxed.yaml", job("boxed", engine.busybox, "echo hi"))
    repo.commit("a docker job")
    client.post("/api/v1/sync")
    wait_for(lambda: "Unschedulable" in str(get_job(client, "boxed")["status"]["conditions"]))
    time.sleep(1)
    assert phase(client, "boxed") == "Pending"
    assert runs_of(client, "boxed") == []
    conditions = get_job(client, "boxed")["status"]["conditions"]
    message = next(c["message"] for c in conditions if c["type"] == "Scheduled")
    assert "docker" in message, message
    env = {**os.environ, "MLSM_SERVER": str(client.base_url)}
    import subprocess
    import sys

    wide = subprocess.run([sys.executable, "-m", "mlsm.cli", "get", "nodes", "-o", "wide"],
                          capture_output=True, text=True, env=env, check=True).stdout  # fmt: skip
    assert "docker: no container engine answers" in wide, wide


def trainer(image: str) -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: TrainingJob
        metadata: {{name: vit, owner: ada}}
        spec:
          runtime: {{docker: {{image: "{image}"}}}}
          trainer:
            model: builtin:vit-tiny
            pretrained: false
            epochs: 2
            batchSize: 16
            learningRate: 0.002
            numWorkers: 0
          dataset: digits
          env: {{HF_HUB_OFFLINE: "1"}}
          resources: {{gpus: 0, cpu: 2}}
    """


@sqlite_only
def test_the_built_in_trainer_runs_in_a_container_as_in_a_venv(
    boot: Callable[..., Cluster],
) -> None:
    from mlsm.training.demo import write_digits

    cluster = boot()
    client, agent, repo, engine = cluster.client, cluster.agent, cluster.repo, cluster.engine
    try:
        image = engine.python_ready()  # `make engine` builds it in the background
    except NoEngine as exc:
        pytest.fail(str(exc))
    root = agent.root
    write_digits(root / "datasets" / "digits")
    repo.write("datasets/digits.yaml", dataset().replace("cats", "digits"))
    repo.write("jobs/vit.yaml", trainer(image))
    repo.commit("train in the image")

    # One run to the end. (SIGTERM reaching a container within its grace period is
    # test_cancel_from_git_and_max_duration_stop_a_container_with_its_grace_period;
    # the trainer saving a checkpoint on SIGTERM and resuming from it, tests/training/.)
    wait_phase(client, "vit", "Succeeded", timeout=240)
    [run] = runs_of(client, "vit")
    output = root / "jobs" / "vit" / "output"
    assert (output / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (output / "checkpoints" / "last").is_dir()
    records = client.get(f"/api/v1/runs/{run['id']}/metrics").json()["records"]
    accuracies = [r["value"] for r in records if r["split"] == "val" and r["name"] == "accuracy"]
    assert accuracies, "evaluations shipped from /mlsm/run/metrics.jsonl"
    assert "epoch 2/2" in "\n".join(logs(client, run["id"]))
    config = json.loads((root / "runs" / run["id"] / "trainer.json").read_text())
    assert (config["datasetRoot"], config["outputDir"]) == ("/mlsm/dataset", "/mlsm/output")
    # the image it ran, by id and digest, in its provenance
    made = json.loads((output / "checkpoints" / "best" / "provenance.json").read_text())
    ran = engine.client().images.get(image)
    assert made["environment"]["image"] == image
    assert made["environment"]["imageId"] == ran.id
    assert made["environment"]["digest"] in (None, *ran.attrs.get("RepoDigests", []))
    # mlsm's own code, copied under the storage root once, is what the image ran.
    [code] = (root / "envs").glob("mlsm-*")
    assert (code / "mlsm" / "training" / "__main__.py").is_file()


def test_the_runtime_itself_refuses_a_mount_outside_the_storage_root(
    engine: Engine, tmp_path: Any
) -> None:
    """Below the launch's own check: a path swapped for a link after it was made."""
    from mlsm.agent.records import RunFolder
    from mlsm.agent.runtimes import Launch, Mount, StartFailed
    from mlsm.agent.runtimes.docker import DockerRuntime

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "runs" / "r-escape").mkdir(parents=True)
    outside.mkdir()
    (root / "datasets").mkdir()
    (root / "datasets" / "cats").symlink_to(outside)
    runtime = DockerRuntime(root, "n-escape", host=engine.host)
    launch = Launch(
        run="r-escape", job="j", node="n-escape", folder=RunFolder(root / "runs" / "r-escape"),
        argv=["true"], env={}, image=engine.busybox,
        mounts=[Mount(root / "runs" / "r-escape", "/mlsm/run", read_only=False),
                Mount(root / "datasets" / "cats", "/mlsm/dataset")],
    )  # fmt: skip
    with pytest.raises(StartFailed, match="outside the storage root") as refused:
        runtime.start(launch, runtime.prepare(launch))
    assert "no container was created" in str(refused.value)
    assert not containers(engine, mlsm_run="r-escape")


# Node rank 0 listens at the rendezvous its agent reserved; node rank 1 says hello
# there: the containers of a job on two nodes reach each other on the host's network.
# (busybox's `nc -l` quits when its stdin ends, which in a container is /dev/null at
# once, sometimes before the peer's bytes are read: a fifo held open keeps it going
# until the peer closes.)
MEET = (
    "host=${MLSM_RENDEZVOUS%:*}; port=${MLSM_RENDEZVOUS##*:}; "
    'if [ "$MLSM_NODE_RANK" = 0 ]; then mkfifo /tmp/in; '
    'nc -l -p "$port" < /tmp/in > $MLSM_OUTPUT_DIR/heard.txt & exec 3> /tmp/in; wait $!; '
    'else until echo "hello from node rank $MLSM_NODE_RANK of $MLSM_NUM_NODES" '
    '| nc "$host" "$port"; do sleep 0.1; done; fi'
)


@sqlite_only
def test_the_containers_of_a_job_on_two_nodes_meet_at_node_rank_0s_endpoint(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
    engine: Engine,
) -> None:
    for name in ("n1", "n2"):
        repo.write(f"nodes/{name}.yaml", node(name, "[docker]"))
    repo.commit("two nodes")
    client = start(str(repo.root), "--poll-interval", "600")
    wait_for(lambda: client.get("/api/v1/nodes/n2").status_code == 200)
    agents = {n: start_agent(client, n, issue_node_token(database_url, n), gpus=0,
                             DOCKER_HOST=engine.host, MLSM_AGENT_ADVERTISE_ADDRESS="127.0.0.1")
              for n in ("n1", "n2")}  # fmt: skip
    wait_for(lambda: ready(client, "n1") and ready(client, "n2"))
    repo.write("jobs/pair.yaml", job("pair", engine.busybox, MEET, extra="\n          nodes: 2"))
    repo.commit("a job on two nodes, in containers")

    wait_phase(client, "pair", "Succeeded", timeout=60)
    runs = runs_of(client, "pair")
    [zero] = [r for r in runs if r["rank"] == 0]
    assert zero["node"] == "n1", runs
    heard = agents["n1"].root / "jobs" / "pair" / "output" / "heard.txt"
    said = heard.read_text().strip() if heard.is_file() else f"nothing: {runs}"
    # 127.0.0.1 of another container on a bridge network would be that container's own
    logs = {r["rank"]: [line["text"] for line in client.get(f"/api/v1/runs/{r['id']}/logs")
                        .json()["lines"]] for r in runs}  # fmt: skip
    assert said == "hello from node rank 1 of 2", (logs, agents["n1"].output()[-3000:])
