"""Two controllers on one PostgreSQL database: how long a `kill -9` of the leader
stops scheduling, and what a second controller costs or gives under agent load.

    python bench/failover.py [--trials 5] [--nodes 800] [--rate 1600] [--seconds 8]

Failover: controllers A (leading) and B on one throwaway cluster; a job waits, bound
to nothing because its node sends no heartbeat. At `kill -9` of A the node starts
beating (to B, every 0.2 s): the figure is the time from the kill to the job's first
binding by B, read from B's API (median of `--trials`; target, issue 19: under 10 s).
It is at most the lease (6 s, `controller/leading.py`) plus a contention retry
(0.5 s) and one scheduling pass.

Load: `--nodes` simulated agents beat at `--rate` heartbeats/s in total (an open
loop, as bench/heartbeats.py), all to one controller, then half to each of two,
while a reader asks GET /api/v1/nodes?limit=100 ten times a second on each
controller in use: heartbeats done per second, and heartbeat and read latency
percentiles, with the ratio two / one. Both run on these same 2 cores, so a second
controller adds serving capacity only where one controller does not already use
them all.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import databases, free_port, git, job, wait
from heartbeats import INVENTORY, hammer, prepare

from tests import postgres


def controller(repo: Path, url: str, state: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlsm.controller", "run", "--repo", str(repo), "--database-url",
         url, "--listen", f"127.0.0.1:{port}", "--state-dir", str(state),
         "--poll-interval", "0.2", "--node-grace", "2", "--schedule-interval", "0.2",
         "--max-connections", "4000"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait(lambda: httpx.get(f"{base}/healthz").status_code == 200, timeout=60)
    return process, base


def leads(base: str) -> bool:
    return bool(httpx.get(f"{base}/healthz", timeout=2).json()["leader"]["leading"])


def failover_trial(tmp: Path, server: str, trial: int) -> float:
    with postgres.fresh_database(server) as url:
        return _failover(tmp, url, trial)


def _failover(tmp: Path, url: str, trial: int) -> float:
    repo = prepare(tmp / f"trial-{trial}", url, 1)  # node n0 and its token t0
    a, a_url = controller(repo, url, tmp / f"a{trial}", tmp / f"a{trial}.log")
    b = None
    try:
        wait(lambda: leads(a_url), timeout=30)
        b, b_url = controller(repo, url, tmp / f"b{trial}", tmp / f"b{trial}.log")
        name = f"job-{trial}"
        (repo / "jobs").mkdir(exist_ok=True)
        (repo / "jobs" / f"{name}.yaml").write_text(job(name, ["true"]))
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"add {name}")
        wait(lambda: httpx.get(f"{a_url}/api/v1/jobs/{name}").status_code == 200, timeout=30)
        beating = threading.Event()

        def beat() -> None:  # the node, reaching B once A is gone
            with httpx.Client(base_url=b_url, headers={"Authorization": "Bearer t0"}) as http:
                while not beating.is_set():
                    http.post("/api/v1/agent/nodes/n0/heartbeat",
                              json={"inventory": INVENTORY, "runs": []})  # fmt: skip
                    beating.wait(0.2)

        a.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        thread = threading.Thread(target=beat, daemon=True)
        thread.start()

        def bound() -> bool:
            return bool(httpx.get(f"{b_url}/api/v1/jobs/{name}").json().get("runs"))

        wait(bound, timeout=60, step=0.01)
        took = time.perf_counter() - killed
        beating.set()
        thread.join(5)
        return took
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * share) - 1, 0)] * 1000


def load_figures(tmp: Path, server: str, args: argparse.Namespace) -> None:
    with postgres.fresh_database(server) as url:
        _load_figures(tmp, url, args)


def _load_figures(tmp: Path, url: str, args: argparse.Namespace) -> None:
    repo = prepare(tmp / "load", url, args.nodes)
    figures = {}
    for count in (1, 2):
        started = [controller(repo, url, tmp / f"load-{count}-{i}", tmp / f"load-{count}-{i}.log")
                   for i in range(count)]  # fmt: skip
        try:
            ports = [int(base.rsplit(":", 1)[1]) for _, base in started]
            last = f"{started[0][1]}/api/v1/nodes/n{args.nodes - 1}"
            wait(lambda last=last: httpx.get(last).status_code == 200, timeout=60)
            asyncio.run(hammer(ports, args.nodes, args.rate, 1.0))  # warm up
            gc.disable()
            beaten, beats, reads = asyncio.run(
                hammer(ports, args.nodes, args.rate, args.seconds, read_every=0.1)
            )
            done = beaten / args.seconds
            gc.enable()
        finally:
            for process, _ in started:
                process.terminate()
                process.wait(10)
        figures[count] = (done, beats, reads)
        print(f"{count} controller(s): heartbeats {done:5.0f}/s of {args.rate:.0f} offered, "
              f"p50 {percentile(beats, 0.5):6.1f} ms p99 {percentile(beats, 0.99):6.1f} ms; "
              f"reads p50 {percentile(reads, 0.5):6.1f} ms "
              f"p99 {percentile(reads, 0.99):6.1f} ms")  # fmt: skip
    (one, b1, r1), (two, b2, r2) = figures[1], figures[2]
    print(f"two / one: heartbeats/s {two / one:.2f}x, heartbeat p99 "
          f"{percentile(b2, 0.99) / percentile(b1, 0.99):.2f}x, read p99 "
          f"{percentile(r2, 0.99) / percentile(r1, 0.99):.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=800)
    parser.add_argument("--rate", type=float, default=1600.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    os.environ.setdefault("MLSM_CACHE_DIR", "")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        with databases(["postgresql"], tmp) as [(_, url)]:
            times = [failover_trial(tmp, url, trial) for trial in range(args.trials)]
            print(f"failover, kill -9 of the leader to the first binding by the other: median "
                  f"{statistics.median(times):.2f} s  min {min(times):.2f}  max {max(times):.2f}  "
                  f"({args.trials} trials; target under 10 s)")  # fmt: skip
            load_figures(tmp, url, args)


if __name__ == "__main__":
    main()
