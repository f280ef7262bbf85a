"""`mlsmctl up`: a whole installation on this machine: the controller on embedded
SQLite, following a local manifests repository (or directory), and one agent for
this machine's Node, each a process of its own, with their logs under the state dir.

Everything lives in the state dir (`.mlsm/up` by default): the database, the
agent's token and storage root, the logs. Ctrl-C stops the agent (and its runs),
then the controller; `mlsmctl up` again carries on from the same state.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mlsm import scores
from mlsm.errors import UserError
from mlsm.schemas.phases import JobPhase

__all__ = ["Installation", "LocalSettings"]


@dataclass
class LocalSettings:
    repo: Path
    node: str
    state_dir: Path
    port: int
    follow: str | None = None
    gpus_file: Path | None = None
    say: Callable[[str], None] = field(default=print)


def _node_manifest(name: str) -> str:
    return (f"apiVersion: mlsm/v1\nkind: Node\nmetadata:\n  name: {name}\n"
            f"spec:\n  runtimes: [venv, docker]\n")  # fmt: skip


class Installation:
    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.state = settings.state_dir.resolve()
        self.url = f"http://127.0.0.1:{settings.port}"
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.say = settings.say

    # starting --------------------------------------------------------------------

    def up(self) -> None:
        repo = self.settings.repo.resolve()
        if not repo.is_dir():
            raise UserError(f"--repo {self.settings.repo}: no such directory; give a "
                            "manifests repository (git, or a plain directory of YAML)")  # fmt: skip
        self.state.mkdir(parents=True, exist_ok=True)
        database = f"sqlite:///{self.state / 'mlsm.db'}"
        self.say(f"state:      {self.state} (database, logs, the node's storage)")
        self._start("controller", [
            sys.executable, "-m", "mlsm.controller", "run", "--repo", str(repo),
            "--database-url", database, "--state-dir", str(self.state / "controller"),
            "--listen", f"127.0.0.1:{self.settings.port}", "--poll-interval", "30",
        ])  # fmt: skip
        self._wait("the controller to answer", lambda: self._get("/healthz") is not None)
        self._wait("the first sync", self._synced, timeout=120)
        self.say(f"controller: {self.url}, following {repo} "
                 f"(log: {self.state / 'controller.log'})")  # fmt: skip
        self._check_node(repo)
        token = self._token(database)
        storage = self.state / "node"
        command = [
            sys.executable, "-m", "mlsm.agent", "run", "--controller", self.url,
            "--node", self.settings.node, "--token-file", str(token),
            "--storage-root", str(storage), "--stop-runs-on-exit",
        ]  # fmt: skip
        if self.settings.gpus_file is not None:
            command += ["--gpus-file", str(self.settings.gpus_file)]
        self._start("agent", command)
        self._wait(f"node {self.settings.node} to be Ready", self._ready, timeout=60)
        node = self._get(f"/api/v1/nodes/{self.settings.node}") or {}
        status = node.get("status", {})
        self.say(f"agent:      node {self.settings.node} Ready, {status.get('gpus', 0)} GPU(s), "
                 f"storage {storage} (log: {self.state / 'agent.log'})")  # fmt: skip
        runtimes = ", ".join(status.get("runtimes") or []) or "none"
        self.say(f"runtimes:   {runtimes}")
        for name, why in (status.get("runtimeProblems") or {}).items():
            self.say(f"            {name} not offered: {why}")
        self.say(f"site:       {self.url}/ (the status site: jobs, logs, charts, live)")
        self.say("ready. In another terminal: mlsmctl get jobs, mlsmctl describe job NAME, "
                 "mlsmctl logs job NAME -f. Ctrl-C here stops everything.")  # fmt: skip

    def _start(self, name: str, command: list[str]) -> None:
        log = (self.state / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches `up`, which stops them in order
        )  # fmt: skip
        self.processes.append((name, process))

    def _get(self, path: str, **params: Any) -> Any:
        try:
            response = self.http.get(path, params=params)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def _wait(self, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for name, process in self.processes:
                if process.poll() is not None:
                    raise UserError(f"the {name} exited while waiting for {what}; its log: "
                                    f"{self.state / (name + '.log')}:\n"
                                    f"{_tail(self.state / (name + '.log'))}")  # fmt: skip
            if time.monotonic() > deadline:
                raise UserError(f"timed out waiting for {what}; see the logs in {self.state}")
            time.sleep(0.1)

    def _synced(self) -> bool:
        state = self._get("/api/v1/sync")
        items = (state or {}).get("items", [])
        return any(i.get("status") in ("Synced", "Failed") for i in items)

    def _check_node(self, repo: Path) -> None:
        state = (self._get("/api/v1/sync") or {}).get("items", [{}])[0]
        if state.get("status") == "Failed":
            raise UserError(f"the controller cannot read {repo}: {state.get('error')}")
        if self._get(f"/api/v1/nodes/{self.settings.node}") is not None:
            return
        raise UserError(
            f"{repo} declares no Node '{self.settings.node}'. The controller admits only "
            f"nodes declared in git, and `mlsmctl up` runs this machine's agent as node "
            f"'{self.settings.node}'. Add nodes/{self.settings.node}.yaml:\n\n"
            f"{_node_manifest(self.settings.node)}\n"
            "and commit it, or pass --node NAME for a Node the repository declares."
        )

    def _token(self, database: str) -> Path:
        """The node's token: made once (shown to nobody; kept in the state dir, mode 600)
        and reused by the next `up`."""
        path = self.state / "agent.token"
        if path.is_file() and path.read_text().strip():
            return path
        done = subprocess.run(
            [sys.executable, "-m", "mlsm.controller", "token", "issue", "--role", "node",
             "--node", self.settings.node, "--database-url", database],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise UserError(f"cannot make the node's token: {done.stderr.strip()}")
        path.touch(mode=0o600)
        path.write_text(done.stdout.strip() + "\n")
        return path

    def _ready(self) -> bool:
        node = self._get(f"/api/v1/nodes/{self.settings.node}") or {}
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in node.get("status", {}).get("conditions", []))  # fmt: skip

    # watching ----------------------------------------------------------------------

    def watch(self) -> None:
        """Print each job's phase changes (with the reason a job waits), and the
        followed job's log lines, until Ctrl-C."""
        phases: dict[str, str] = {}
        after, run = -1, ""
        hinted = False
        while True:
            for name, process in self.processes:
                if process.poll() is not None:
                    raise UserError(f"the {name} stopped (exit {process.returncode}); its log: "
                                    f"{self.state / (name + '.log')}:\n"
                                    f"{_tail(self.state / (name + '.log'))}")  # fmt: skip
            jobs = (self._get("/api/v1/jobs", limit=1000) or {}).get("items", [])
            for job in jobs:
                name, status = job["metadata"]["name"], job["status"]
                said = f"{status.get('phase')}: {_why(status)}".rstrip(": ")
                if phases.get(name) != said:
                    phases[name] = said
                    self.say(f"job {name}: {said}")
            if self.settings.follow:
                after, run = self._follow(self.settings.follow, after, run)
                done = phases.get(self.settings.follow, "").split(":")[0]
                if done in JobPhase.finished_phases() and not hinted:
                    hinted = True
                    job = self.settings.follow
                    self.say(
                        f"job {job} {done.lower()}. Look at it with: mlsmctl describe job "
                        f"{job}; mlsmctl metrics job {job}; mlsmctl logs job {job}."
                    )
                    summary = self._scores(job, run) if run else ""
                    if summary:
                        self.say(summary)
                    if summary and done == JobPhase.SUCCEEDED:
                        self.say(f"  classify images with it: mlsmctl predict job {job} IMAGE...")
                    for step in self._next_steps():
                        self.say(step)
            time.sleep(0.5)

    def _scores(self, job: str, run: str) -> str:
        """The followed trainer job's result in a line: its best validation score and
        its test scores."""
        spec = ((self._get(f"/api/v1/jobs/{job}") or {}).get("spec") or {}).get("trainer")
        if not isinstance(spec, dict):
            return ""
        records = (self._get(f"/api/v1/runs/{run}/metrics") or {}).get("records", [])
        best = scores.best_score(spec, records)
        if best.value is None:
            return f"  no val {best.metric} was recorded"
        tested = {r.get("name"): r.get("value") for r in records if r.get("split") == "test"}
        test = f"; test {best.metric} {tested[best.metric]:.4f}" if best.metric in tested else ""
        epoch = f" at epoch {best.epoch:g}" if best.epoch is not None else ""
        return f"  best val {best.metric} {best.value:.4f}{epoch}{test}"

    def _next_steps(self) -> list[str]:
        repo = self.settings.repo.resolve()
        return [
            "next:",
            f"  1. open the site: {self.url}/",
            f"  2. commit a job into {repo}: it starts within a second (mlsmctl get jobs)",
            "  3. a pull request: copy deploy/manifest-repo/ (in mlsm's repository) into a "
            "new repository; its CI comments each pull request's plan",
            "The installation keeps running; Ctrl-C stops it.",
        ]

    def _follow(self, job: str, after: int, run: str) -> tuple[int, str]:
        runs = (self._get("/api/v1/runs", job=job, limit=1) or {}).get("items", [])
        if not runs:
            return after, run
        if runs[0]["id"] != run:
            after, run = -1, runs[0]["id"]
            self.say(f"--- {job}, run {run[:8]} on {runs[0]['node']} ---")
        page = self._get(f"/api/v1/runs/{run}/logs", after=after, limit=1000) or {}
        for line in page.get("lines", []):
            self.say(f"  {line['text']}")
        return page.get("next", after), run

    # stopping ----------------------------------------------------------------------

    def down(self) -> None:
        """The agent first (it stops its runs), then the controller."""
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self.say(f"{name} stopped")
        self.http.close()


def _why(status: dict[str, Any]) -> str:
    for condition in reversed(status.get("conditions", [])):
        if condition.get("type") == "Scheduled" and condition.get("status") == "False":
            return str(condition.get("message", ""))
    return ""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
