"""Scheduling 1,000 pending jobs onto 100 nodes in one pass (issue 7: under 1 s).

    python bench/scheduling.py [--jobs 1000] [--nodes 100] [--repeat 5]

Nodes have 8 GPUs, 64 cores, 512 GiB, two GPU kinds and four zones, and hold a
few of 20 datasets each; jobs of 20 owners at three priorities ask for 0-4 GPUs,
half with a selector and most with a dataset, so the pass both binds jobs and
words reasons for the rest.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlsm.planning.scheduling import NodeView, PendingJob, schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    datasets = [f"data-{i}" for i in range(20)]
    nodes = [
        NodeView(f"node-{i}", labels={"gpu": ("a100", "h100")[i % 2], "zone": f"z{i % 4}"},
                 free_gpus=tuple(range(8)), free_cpu=64.0, free_memory=512 << 30,
                 datasets=frozenset(rng.sample(datasets, 4)))
        for i in range(args.nodes)
    ]  # fmt: skip
    jobs = [
        PendingJob(f"job-{i}", owner=f"user-{i % 20}", priority=i % 3, submitted=float(i),
                   gpus=rng.randint(0, 4), cpu=4.0, memory=16 << 30,
                   selector={"gpu": "h100"} if i % 2 else {},
                   dataset=rng.choice(datasets) if i % 5 else None)
        for i in range(args.jobs)
    ]  # fmt: skip
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = schedule(jobs, nodes, gpus_in_use={"user-1": 8})
        times.append(time.perf_counter() - start)
    bound, waiting = len(result.bindings), len(result.waiting)
    print(
        f"{args.jobs} pending jobs onto {args.nodes} nodes: {statistics.median(times):.3f} s "
        f"(median of {args.repeat}); {bound} bound, {waiting} waiting"
    )
    print(f"  e.g. {next(iter(result.waiting.items()))}")


if __name__ == "__main__":
    main()
