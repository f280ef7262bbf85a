"""How fast `mlsmctl validate` checks a large manifests repository, as a whole process.

Generates N manifests on disk (one per file, as a repository holds them: a few
Nodes and Datasets, the rest TrainingJobs that reference them), then times the
`mlsmctl validate` command end to end: interpreter start, imports, reading,
parsing, validation and cross-checks. A second tree has 1% invalid manifests, so
the cost of locating errors to file:line:col is measured too.

    python bench/validate_manifests.py [--count 10000] [--repeat 3]

Target (issue 4): 10,000 manifests in under 2 s on a 2-core machine. For scale:
kubeconform, the fastest Kubernetes validator, reports about 7,500 resources/s on
4 cores, without line numbers.
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

NODE = """apiVersion: mlsm/v1
kind: Node
metadata:
  name: node-{i}
  labels:
    gpu: {gpu}
    zone: zone-{zone}
spec:
  runtimes: [venv, docker]
  capacity:
    gpus: 8
    memory: 512Gi
"""

DATASET = """apiVersion: mlsm/v1
kind: Dataset
metadata:
  name: data-{i}
spec:
  format: imagefolder
  replicate: true
  locations:
    - node: node-{node}
      path: datasets/data-{i}
"""

JOB = """apiVersion: mlsm/v1
kind: TrainingJob
metadata:
  name: job-{i}
  owner: user-{owner}
  labels:
    project: project-{project}
spec:
  runtime:
    venv:
      python: "3.11"
      requirements: ["torch==2.13.0", "transformers>=4.46"]
  trainer:
    model: models/vit-base
    epochs: 3
    batchSize: 64
    learningRate: 0.0001
  dataset: data-{dataset}
  resources:
    gpus: {gpus}
    cpu: 4
    memory: 16Gi
  nodeSelector:
    gpu: {gpu}
  priority: {priority}
  retries: 2
  maxDuration: 6h30m
  env:
    WANDB_MODE: offline
"""

BROKEN_JOB = JOB.replace("epochs: 3", "epochs: -3").replace("batchSize", "batchSise")


def generate(root: Path, count: int, *, broken_every: int = 0) -> None:
    nodes = max(2, count // 100)
    datasets = max(1, count // 50)
    gpus = ("a100", "h100")
    for i in range(nodes):
        path = root / "nodes" / f"node-{i}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(NODE.format(i=i, gpu=gpus[i % 2], zone=i % 4))
    for i in range(datasets):
        path = root / "datasets" / f"data-{i}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DATASET.format(i=i, node=i % nodes))
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    for i in range(count - nodes - datasets):
        template = BROKEN_JOB if broken_every and i % broken_every == 0 else JOB
        text = template.format(
            i=i,
            owner=i % 20,
            project=i % 7,
            dataset=i % datasets,
            gpus=1 + i % 4,
            gpu=gpus[i % 2],
            priority=i % 3,
        )
        (root / "jobs" / f"job-{i}.yaml").write_text(text)


def mlsmctl() -> list[str]:
    found = shutil.which("mlsmctl", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "mlsm.cli"]


def time_validate(root: Path, repeat: int, extra: list[str]) -> tuple[float, int]:
    times = []
    code = 0
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(
            [*mlsmctl(), "validate", *extra, str(root)], capture_output=True, text=True
        )
        times.append(time.perf_counter() - start)
        code = done.returncode
    return statistics.median(times), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"cores: {len(os.sched_getaffinity(0))}, manifests: {args.count}, median of {args.repeat}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        valid, broken = Path(tmp, "valid"), Path(tmp, "broken")
        generate(valid, args.count)
        generate(broken, args.count, broken_every=100)
        rows = [
            ("valid, default workers", valid, []),
            ("valid, one process (-j 1)", valid, ["-j", "1"]),
            ("1% invalid, default workers", broken, []),
        ]
        for label, root, extra in rows:
            seconds, code = time_validate(root, args.repeat, extra)
            print(
                f"{label:30s} {seconds:6.2f} s  {args.count / seconds:8.0f} manifests/s  "
                f"(exit {code})"
            )
        start = time.perf_counter()
        subprocess.run([*mlsmctl(), "--version"], capture_output=True, check=True)
        print(f"{'start-up only (--version)':30s} {time.perf_counter() - start:6.2f} s")


if __name__ == "__main__":
    main()
