"""Jobs on several nodes, with real agents: two `mlsm-agent` processes on this
machine (separate storage roots and node names, both on loopback) run a 2-node ×
2-process job under torchrun's c10d rendezvous at the endpoint node rank 0's agent
reserved. The built-in trainer trains end to end (one checkpoint, by rank 0; each
process's log one `--rank` away); `kill -9` of one agent mid-job stops the other's
ranks and retries the job as attempt 2; a peer that never comes ends the run
RendezvousTimeout, whichever rank waits."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mlsm.training.demo import write_digits
from tests.databases import sqlite_only
from tests.integration.conftest import (
    AgentProcess,
    GitRepo,
    issue_node_token,
    ready,
    runs_of,
    wait_for,
    wait_phase,
)
from tests.integration.test_agents import cli, get_job

PYTHON = ".".join(map(str, sys.version_info[:2]))


def labelled(name: str, labels: str) -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: Node
        metadata: {{name: {name}, labels: {{{labels}}}}}
        spec: {{runtimes: [venv]}}
    """


def two_agents(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
    *flags: str,
    gpus: int = 0,
) -> tuple[httpx.Client, dict[str, AgentProcess], dict[str, str]]:
    for name in ("n1", "n2"):
        repo.write(f"nodes/{name}.yaml", labelled(name, "pair: 'yes'"))
    repo.commit("two nodes")
    client = start(str(repo.root), "--poll-interval", "600", *flags)
    wait_for(lambda: all(client.get(f"/api/v1/nodes/{n}").status_code == 200 for n in ("n1", "n2")))
    tokens = {n: issue_node_token(database_url, n) for n in ("n1", "n2")}
    agents = {n: start_agent(client, n, tokens[n], gpus=gpus,
                             MLSM_AGENT_ADVERTISE_ADDRESS="127.0.0.1") for n in tokens}  # fmt: skip
    wait_for(lambda: all(ready(client, n) for n in tokens))
    return client, agents, tokens


TRAINER = f"""
    apiVersion: mlsm/v1
    kind: TrainingJob
    metadata: {{name: vit-2x2, owner: ada}}
    spec:
      runtime: {{venv: {{python: "{PYTHON}"}}}}
      nodes: 2
      trainer:
        model: builtin:vit-tiny
        pretrained: false
        epochs: 1
        batchSize: 64
        learningRate: 0.002
        numWorkers: 0
        monitor: {{metric: accuracy}}
      dataset: digits
      resources: {{gpus: 2, cpu: 0.5}}
"""

DATASET = """
    apiVersion: mlsm/v1
    kind: Dataset
    metadata: {name: digits}
    spec:
      format: imagefolder
      locations: [{node: n1, path: datasets/digits}, {node: n2, path: datasets/digits}]
"""


@sqlite_only
def test_a_two_node_two_gpu_trainer_job_trains_as_four_ranks(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    """Two GPUs on each node (a fake GPU list; the ranks meet over gloo, no CUDA
    here): the trainer runs one process per GPU under torchrun, each seeing only its
    own GPU by its LOCAL_RANK, four ranks over two nodes."""
    client, agents, _ = two_agents(start, start_agent, repo, database_url, gpus=2)
    for agent in agents.values():
        write_digits(agent.root / "datasets" / "digits")
    repo.write("datasets/digits.yaml", DATASET)
    repo.write("jobs/vit-2x2.yaml", TRAINER)
    repo.commit("the trainer on two nodes, two processes each")

    wait_phase(client, "vit-2x2", "Succeeded", timeout=240)
    runs = sorted(runs_of(client, "vit-2x2"), key=lambda r: r["rank"])
    assert [(r["attempt"], r["rank"], r["phase"], r["gpus"]) for r in runs] == [
        (1, 0, "Succeeded", [0, 1]), (1, 1, "Succeeded", [0, 1]),
    ]  # fmt: skip
    for agent, run in zip(agents.values(), runs, strict=True):
        assert (agent.root / "runs" / run["id"] / "ranks").is_dir(), "each rank's own file"
    host, port = runs[0]["rendezvous"].rsplit(":", 1)
    assert host == "127.0.0.1", "node rank 0's advertise address"
    assert int(port) > 0, "and the port its agent reserved"
    assert sorted(k for r in runs for k in r["ranks"]) == [0, 1, 2, 3]
    for run in runs:
        assert len(run["ranks"]) == 2, "each node hosts two processes"

    # one checkpoint, written by rank 0 wherever it ran
    best = [
        a.root / "jobs" / "vit-2x2" / "output" / "checkpoints" / "best" for a in agents.values()
    ]
    assert sum((b / "model.safetensors").is_file() for b in best) == 1
    [zero] = [r for r in runs if 0 in r["ranks"]]
    records = client.get(f"/api/v1/runs/{zero['id']}/metrics").json()["records"]
    losses = [r for r in records if r["split"] == "train" and r["name"] == "loss"]
    assert losses, "the loss, reduced over all four ranks, is logged"
    assert len([r for r in records if r["split"] == "val" and r["name"] == "accuracy"]) == 1

    for rank in range(4):
        log = cli(client, "logs", "job", "vit-2x2", "--rank", str(rank))
        local = rank % 2  # (whichever node torchrun numbered first)
        assert f"rank {rank} of 4 (local {local}): cpu, CUDA_VISIBLE_DEVICES={local}" in log
        others = [k for k in range(4) if k != rank]
        assert not any(f"[rank{k}]: " in log for k in others), "one process's lines"
    default = cli(client, "logs", "job", "vit-2x2")
    assert "[rank0]: rank 0 of 4" in default
    assert "epoch 1/1" in default
    assert "rank 1 of 4" not in default
    page = cli(client, "describe", "job", "vit-2x2")
    site = client.get("/jobs/vit-2x2").text  # the status site's job page
    assert f"run <code>{zero['id'][:8]}</code> on {zero['node']}" in site, "rank 0's run"
    assert "(0,1)" in site
    assert "(2,3)" in site
    [header] = [line for line in page.splitlines() if "PROCESSES" in line]
    assert header.split()[:4] == ["ID", "ATTEMPT", "RANK", "PROCESSES"]
    assert sum(("0-1" in line or "2-3" in line) and "Succeeded" in line
               for line in page.splitlines()) == 2, page  # fmt: skip


# Every process meets the others (gloo), says so, and on a first attempt sleeps until
# stopped; on a later one (the marker is on every node) it finishes.
MEET = (
    "import os, pathlib, time, torch, torch.distributed as dist; "
    "dist.init_process_group('gloo'); t = torch.ones(1); dist.all_reduce(t); "
    "rank, world = dist.get_rank(), dist.get_world_size(); "
    "print(f'rank {rank} of {world} met {int(t)}', flush=True); "
    "mark = pathlib.Path(os.environ['MLSM_OUTPUT_DIR']) / 'attempted'; again = mark.exists(); "
    "dist.barrier(); "
    "os.environ['LOCAL_RANK'] == '0' and mark.touch(); "
    "again or time.sleep(600); "
    "dist.barrier(); print(f'rank {rank} done', flush=True)"
)


def meeting_job(name: str, selector: str = "pair: 'yes'", processes: int = 1) -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: TrainingJob
        metadata: {{name: {name}, owner: ada}}
        spec:
          runtime: {{venv: {{python: "{PYTHON}"}}}}
          nodes: 2
          processesPerNode: {processes}
          launcher: torchrun
          nodeSelector: {{{selector}}}
          command: [python, -c, {json.dumps(MEET)}]
          resources: {{gpus: 0, cpu: 0.1}}
          retries: 0
    """


def working_in(folder: Path) -> list[int]:
    """Live processes whose working directory is `folder` (a run's ranks)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state != "Z":
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


@sqlite_only
def test_kill_9_of_one_agent_stops_the_other_ranks_and_retries_as_attempt_2(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    client, agents, tokens = two_agents(
        start, start_agent, repo, database_url, "--node-grace", "1.5", "--node-lost", "3"
    )
    repo.write("jobs/meet.yaml", meeting_job("meet"))
    repo.commit("a job that meets on two nodes")

    def met() -> bool:
        runs = runs_of(client, "meet")
        return len(runs) == 2 and all(r["ranks"] for r in runs)

    wait_for(met, timeout=90)
    assert get_job(client, "meet")["status"]["phase"] == "Running"
    log = "".join(cli(client, "logs", "job", "meet", "--rank", str(k)) for k in range(2))
    for rank in range(2):
        assert f"rank {rank} of 2 met 2" in log

    folders = {
        r["rank"]: agents[r["node"]].root / "runs" / r["id"] for r in runs_of(client, "meet")
    }
    assert all(working_in(folder) for folder in folders.values()), "both ranks' processes"

    agents["n2"].process.send_signal(signal.SIGKILL)  # the node is gone, mid-job
    agents["n2"].process.wait(5)
    wait_for(lambda: get_job(client, "meet")["status"]["phase"] == "Pending", timeout=30)
    first = {r["rank"]: r for r in runs_of(client, "meet") if r["attempt"] == 1}
    assert (first[1]["phase"], first[1]["reason"]) == ("Lost", "NodeLost")
    assert (first[0]["phase"], first[0]["reason"]) == ("Cancelled", "SiblingFailed")
    wait_for(lambda: not working_in(folders[0]), timeout=20)  # n1's ranks really stopped
    page = cli(client, "describe", "job", "meet")
    assert "attempt 1 lost with node n2" in page

    # n2 comes back: its stale copy is stopped, and attempt 2 runs on both nodes
    start_agent(client, "n2", tokens["n2"], gpus=0, again=agents["n2"],
                MLSM_AGENT_ADVERTISE_ADDRESS="127.0.0.1")  # fmt: skip
    wait_phase(client, "meet", "Succeeded", timeout=90)
    wait_for(lambda: not working_in(folders[1]), timeout=20)  # the stale copy, stopped
    runs = runs_of(client, "meet")
    assert sorted((r["attempt"], r["rank"]) for r in runs) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert not [r for r in runs if r["phase"] in ("Scheduled", "Starting", "Running")]
    assert all(r["phase"] == "Succeeded" for r in runs if r["attempt"] == 2)
    assert "rank 1 done" in "".join(
        cli(client, "logs", "job", "meet", "--rank", str(k)) for k in range(2)
    )


@pytest.fixture
def silent_peers() -> Iterator[Callable[[httpx.Client, dict[str, str]], None]]:
    """Nodes that heartbeat and never start anything: a peer that never comes."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def beat(client: httpx.Client, tokens: dict[str, str]) -> None:
        def loop() -> None:
            with httpx.Client(base_url=client.base_url, timeout=5) as own:
                while not stop.is_set():
                    for node, token in tokens.items():
                        own.post(f"/api/v1/agent/nodes/{node}/heartbeat",
                                 headers={"Authorization": f"Bearer {token}"},
                                 json={"inventory": {"cpus": 4, "gpus": [], "runtimes": ["venv"]},
                                       "runs": []})  # fmt: skip
                    stop.wait(0.3)

        threads.append(threading.Thread(target=loop, daemon=True))
        threads[-1].start()

    yield beat
    stop.set()
    for thread in threads:
        thread.join(5)


@sqlite_only
def test_a_peer_that_never_comes_ends_the_run_rendezvous_timeout(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    silent_peers: Callable[[httpx.Client, dict[str, str]], None],
    repo: GitRepo,
    database_url: str,
) -> None:
    """`late` lands on n1 (node rank 0: torchrun's c10d rendezvous gives up) and z9;
    `early` on a0 (node rank 0, never reports an endpoint) and n1 (node rank 1: its
    agent gives up waiting for one)."""
    repo.write("nodes/n1.yaml", labelled("n1", "late: 'yes', early: 'yes'"))
    repo.write("nodes/a0.yaml", labelled("a0", "early: 'yes'"))
    repo.write("nodes/z9.yaml", labelled("z9", "late: 'yes'"))
    repo.commit("one real node, two silent ones")
    client = start(str(repo.root), "--poll-interval", "600")
    wait_for(lambda: client.get("/api/v1/nodes/z9").status_code == 200)
    silent_peers(client, {n: issue_node_token(database_url, n) for n in ("a0", "z9")})
    start_agent(client, "n1", issue_node_token(database_url, "n1"), gpus=0,
                MLSM_AGENT_ADVERTISE_ADDRESS="127.0.0.1",
                MLSM_AGENT_RENDEZVOUS_TIMEOUT="4")  # fmt: skip
    wait_for(lambda: all(ready(client, n) for n in ("n1", "a0", "z9")))
    repo.write("jobs/late.yaml", meeting_job("late", "late: 'yes'"))
    repo.write("jobs/early.yaml", meeting_job("early", "early: 'yes'"))
    repo.commit("two jobs whose peer never comes")

    wait_phase(client, "late", "Failed", timeout=90)
    wait_phase(client, "early", "Failed", timeout=90)
    for name in ("late", "early"):
        runs = runs_of(client, name)
        assert not [r for r in runs if r["phase"] in ("Scheduled", "Starting", "Running")]
        [mine] = [r for r in runs if r["node"] == "n1"]
        assert mine["reason"] == "RendezvousTimeout"
        assert "never" in mine["message"], mine["message"]
        assert "4s" in mine["message"]
        page = cli(client, "describe", "job", name)
        assert "RendezvousTimeout" in page, page
