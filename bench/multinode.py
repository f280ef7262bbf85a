"""From `git commit` to every rank of a 2-node job running, and to the ranks having
met: a real controller, two real `mlsm-agent` processes (separate storage roots,
both on loopback) and a local git repository.

    python bench/multinode.py [--repeat 5] [--processes 2]

Each round commits a job on 2 nodes × `--processes` processes under torchrun. Three
figures, each a time minus the time just before `git commit`:

- both runs Running: each agent has started torchrun (the commit, the webhook, the
  sync, the all-or-nothing scheduling pass, both long polls, node rank 0's report
  of its endpoint and its sibling hearing of it);
- every rank's process started: its first statement writes the time (torchrun's
  own import of torch, and the c10d rendezvous of the two launchers, come first);
- the ranks met: rank 0 writes the time after `init_process_group` (gloo) and a
  barrier (each process imports torch; 4 processes on 2 shared cores).

Round 0 builds the cached venv and is not counted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Harness, wait

PYTHON = ".".join(map(str, sys.version_info[:2]))
STAMP = (
    "import os, time; folder = os.environ['MLSM_RUN_DIR']; "
    "open(f\"{folder}/started-{os.environ['RANK']}\", 'w').write(repr(time.time())); "
    "import torch.distributed as dist; dist.init_process_group('gloo'); dist.barrier(); "
    "dist.get_rank() == 0 and open(f'{folder}/met', 'w').write(repr(time.time())); "
    "dist.barrier()"
)


def stamps(h: Harness, runs: list[dict[str, object]], name: str) -> list[float]:
    found = []
    for run in runs:
        folder = h.storage_of(str(run["node"])) / "runs" / str(run["id"])
        found += [float(p.read_text()) for p in folder.glob(name) if p.read_text()]
    return found


def one_job(h: Harness, job: str, extra: str, ranks: int) -> tuple[float, float, float]:
    """Commit one job and wait for it: commit -> both runs Running (their agents
    started torchrun), -> the last process started, -> the ranks met."""
    before = h.commit_job(job, ["python", "-c", STAMP], extra=extra, python=PYTHON)
    runs: list[dict[str, object]] = []

    def bound() -> bool:
        runs[:] = h.client.get("/api/v1/runs", params={"job": job}).json()["items"]
        return len(runs) == 2

    wait(bound)
    wait(lambda: len(stamps(h, runs, "started-*")) == ranks and stamps(h, runs, "met"))
    wait(lambda: h.phase(job) in ("Succeeded", "Failed"))
    if h.phase(job) != "Succeeded":
        detail = h.client.get(f"/api/v1/jobs/{job}").json()
        raise SystemExit(f"bench: {job} failed: {json.dumps(detail)[:2000]}")
    done = h.client.get("/api/v1/runs", params={"job": job}).json()["items"]
    running = max(dt.datetime.fromisoformat(r["startedAt"]).timestamp() for r in done)
    return (running - before, max(stamps(h, runs, "started-*")) - before,
            stamps(h, runs, "met")[0] - before)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    launched: list[float] = []
    started: list[float] = []
    met: list[float] = []
    with tempfile.TemporaryDirectory() as name, Harness(Path(name), nodes=2) as h:
        extra = f"  nodes: 2\n  launcher: torchrun\n  processesPerNode: {args.processes}\n"
        for round in range(args.repeat + 1):
            times = one_job(h, f"pair-{round}", extra, 2 * args.processes)
            if round:
                for into, value in zip((launched, started, met), times, strict=True):
                    into.append(value)
    for label, times in (("both runs Running (torchrun)", launched),
                         ("every rank's process started", started),
                         ("the ranks met", met)):  # fmt: skip
        print(f"commit -> {label:30s}: median {statistics.median(times):.3f} s  "
              f"min {min(times):.3f}  max {max(times):.3f}  "
              f"(2 nodes x {args.processes} processes, {len(times)} jobs)")  # fmt: skip


if __name__ == "__main__":
    main()
