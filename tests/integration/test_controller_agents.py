"""The controller process with a simulated agent over loopback: a merged job is bound
to the agent's node and reaches it through the long poll; a finished run frees the
GPU for a waiting job; a silent node's run is lost and rebound to another node."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.databases import sqlite_only
from tests.integration.conftest import GitRepo, wait_for
from tests.integration.test_scheduling import manifest_job, manifest_node

CACHE = 2.0
INVENTORY = {"cpus": 8, "memory": 32 << 30, "runtimes": ["venv"], "gpus": [{"index": 0}]}


def token(database_url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mlsm.controller", "token", *args, "--database-url", database_url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def issue(database_url: str, node: str) -> str:
    return token(database_url, "issue", "--role", "node", "--node", node)


class Agent:
    def __init__(self, client: httpx.Client, node: str, token: str) -> None:
        self.client, self.node = client, node
        self.headers = {"Authorization": f"Bearer {token}"}
        self.revision = -1

    def beat(self, runs: list[str] | None = None) -> dict[str, Any]:
        response = self.try_beat(runs)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def try_beat(self, runs: list[str] | None = None) -> httpx.Response:
        return self.client.post(f"/api/v1/agent/nodes/{self.node}/heartbeat",
                                json={"inventory": INVENTORY, "runs": runs or []},
                                headers=self.headers)  # fmt: skip

    def assignments(self, wait: float = 10) -> list[dict[str, Any]]:
        response = self.client.get(f"/api/v1/agent/nodes/{self.node}/assignments",
                                   params={"revision": self.revision, "wait": wait},
                                   headers=self.headers, timeout=wait + 5)  # fmt: skip
        body = response.json()
        self.revision = body["assignmentRevision"]
        return list(body["runs"])

    def report(self, run: str, phase: str, **extra: Any) -> httpx.Response:
        return self.client.post(f"/api/v1/agent/nodes/{self.node}/runs/{run}/status",
                                json={"phase": phase, **extra}, headers=self.headers)  # fmt: skip


def serving_n1(start: Callable[..., httpx.Client], repo: GitRepo, *flags: str) -> httpx.Client:
    """A controller (flags added) following a repository that admits node n1."""
    repo.write("nodes/n1.yaml", manifest_node("n1", "a100"))
    repo.commit()
    client = start(str(repo.root), "--poll-interval", "600", *flags)
    wait_for(lambda: client.get("/api/v1/nodes/n1").status_code == 200)
    return client


def test_jobs_reach_agents_run_in_turn_and_move_off_a_lost_node(
    start: Callable[..., httpx.Client], repo: GitRepo, database_url: str
) -> None:
    repo.write("nodes/n1.yaml", manifest_node("n1", "a100"))
    repo.write("nodes/n2.yaml", manifest_node("n2", "a100"))
    repo.commit()
    client = start(str(repo.root), "--poll-interval", "600", "--node-grace", "1",
                   "--node-lost", "2")  # fmt: skip
    wait_for(lambda: client.get("/api/v1/nodes/n1").status_code == 200)
    n1 = Agent(client, "n1", issue(database_url, "n1"))
    n1.beat()
    assert n1.assignments(wait=0.2) == []

    repo.write("jobs/first.yaml", manifest_job("first", 1))
    repo.write("jobs/second.yaml", manifest_job("second", 1))
    repo.commit("Two one-GPU jobs")  # the watch syncs; the scheduler binds one
    started = time.monotonic()
    [run] = n1.assignments()
    assert time.monotonic() - started < 5
    second = "second" if run["job"] == "first" else "first"
    waiting = client.get(f"/api/v1/jobs/{second}").json()
    assert "0/2 nodes available" in waiting["status"]["conditions"][-1]["message"]

    assert n1.report(run["id"], "Running").status_code == 200
    node = client.get("/api/v1/nodes/n1").json()["status"]
    assert (node["gpus"], node["gpusUsed"]) == (1, 1)
    assert client.get(f"/api/v1/jobs/{run['job']}").json()["status"]["node"] == "n1"
    assert n1.report(run["id"], "Succeeded", exitCode=0).status_code == 200
    # (n1 beats while it waits: a loaded machine may take past the 1 s grace to get here)
    [next_run] = wait_for(lambda: (n1.beat() and n1.assignments(wait=1)) or None)
    assert next_run["job"] == second
    assert client.get(f"/api/v1/jobs/{run['job']}").json()["status"]["phase"] == "Succeeded"

    n2 = Agent(client, "n2", issue(database_url, "n2"))
    n2.beat()
    # n1 is silent from now on: lost after 2 s, and its run retried on n2
    [moved] = wait_for(lambda: (n2.beat() and n2.assignments(wait=1)) or None, timeout=20)
    assert moved["job"] == second
    assert moved["attempt"] == 2
    assert n1.beat(runs=[next_run["id"]])["stop"] == [next_run["id"]]  # back: told to stop
    assert n1.report(next_run["id"], "Running").status_code == 409


@sqlite_only  # the token queries run on PostgreSQL in test_agent_api.py
def test_a_token_works_on_its_first_request_and_stops_within_the_bound_once_revoked(
    start: Callable[..., httpx.Client], repo: GitRepo, database_url: str
) -> None:
    client = serving_n1(start, repo, "--token-cache", str(CACHE))
    Agent(client, "n1", issue(database_url, "n1")).beat()  # the token table is loaded now
    for _ in range(4):  # each issued by its own process while the controller runs
        secret = issue(database_url, "n1")
        agent = Agent(client, "n1", secret)
        agent.beat()  # (200 on the very first request)
        assert agent.assignments(wait=0) == []
    token(database_url, "revoke", secret)
    revoked = time.monotonic()
    assert wait_for(lambda: agent.try_beat().status_code == 401, timeout=CACHE + 5)
    assert time.monotonic() - revoked < CACHE + 1, "within --token-cache"
    assert agent.try_beat().json()["error"] == "invalid or revoked node token"


def test_a_merged_job_reaches_a_waiting_agent_by_wake_ups_not_by_periodic_reads(
    start: Callable[..., httpx.Client], repo: GitRepo, database_url: str
) -> None:
    # Every periodic path is 30 s or more: only the chain of wake-ups (watch -> sync ->
    # scheduling pass -> long poll) can bring the run in time.
    client = serving_n1(start, repo, "--schedule-interval", "30", "--recheck-interval", "30")
    n1 = Agent(client, "n1", issue(database_url, "n1"))
    n1.beat()
    assert n1.assignments(wait=0) == []
    # the pass that the node's first heartbeat starts has run (0.3 s for it to finish)
    wait_for(lambda: client.get("/api/v1/nodes/n1").json()["status"]["lastHeartbeatAt"])
    time.sleep(0.3)
    repo.write("jobs/first.yaml", manifest_job("first", 1))
    repo.commit("A job")
    started = time.monotonic()
    [run] = n1.assignments(wait=20)
    assert run["job"] == "first"
    assert time.monotonic() - started < 3
