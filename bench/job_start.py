"""From `git commit` to the job's process running on a node: a real controller, a
real `mlsm-agent` with its own storage root, and a local git repository.

    python bench/job_start.py [--repeat 10] [--database-url URL]

Each round commits a new TrainingJob whose first statement writes the wall-clock
time; the figure is that time minus the time just before `git commit`, so it holds
the commit, the sync, the scheduling pass, the long poll, the agent's start-up of
the run (its cached venv, the shim) and Python's own start. Two ways to learn of the
commit: the webhook (as from a git host) and the controller's watch of a local
repository (as under `mlsmctl up`). Target (issue 7): median under 2 s with the
webhook; Argo CD polls every 3 minutes by default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Harness, wait

STAMP = "import time; open('started', 'w').write(repr(time.time()))"


def bench(how: str, url: str | None, repeat: int, tmp: Path) -> list[float]:
    times = []
    with Harness(tmp / how, database_url=url, webhook=how == "webhook") as h:
        for round in range(repeat + 1):  # round 0 builds the cached venv: not counted
            name = f"job-{round}"
            before = h.commit_job(name, ["python", "-c", STAMP])
            run = h.run_of(name)
            stamp = h.storage / "runs" / run["id"] / "started"
            wait(lambda s=stamp: s.is_file() and s.read_text())  # written, not just opened
            if round:
                times.append(float(stamp.read_text()) - before)
            wait(lambda n=name: h.phase(n) == "Succeeded")
    return times


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
