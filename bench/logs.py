"""Log shipping through a real agent and controller: throughput, and the latency of
a line from the job's `print` to `mlsmctl logs -f`.

    python bench/logs.py [--lines 500000] [--databases sqlite,postgresql]

Throughput: a job prints --lines numbered lines (about 60 bytes each) as fast as it
can; the figure is lines / (time from the job's start until the controller holds
the whole log). Latency: a job prints a line with its wall-clock time every 50 ms
while `mlsmctl logs job NAME -f` follows it; each line's latency is the time the
follower printed it minus the time in it. Targets (issue 8): at least 50,000
lines/s on SQLite; p50 under 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Harness, databases, wait

FLOOD = (
    "import sys, time; open('started', 'w').write(repr(time.time())); n = {n}; "
    "w = sys.stdout.write; "
    "[w(''.join(f'line {{i:09d}} of a job that says a great deal, quickly\\n' "
    "for i in range(k, min(k + 10000, n)))) for k in range(0, n, 10000)]"
)
TICK = (
    "import time; "
    "[(print(f'tick {{time.time():.6f}}', flush=True), time.sleep(0.05)) for _ in range({n})]"
)


def throughput(h: Harness, lines: int) -> float:
    h.commit_job("warm", ["python", "-c", "print(1)"])  # builds the cached venv
    wait(lambda: h.phase("warm") == "Succeeded")
    h.commit_job("flood", ["python", "-c", FLOOD.format(n=lines)])
    run = h.run_of("flood")
    log = h.storage / "runs" / run["id"] / "output.log"
    wait(lambda: h.phase("flood") == "Succeeded")
    size = log.stat().st_size
    wait(lambda: h.client.get(f"/api/v1/runs/{run['id']}/logs", params={"tail": 1})
         .json()["logOffset"] == size, step=0.01)  # fmt: skip
    done = time.time()
    started = float((h.storage / "runs" / run["id"] / "started").read_text())
    return lines / (done - started)


def latency(h: Harness, ticks: int) -> list[float]:
    h.commit_job("ticks", ["python", "-c", TICK.format(n=ticks)])
    h.run_of("ticks")
    follower = subprocess.Popen(
        [sys.executable, "-m", "mlsm.cli", "logs", "job", "ticks", "-f", "--server",
         str(h.client.base_url)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[float] = []

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            if line.startswith("tick "):
                seen.append(time.time() - float(line.split()[1]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait(lambda: h.phase("ticks") == "Succeeded", timeout=ticks * 0.1 + 60)
    follower.wait(60)
    reader.join(10)
    return seen[5:]  # the first lines were printed before the follower started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as name,
        databases(args.databases.split(","), Path(name)) as urls,
    ):
        for kind, url in urls:
            with Harness(Path(name) / kind, database_url=url) as h:
                rate = throughput(h, args.lines)
                seen = sorted(latency(h, args.ticks))
            p50 = statistics.median(seen)
            p99 = seen[max(int(len(seen) * 0.99) - 1, 0)]
            print(f"{kind:10s} shipping {rate:8.0f} lines/s ({args.lines} lines)   "
                  f"print -> mlsmctl logs -f: p50 {p50 * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms ({len(seen)} lines)")  # fmt: skip


if __name__ == "__main__":
    main()
