"""Two controller processes on one real PostgreSQL database: one leads (sync,
scheduling, leases), both serve; `kill -9` of the leader while a job is bound and its
log flows hands leadership over within 10 s, nothing is bound twice, no log line is
lost or repeated, the job runs on, and its agent moves to the survivor. A stopped
leader is replaced once its lease lapses, and writes nothing when it wakes. On
SQLite a second controller refuses to start."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from tests.databases import postgres_only, sqlite_only
from tests.integration.conftest import (
    GitRepo,
    controller_bin,
    free_port,
    issue_node_token,
    node,
    phase,
    ready,
    runs_of,
    wait_for,
    wait_phase,
)

COUNTING = """
    apiVersion: mlsm/v1
    kind: TrainingJob
    metadata: {{name: {name}, owner: ada}}
    spec:
      runtime: {{venv: {{python: "3"}}}}
      command: [python, -u, -c, "{program}"]
      resources: {{gpus: 1}}
"""
PROGRAM = "import time\\nfor i in range({lines}): print('line', i); time.sleep(0.02)"


def counting(name: str, lines: int) -> str:
    """A job that prints `lines` numbered lines, 50 a second."""
    return COUNTING.format(name=name, program=PROGRAM.format(lines=lines))


def leading(client: httpx.Client) -> bool:
    try:
        return bool(client.get("/healthz").json()["leader"]["leading"])
    except (httpx.HTTPError, KeyError, ValueError):
        return False


def lines_of(client: httpx.Client, job: str) -> list[str]:
    (run,) = runs_of(client, job)
    texts: list[str] = []
    after = -1
    while True:
        page = client.get(f"/api/v1/runs/{run['id']}/logs",
                          params={"after": after, "limit": 1000}).json()  # fmt: skip
        texts += [line["text"] for line in page["lines"]]
        after = page["next"]
        if len(page["lines"]) < 1000:
            return texts


def two(
    start: Callable[..., httpx.Client], repo: GitRepo, tmp_path: Path, *flags: str
) -> tuple[httpx.Client, httpx.Client]:
    """Controllers A and B on the test's database, A started first (it leads)."""
    first = start(str(repo.root), "--poll-interval", "0.5", "--node-grace", "5",
                  "--state-dir", str(tmp_path / "a"), *flags)  # fmt: skip
    wait_for(lambda: leading(first))
    second = start(str(repo.root), "--poll-interval", "0.5", "--node-grace", "5",
                   "--state-dir", str(tmp_path / "b"), *flags)  # fmt: skip
    return first, second


@postgres_only
def test_kill_9_of_the_leader_hands_over_within_10_s_and_loses_nothing(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., Any],
    repo: GitRepo,
    tmp_path: Path,
    database_url: str,
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1", gpus=2))
    repo.write("jobs/count.yaml", counting("count", 500))
    repo.commit("A node and a job that logs for 10 s")
    a, b = two(start, repo, tmp_path)
    assert not leading(b)  # a follower serves, and does not lead
    assert "mlsm_leader 1.0" in a.get("/metrics").text
    assert "mlsm_leader 0.0" in b.get("/metrics").text
    token = issue_node_token(database_url, "gpu-1")
    agent = start_agent(a, "gpu-1", token, gpus=2, controller=f"{a.base_url},{b.base_url}")
    wait_phase(a, "count", "Running", timeout=60)
    wait_for(lambda: len(lines_of(b, "count")) > 20, timeout=30)  # shipped through A, read on B

    a.process.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
    killed = time.monotonic()
    wait_for(lambda: leading(b), timeout=15)
    took = time.monotonic() - killed
    assert took < 10, f"B led {took:.1f} s after the leader was killed"

    repo.write("jobs/after.yaml", counting("after", 5))
    repo.commit("A job merged after the failover")
    wait_phase(b, "count", "Succeeded", timeout=60)  # ran on, its agent now reports to B
    wait_phase(b, "after", "Succeeded", timeout=60)  # bound by the new leader
    assert lines_of(b, "count") == [f"line {i}" for i in range(500)]  # none lost or repeated
    assert [r["attempt"] for r in runs_of(b, "count")] == [1]  # bound once
    assert len(runs_of(b, "after")) == 1
    assert ready(b, "gpu-1")
    assert "moving to the controller at" in agent.output()
    both = f"{a.base_url},{b.base_url}".replace("/,", ",")
    listed = subprocess.run([sys.executable, "-m", "mlsm.cli", "get", "jobs", "--server", both],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr  # A is dead: mlsmctl asks B
    assert "count" in listed.stdout


@postgres_only
def test_a_stopped_leader_is_replaced_and_writes_nothing_when_it_wakes(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., Any],
    repo: GitRepo,
    tmp_path: Path,
    database_url: str,
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1", gpus=1))
    repo.commit("A node")
    a, b = two(start, repo, tmp_path)
    start_agent(b, "gpu-1", issue_node_token(database_url, "gpu-1"), controller=str(b.base_url))
    wait_for(lambda: ready(b, "gpu-1"), timeout=30)
    a.process.send_signal(signal.SIGSTOP)  # type: ignore[attr-defined]
    try:
        stopped = time.monotonic()
        wait_for(lambda: leading(b), timeout=30)  # once A's lease (6 s) lapsed
        assert time.monotonic() - stopped > 4  # not before: A might only be slow
        repo.write("jobs/one.yaml", counting("one", 3))
        repo.commit("A job while the old leader sleeps")
        wait_phase(b, "one", "Succeeded", timeout=60)
    finally:
        a.process.send_signal(signal.SIGCONT)  # type: ignore[attr-defined]
    wait_for(lambda: not leading(a), timeout=15)  # it wakes, finds its term over
    time.sleep(2)  # room for a stale pass to write, if it could
    assert len(runs_of(b, "one")) == 1
    assert leading(b)
    assert phase(b, "one") == "Succeeded"


@sqlite_only
def test_a_second_controller_on_one_sqlite_database_refuses_and_says_why(
    start: Callable[..., httpx.Client], repo: GitRepo, tmp_path: Path, database_url: str
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1"))
    repo.commit()
    start(str(repo.root))
    second = subprocess.run(
        [*controller_bin(), "run", "--repo", str(repo.root), "--listen",
         f"127.0.0.1:{free_port()}", "--database-url", database_url,
         "--state-dir", str(tmp_path / "second")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert re.search(r"another controller \(pid \d+ on [^)]+\) already runs on the SQLite "
                     r"database mlsm\.db: ", line), line  # fmt: skip
    assert "SQLite serves one controller. For two, give both the same PostgreSQL" in line


@postgres_only
def test_a_binding_and_a_log_line_through_one_wake_waiters_on_the_other_at_once(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., Any],
    repo: GitRepo,
    tmp_path: Path,
    database_url: str,
) -> None:
    """With the database re-read only every 30 s, what one controller writes still
    wakes the other's waiters at once: its messages on the `mlsm` channel."""
    repo.write("nodes/gpu-1.yaml", node("gpu-1", gpus=1))
    repo.commit("A node")
    a, b = two(start, repo, tmp_path, "--recheck-interval", "30")
    start_agent(b, "gpu-1", issue_node_token(database_url, "gpu-1"), controller=str(b.base_url))
    wait_for(lambda: ready(a, "gpu-1"), timeout=30)
    time.sleep(1)  # the agent's long poll on B is waiting now

    repo.write("jobs/count.yaml", counting("count", 300))
    committed = time.monotonic()
    repo.commit("A job")
    wait_phase(a, "count", "Running", timeout=25)  # bound by A, heard by the agent on B
    assert time.monotonic() - committed < 10, "the agent heard of its run only by polling"

    (run,) = runs_of(a, "count")
    logs = f"/api/v1/runs/{run['id']}/logs"
    after = a.get(logs, params={"tail": 0}).json()["next"]
    asked = time.monotonic()
    page = a.get(logs, params={"after": after, "wait": 25}, timeout=40).json()
    assert page["lines"], page  # shipped through B, a follower of the log on A woke
    assert time.monotonic() - asked < 5


class Cuttable:
    """A TCP proxy to PostgreSQL whose connections can be cut, as a network would:
    what goes through it stops, and the server sees its clients go."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    def cut(self) -> None:
        self.open = False
        for held in self.sockets:
            with contextlib.suppress(OSError):
                held.shutdown(socket.SHUT_RDWR)
                held.close()


def log_time(log: Path, fragment: str) -> dt.datetime:
    for line in log.read_text().splitlines():
        if fragment in line:
            return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    raise AssertionError(f"{fragment!r} not in {log}")


@postgres_only
def test_a_leader_cut_off_from_the_database_stops_before_another_starts(
    start: Callable[..., httpx.Client], repo: GitRepo, tmp_path: Path, database_url: str
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1"))
    repo.commit()
    url = make_url(database_url)
    proxy = Cuttable(int(url.port or 5432))
    through = url.set(port=proxy.port).render_as_string(hide_password=False)
    a = start(str(repo.root), "--database-url", through, "--state-dir", str(tmp_path / "a"))
    wait_for(lambda: leading(a))
    b = start(str(repo.root), "--state-dir", str(tmp_path / "b"))
    proxy.cut()
    wait_for(lambda: leading(b), timeout=20)
    wait_for(lambda: not leading(a), timeout=10)
    logs = {c.base_url.port: tmp_path / f"controller-{c.base_url.port}.log" for c in (a, b)}
    stopped = log_time(logs[a.base_url.port], "no longer leading (term 1)")
    started = log_time(logs[b.base_url.port], "leading (term 2")
    assert stopped < started, (stopped, started)
