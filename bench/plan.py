"""`mlsmctl plan` over a pull request that adds 100 jobs to a repository of 10,000
objects, as a whole process: interpreter start, imports, both commits read from git
(the head's unchanged files once), the sync plan, and the placement of every new job
by the scheduler. Target (issue 18): under 2 s.

    python bench/plan.py [--objects 10000] [--added 100] [--repeat 3]

The repository is made with `bench/validate_manifests.py`'s generator (nodes of 8
GPUs, datasets placed on them, jobs with selectors, datasets and priorities).
"""

from __future__ import annotations

import argparse
import os
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
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            times.append(time.perf_counter() - started)
            if done.returncode != 1:
                raise SystemExit(f"bench: plan exited {done.returncode}:\n{done.stdout[-2000:]}"
                                 f"{done.stderr[-2000:]}")  # fmt: skip
        rows = [line for line in done.stdout.splitlines() if line.startswith("| + |")]
        placed = sum("would run now" in row for row in rows)
    print(f"mlsmctl plan, {args.added} jobs added to {args.objects} objects: median "
          f"{statistics.median(times):.2f} s  min {min(times):.2f}  max {max(times):.2f}  "
          f"({len(rows)} creates, {placed} placed, {len(rows) - placed} waiting; "
          f"whole process, {args.repeat} runs)")  # fmt: skip


if __name__ == "__main__":
    main()
