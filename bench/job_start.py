"""From `git commit` to the job's process running on a node: a real controller, a
real `mlsm-agent` with its own storage root, and a local git repository.

    python bench/job_start.py [--repeat 10] [--database-url URL]

Each round commits a new TrainingJob whose first statement writes the wall-clock
time; the figure is that time minus the time just before `git commit`, so it holds
the commit, the sync, the scheduling pass, the long poll, the agent's start-up of
the run (its cached venv) and Python's own start. Two ways to learn of the commit:
the webhook (as from a git host) and the controller's watch of a local repository
(as under `mlsmctl up`). Target (issue 7): median under 2 s with the webhook; Argo CD
polls every 3 minutes by default.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret"
NODE = "apiVersion: mlsm/v1\nkind: Node\nmetadata: {name: n1}\nspec: {runtimes: [venv]}\n"
STAMP = "import time; open('started', 'w').write(repr(time.time()))"


def job(name: str) -> str:
    return (f"apiVersion: mlsm/v1\nkind: TrainingJob\nmetadata: {{name: {name}, owner: ada}}\n"
            f"spec:\n  runtime: {{venv: {{python: '3'}}}}\n"
            f"  command: [python, -c, {json.dumps(STAMP)}]\n"
            f"  resources: {{gpus: 0, cpu: 0.1}}\n")  # fmt: skip


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit("bench: timed out waiting; see the logs under the temp dir")
        time.sleep(0.005)


def bench(how: str, url: str | None, repeat: int, tmp: Path) -> list[float]:
    repo, storage = tmp / how / "repo", tmp / how / "storage"
    (repo / "nodes").mkdir(parents=True)
    (repo / "nodes" / "n1.yaml").write_text(NODE)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "node")
    database = url or f"sqlite:///{tmp / how / 'mlsm.db'}"
    port = free_port()
    flags = ["--no-watch", "--webhook-secret", SECRET] if how == "webhook" else []
    log = (tmp / how / "controller.log").open("wb")
    controller = subprocess.Popen(
        [sys.executable, "-m", "mlsm.controller", "run", "--repo", str(repo), "--database-url",
         database, "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp / how / "state"),
         "--poll-interval", "600", *flags],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    agent = None
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait(lambda: client.get("/api/v1/nodes/n1").status_code == 200)
        token = subprocess.run(
            [sys.executable, "-m", "mlsm.controller", "token", "issue", "--role", "node",
             "--node", "n1", "--database-url", database],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        (tmp / how / "token").write_text(token)
        (tmp / how / "gpus.json").write_text("[]")
        agent = subprocess.Popen(
            [sys.executable, "-m", "mlsm.agent", "run", "--controller", str(client.base_url),
             "--node", "n1", "--token-file", str(tmp / how / "token"), "--storage-root",
             str(storage), "--gpus-file", str(tmp / how / "gpus.json")],
            stdout=(tmp / how / "agent.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        times = []
        stamp = storage / "runs"
        for round in range(repeat + 1):  # round 0 builds the cached venv: not counted
            name = f"job-{round}"
            (repo / "jobs").mkdir(exist_ok=True)
            (repo / "jobs" / f"{name}.yaml").write_text(job(name))
            git(repo, "add", "-A")
            before = time.time()
            git(repo, "commit", "-qm", f"add {name}")
            if how == "webhook":
                body = json.dumps({"ref": "refs/heads/main"}).encode()
                signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                client.post("/api/v1/hooks/git", content=body,
                            headers={"X-Hub-Signature-256": f"sha256={signature}"})  # fmt: skip

            def started(name: str = name) -> bool:
                runs = client.get("/api/v1/runs", params={"job": name}).json()["items"]
                return bool(runs) and (stamp / runs[0]["id"] / "started").is_file()

            wait(started)
            runs = client.get("/api/v1/runs", params={"job": name}).json()["items"]
            at = float((stamp / runs[0]["id"] / "started").read_text())
            if round:
                times.append(at - before)
            wait(lambda n=name: client.get(f"/api/v1/jobs/{n}").json()["status"]["phase"]
                 == "Succeeded")  # fmt: skip
        return times
    finally:
        for process in (agent, controller):
            if process is not None:
                process.terminate()
                process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        for how in ("webhook", "watch"):
            times = bench(how, args.database_url, args.repeat, Path(name))
            median = statistics.median(times)
            print(f"commit -> job process started, {how:7s}: median {median:.3f} s  "
                  f"min {min(times):.3f}  max {max(times):.3f}  ({len(times)} jobs)")  # fmt: skip


if __name__ == "__main__":
    main()
