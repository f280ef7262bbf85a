"""From `git commit` to a docker job's process running in its container, next to a
bare `docker run` of the same image through the same engine, in the same run.

    make engine && python bench/container_start.py [--repeat 10]

The engine is the one `make engine` serves (Podman's Docker API, DOCKER_HOST from
.mlsm/engine.env) and the image its busybox. Each job's first command makes a file
in its run folder (`: > started`); the figure is that file's modification time (written by the
container's own process) minus the time just before `git commit` (mlsm, with the
webhook) or just before `containers.run` (bare). So mlsm's figure holds the commit,
the sync, the scheduling pass, the long poll, the agent's image lookup and the
container's create and start; the bare one only the create and start. Target
(issue 15): mlsm adds under 0.3 s to the bare start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Harness, wait

from tests.engine import Engine

TOUCH = ["sh", "-c", ": > /mlsm/run/started"]  # (a shell builtin: busybox here has no touch)


def mlsm_starts(engine: Engine, repeat: int, tmp: Path) -> list[float]:
    times = []
    with Harness(tmp / "mlsm", webhook=True) as h:
        for round in range(repeat + 1):  # round 0 warms the engine's image cache: not counted
            name = f"job-{round}"
            before = h.commit_job(name, TOUCH, image=engine.busybox)
            run = h.run_of(name)
            stamp = h.storage / "runs" / run["id"] / "started"
            wait(stamp.is_file)
            if round:
                times.append(stamp.stat().st_mtime - before)
            wait(lambda n=name: h.phase(n) == "Succeeded")
    return times


def bare_starts(engine: Engine, repeat: int, tmp: Path) -> list[float]:
    client = engine.client()
    times = []
    for round in range(repeat + 1):
        folder = tmp / "bare" / str(round)
        folder.mkdir(parents=True)
        before = time.time()
        bind = {str(folder): {"bind": "/mlsm/run", "mode": "rw"}}
        box = client.containers.run(engine.busybox, TOUCH, detach=True, volumes=bind)
        wait((folder / "started").is_file)
        if round:
            times.append((folder / "started").stat().st_mtime - before)
        box.wait()
        box.remove()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    engine = Engine.find()
    os.environ["DOCKER_HOST"] = engine.host  # for the agent the harness starts
    with tempfile.TemporaryDirectory() as name:
        bare = bare_starts(engine, args.repeat, Path(name))
        ours = mlsm_starts(engine, args.repeat, Path(name))
    for label, times in (("bare docker run", bare), ("mlsm commit", ours)):
        print(f"{label:>16s} -> container process running: median {statistics.median(times):.3f} s"
              f"  min {min(times):.3f}  max {max(times):.3f}  ({len(times)} runs)")  # fmt: skip
    added = statistics.median(ours) - statistics.median(bare)
    ratio = statistics.median(ours) / statistics.median(bare)
    print(f"mlsm adds {added:.3f} s to a bare start (ratio {ratio:.2f}); target: under 0.3 s")


if __name__ == "__main__":
    main()
