"""How fast the controller turns git commits into API-visible state, on SQLite and
PostgreSQL.

    python bench/sync.py [--count 10000] [--repeat 5] [--databases sqlite,postgresql]

In process, over a repository of N manifests (bench/validate_manifests.py's
generator): the first sync (N creates); a no-op sync of the same commit (skipped by
its sha); a no-op sync of a new commit that changes no manifest (a README), which
loads, plans and writes nothing; a commit that changes 100 manifests.

As a real `mlsm-controller` process on loopback: git commit -> the change visible
through the API, woken by the webhook, by polling (1 s interval: on average half
of it), and by the watch on a local repository. Median of --repeat.

Targets (issue 5): commit -> visible under 1 s with the webhook; a no-op sync of
10,000 objects under 1 s. For scale, Argo CD polls every 3 minutes by default.
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
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from validate_manifests import generate  # noqa: E402

from mlsm.controller.sources import open_source  # noqa: E402
from mlsm.controller.syncing import Syncer  # noqa: E402
from mlsm.store import Store  # noqa: E402
from tests import postgres  # noqa: E402

SECRET = "bench"
ENV = {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@lab.org",
       "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@lab.org"}  # fmt: skip


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=ENV, capture_output=True)


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def fresh_database(kind: str, tmp: Path, server: str | None, label: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / f'{label}.db'}"
    import sqlalchemy

    assert server is not None
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE bench_{label}")
    admin.dispose()
    return server.rsplit("/", 1)[0] + f"/bench_{label}"


def bench_syncs(url: str, count: int, tmp: Path) -> list[tuple[str, float]]:
    repo = tmp / f"repo-{hashlib.sha256(url.encode()).hexdigest()[:6]}"
    generate(repo, count)
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "initial")
    store = Store.open(url)
    store.migrate()
    syncer = Syncer(store, open_source(str(repo), state_dir=tmp / "state"), allow_mass_prune=True)
    rows = [(f"first sync ({count} creates)", timed(syncer.sync))]
    rows.append(("no-op sync, same commit", timed(syncer.sync)))
    (repo / "README.md").write_text("not a manifest\n")
    commit(repo, "docs")
    rows.append((f"no-op sync, new commit, {count} objects", timed(syncer.sync)))
    jobs = sorted((repo / "jobs").glob("*.yaml"))[:100]
    for path in jobs:
        path.write_text(path.read_text().replace("epochs: 3", "epochs: 4"))
    commit(repo, "100 changes")
    rows.append((f"sync changing 100 of {count}", timed(syncer.sync)))
    store.dispose()
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_latency(url: str, tmp: Path, repeat: int, how: str) -> float:
    """Median seconds from `git commit` returning to the API showing the change."""
    repo = tmp / f"latency-{how}-{hashlib.sha256(url.encode()).hexdigest()[:6]}"
    generate(repo, 100)
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "initial")
    port = free_port()
    flags = {"webhook": ["--poll-interval", "600", "--no-watch", "--webhook-secret", SECRET],
             "poll": ["--poll-interval", "1", "--no-watch"],
             "watch": ["--poll-interval", "600"]}[how]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "mlsm.controller", "run", "--repo", str(repo), "--database-url",
         url, "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp / "state"), *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    try:
        _wait(lambda: client.get("/api/v1/jobs/job-0").status_code == 200)
        times = []
        for attempt in range(repeat):
            path = repo / "jobs" / "job-0.yaml"
            text = path.read_text()
            epochs = text.split("epochs: ", 1)[1].split("\n", 1)[0]
            path.write_text(text.replace(f"epochs: {epochs}", f"epochs: {int(epochs) + 1}", 1))
            git(repo, "add", "-A")
            start = time.perf_counter()
            git(repo, "commit", "-q", "-m", f"change {attempt}")
            if how == "webhook":
                body = json.dumps({"ref": "refs/heads/main"}).encode()
                signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                client.post("/api/v1/hooks/git", content=body,
                            headers={"X-Hub-Signature-256": f"sha256={signature}"})  # fmt: skip
            _wait(lambda a=attempt: client.get("/api/v1/jobs/job-0").json()["metadata"]
                  ["generation"] == a + 2)  # fmt: skip
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        process.terminate()
        process.wait(10)


def _wait(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("bench: timed out waiting for the controller")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    kinds = args.databases.split(",")
    cluster = postgres.Cluster.start() if "postgresql" in kinds else None
    try:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            for kind in kinds:
                server = cluster.url if cluster else None
                print(f"{kind}:")
                url = fresh_database(kind, tmp, server, "syncs")
                for label, seconds in bench_syncs(url, args.count, tmp):
                    print(f"  {label:40s} {seconds:7.3f} s")
                for how in ("webhook", "poll", "watch"):
                    url = fresh_database(kind, tmp, server, f"latency_{how}")
                    seconds = bench_latency(url, tmp, args.repeat, how)
                    print(f"  {'commit -> visible, ' + how:40s} {seconds:7.3f} s  "
                          f"(median of {args.repeat})")  # fmt: skip
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
