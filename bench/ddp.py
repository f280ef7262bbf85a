"""The built-in trainer with 2 processes (DDP over gloo, under torchrun as the agent
launches it) against 1, on this machine's CPUs.

    python bench/ddp.py [--epochs 3] [--batch-size 64] [--repeat 2]

Each run trains the tiny ViT on scikit-learn's digits (made offline) for the same
epochs. The figure is the trainer's own samples/s, all processes together, at the
last progress line (training steps, data loading included). The best of --repeat
runs is kept, with 1 and 2 processes taking turns. On 2 CPU cores a second process
mostly competes for the same cores: report the ratio as it is. A CPU box is not
where DDP pays.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mlsm.agent.launching import torchrun
from mlsm.training.demo import write_digits

RATE = re.compile(r"\| (\d+) samples/s \|")


def run(config: Path, processes: int) -> float:
    argv = [sys.executable, "-m", "mlsm.training", "--config", str(config)]
    if processes > 1:
        argv = torchrun(
            argv, processes=processes, python=sys.executable, log_dir=str(config.parent / "ranks")
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(max(1, 2 // processes))}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the trainer failed ({processes} processes):\n{done.stderr[-3000:]}")
    rates = [int(m.group(1)) for m in RATE.finditer(done.stdout)]
    if not rates:
        raise SystemExit(f"no progress line in:\n{done.stdout[-2000:]}")
    return float(rates[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        data = write_digits(tmp / "digits")
        best: dict[int, float] = {1: 0.0, 2: 0.0}
        for turn in range(args.repeat):
            for processes in (1, 2):
                config = tmp / f"config-{processes}-{turn}.json"
                config.write_text(
                    json.dumps(
                        {
                            "model": "builtin:vit-tiny",
                            "pretrained": False,
                            "epochs": args.epochs,
                            "batchSize": args.batch_size,
                            "numWorkers": 0,
                            "logEvery": 5,
                            "datasetRoot": str(data),
                            "outputDir": str(tmp / f"out-{processes}-{turn}"),
                        }
                    )
                )
                best[processes] = max(best[processes], run(config, processes))
    print(f"trainer, 1 process          {best[1]:7.0f} samples/s")
    print(
        f"trainer, 2 processes (DDP)  {best[2]:7.0f} samples/s  ({best[2] / best[1]:.2f}x, "
        f"{os.cpu_count()} CPU cores, gloo; best of {args.repeat})"
    )


if __name__ == "__main__":
    main()
