"""Heavy reads against a real controller process: do heartbeats, the lease check and
`/healthz` keep their pace while 200 clients list 5,000 jobs?

    python bench/read_load.py [--jobs 5000] [--clients 200] [--database sqlite|postgresql]

A manifests repository with one Node and `--jobs` TrainingJobs (Pending: they ask for
a GPU the node lacks) is synced; a node heartbeats every second (as an agent, with
its token) and `/healthz` is asked every 0.5 s, both timed, while `--clients`
clients at once each list every job as `mlsmctl get jobs -o json` does (pages of
1,000). Before issue 14: listings p50 126 s, `/healthz` 22-34 s, and the node went
NotReady for two minutes. Targets: heartbeat p99 under 100 ms, `/healthz` under 1 s,
no NotReady.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import SECRET, Harness, databases, git, wait

from mlsm.store import Event, Store

JOB = """apiVersion: mlsm/v1
kind: TrainingJob
metadata: {{name: job-{i}, owner: user-{owner}, labels: {{project: p{project}}}}}
spec:
  runtime: {{venv: {{python: "3.11"}}}}
  command: [python, train.py, --seed, "{i}"]
  resources: {{gpus: 1, cpu: 1}}
"""
CONTINUE = re.compile(rb'"continue":(null|"(\d+)")\}$')
BEAT = {"inventory": {"cpus": 2, "memory": 1 << 33, "runtimes": ["venv"], "gpus": []}}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def list_all(client: httpx.AsyncClient) -> float:
    """Every job, page by page, as `mlsmctl get jobs -o json`; the seconds it took."""
    started = time.monotonic()
    cursor = ""
    while True:
        response = await client.get("/api/v1/jobs", params={"limit": 1000, "continue": cursor})
        response.raise_for_status()
        found = CONTINUE.search(response.content)
        assert found, response.content[-200:]
        if found[1] == b"null":
            return time.monotonic() - started
        cursor = found[2].decode()


async def timed(client: httpx.AsyncClient, method: str, path: str, **kwargs: object) -> float:
    started = time.monotonic()
    response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
    response.raise_for_status()
    return time.monotonic() - started


async def load(url: str, token: str, clients: int) -> dict[str, list[float]]:
    beats: list[float] = []
    health: list[float] = []
    listings: list[float] = []
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def heartbeat() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            while not done.is_set():
                beats.append(await timed(http, "POST", "/api/v1/agent/nodes/n1/heartbeat",
                                         json=BEAT, headers=headers))  # fmt: skip
                await asyncio.sleep(1.0)

        async def healthz() -> None:
            while not done.is_set():
                health.append(await timed(http, "GET", "/healthz"))
                await asyncio.sleep(0.5)

        async def lister() -> None:
            listings.append(await list_all(http))

        side = [asyncio.create_task(heartbeat()), asyncio.create_task(healthz())]
        await asyncio.sleep(3)  # a few beats before the load
        await asyncio.gather(*(lister() for _ in range(clients)))
        await asyncio.sleep(2)
        done.set()
        await asyncio.gather(*side)
    return {"beats": beats, "health": health, "listings": listings}


def not_ready_events(database: str, since: float) -> int:
    store = Store.open(database)
    try:
        with store.read() as session:
            rows = session.query(Event).filter(Event.kind == "Node", Event.name == "n1").all()
            return sum(1 for e in rows if "NotReady" in e.reason and e.at.timestamp() >= since)
    finally:
        store.dispose()


def run(kind: str, database: str, tmp: Path, jobs: int, clients: int) -> None:
    with Harness(tmp, database_url=database, agent=False) as h:
        (h.repo / "jobs").mkdir()
        for i in range(jobs):
            text = JOB.format(i=i, owner=i % 17, project=i % 5)
            (h.repo / "jobs" / f"job-{i}.yaml").write_text(text)
        git(h.repo, "add", "-A")
        git(h.repo, "commit", "-qm", f"{jobs} jobs")
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        h.client.post("/api/v1/hooks/git", content=body,
                      headers={"X-Hub-Signature-256": f"sha256={signature}"})  # fmt: skip
        wait(lambda: h.client.get("/api/v1/sync").json()["items"][0]["objects"] == jobs + 1)
        token = subprocess.run(
            [sys.executable, "-m", "mlsm.controller", "token", "issue", "--role", "node",
             "--node", "n1", "--database-url", database],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        since = time.time()
        started = time.monotonic()
        figures = asyncio.run(load(str(h.client.base_url), token, clients))
        elapsed = time.monotonic() - started
        beats, health, listings = figures["beats"], figures["health"], figures["listings"]
        print(f"{kind}: {clients} clients each listing {jobs} jobs, in {elapsed:.0f} s")
        print(f"  listing      p50 {statistics.median(listings):6.1f} s   "
              f"max {max(listings):6.1f} s")  # fmt: skip
        print(f"  heartbeat    p50 {statistics.median(beats) * 1000:6.1f} ms  "
              f"p99 {percentile(beats, 0.99) * 1000:6.1f} ms  max {max(beats) * 1000:6.1f} ms  "
              f"({len(beats)} beats; target p99 under 100 ms)")  # fmt: skip
        print(f"  /healthz     p50 {statistics.median(health) * 1000:6.1f} ms  "
              f"max {max(health) * 1000:6.1f} ms  (target under 1 s)")  # fmt: skip
        print(f"  NotReady events for the heartbeating node: "
              f"{not_ready_events(database, since)} (target 0)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], action="append")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        databases(args.database or ["sqlite"], Path(tmp)) as urls,
    ):
        for kind, url in urls:
            where = Path(tmp) / kind
            where.mkdir()
            run(kind, url, where, args.jobs, args.clients)


if __name__ == "__main__":
    main()
