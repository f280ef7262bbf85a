"""`mlsmctl plan` over a pull request that adds 100 jobs to a repository of 10,000
objects, as a whole process: interpreter start, imports, both commits read from git
(the head's unchanged files once), the sync plan, and the placement of every new job
by the scheduler. Target (issue 18): under 2 s.

    python bench/plan.py [--objects 10000] [--added 100] [--repeat 3]

The repository is made with `bench/validate_manifests.py`'s generator (nodes of 8
GPUs, datasets placed on them, jobs with selectors, datasets and priorities).

mlsmctl runs as on a user's machine, where Python caches compiled modules: this
environment sets PYTHONDONTWRITEBYTECODE=1, which makes every start compile mlsm's
modules again (0.1-0.2 s), so the bench runs mlsmctl without it, after one run
that is not counted (the one that writes the bytecode).

Two figures: cold, with no checked files kept (a CI runner's first plan of the
repository: every unchanged file is checked), and warm, the plan run again (the next
push of the pull request, or a CI cache of ~/.cache/mlsm: only what the change
touches is checked; mlsm/manifests/caching.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validate_manifests import JOB, generate, mlsmctl

ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
       "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=ENV, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--added", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        repo = Path(name) / "manifests"
        repo.mkdir()
        generate(repo, args.objects)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "the lab")
        datasets = len(list((repo / "datasets").iterdir()))
        for i in range(args.added):
            text = JOB.format(i=f"new-{i}", owner=i % 20, project=i % 7,
                              dataset=i % datasets, gpus=1 + i % 4,
                              gpu=("a100", "h100")[i % 2], priority=i % 3)  # fmt: skip
            (repo / "jobs" / f"new-{i}.yaml").write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"add {args.added} jobs")
        command = [*mlsmctl(), "plan", "--repo", str(repo), "--base", "HEAD~1", "--head",
                   "HEAD", "-o", "markdown"]  # fmt: skip
        checked = Path(name) / "checked"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["MLSM_CACHE_DIR"] = str(checked)
        subprocess.run(command, capture_output=True, env=env, check=False)  # not counted
        figures = {}
        for label in ("cold", "warm"):
            times = []
            for _ in range(args.repeat):
                if label == "cold":
                    shutil.rmtree(checked, ignore_errors=True)
                started = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, env=env,
                                      check=False)  # fmt: skip
                times.append(time.perf_counter() - started)
                if done.returncode != 1:
                    raise SystemExit(f"bench: plan exited {done.returncode}:\n"
                                     f"{done.stdout[-2000:]}{done.stderr[-2000:]}")  # fmt: skip
            figures[label] = times
        rows = [line for line in done.stdout.splitlines() if line.startswith("| + |")]
        placed = sum("would run now" in row for row in rows)
    for label, times in figures.items():
        print(f"mlsmctl plan, {args.added} jobs added to {args.objects} objects, {label}: "
              f"median {statistics.median(times):.2f} s  min {min(times):.2f}  "
              f"max {max(times):.2f}  ({len(rows)} creates, {placed} placed, "
              f"{len(rows) - placed} waiting; whole process, {args.repeat} runs)")  # fmt: skip


if __name__ == "__main__":
    main()
