"""A 16-child sweep: from `git commit` to every child scheduled.

    python bench/sweep.py [--rounds 3] [--children 16]

A real controller (webhook) and agent, the digits written into the agent's
storage. Each round commits a TrainingJob whose `spec.sweep` is a grid of
`--children` learning rates and times the commit until every child is bound to the
node (Scheduled or past it); then the same number of plain jobs in one commit, as the
reference: the sweep's expansion should cost next to nothing. Each round's jobs are
removed from git (which cancels what they started), and the next round waits until
their runs are over.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Harness, wait

from mlsm.training.demo import write_digits

DATASET = """apiVersion: mlsm/v1
kind: Dataset
metadata: {name: digits}
spec: {format: imagefolder, locations: [{node: n1, path: datasets/digits}]}
"""

TRAINER = """apiVersion: mlsm/v1
kind: TrainingJob
metadata: {{name: {name}, owner: ada}}
spec:
  runtime: {{venv: {{python: "3.11"}}}}
  trainer: {{model: "builtin:resnet-tiny", pretrained: false, epochs: 1{lr}}}
  dataset: digits
  resources: {{gpus: 0, cpu: 100m}}
"""

UNBOUND = ("", "Pending")
OVER = ("Succeeded", "Failed", "Cancelled", "Lost")


def sweep(name: str, children: int) -> str:
    rates = ", ".join(f"{0.001 * (k + 1):g}" for k in range(children))
    text = TRAINER.format(name=name, lr="")
    return text + f"  sweep:\n    parameters:\n      learningRate: [{rates}]\n"


def timed(h: Harness, files: dict[str, str | None], names: list[str]) -> float:
    before = h.commit_files(files, "add jobs")
    wait(lambda: all(h.phase(n) not in UNBOUND for n in names), timeout=120, step=0.01)
    return time.time() - before


def settled(h: Harness, names: list[str]) -> None:
    """Every run of these jobs over (cancelled by their removal): the next round
    starts on an idle machine."""

    def over(name: str) -> bool:
        runs = h.client.get("/api/v1/runs", params={"job": name}).json()["items"]
        return all(r["phase"] in OVER for r in runs)

    wait(lambda: all(over(n) for n in names), timeout=300, step=0.2)
    time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--children", type=int, default=16)
    args = parser.parse_args()
    swept, plain = [], []
    with tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp)) as h:
        write_digits(h.storage / "datasets" / "digits")
        h.commit_files({"datasets/digits.yaml": DATASET}, "digits")
        wait(lambda: "digits" in h.client.get("/api/v1/nodes/n1").json()["status"]["datasets"])
        for r in range(args.rounds):
            name = f"s{r}"
            children = [f"{name}-{k}" for k in range(args.children)]
            swept.append(timed(h, {f"jobs/{name}.yaml": sweep(name, args.children)}, children))
            h.commit_files(
                {f"jobs/{name}.yaml": None}, "remove the sweep\n\nAllow-Mass-Prune: true"
            )
            settled(h, children)
            files: dict[str, str | None] = {
                f"jobs/p{r}-{k}.yaml": TRAINER.format(
                    name=f"p{r}-{k}", lr=f", learningRate: {k + 1}e-3"
                )
                for k in range(args.children)
            }
            names = [f"p{r}-{k}" for k in range(args.children)]
            plain.append(timed(h, files, names))
            h.commit_files(dict.fromkeys(files), "remove the jobs\n\nAllow-Mass-Prune: true")
            settled(h, list(names))
    for what, times in ((f"all {args.children} children of a sweep", swept),
                        (f"{args.children} plain jobs in one commit", plain)):  # fmt: skip
        print(f"commit -> {what} scheduled: median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}, {len(times)} rounds)")  # fmt: skip


if __name__ == "__main__":
    main()
