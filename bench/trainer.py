"""The built-in trainer's speed on this machine, against a plain PyTorch loop.

    python bench/trainer.py [--model builtin:vit-tiny] [--epochs 5] [--batch-size 64]

1. Samples per second over the same model config, data (scikit-learn's digits as
   an ImageFolder) and batch size, in the same run: the trainer (time in its training
   steps, data loading included; and end to end with evaluation and checkpoints) and
   a plain hand-written loop (cached tensors, AdamW, forward/backward/step).
   Target: the trainer at least 0.95 of the plain loop.
2. Start-up, in a fresh process: the bare import of torch and transformers' model
   classes, then the rest until the first training step finishes (config, data
   indexing and decoding, model build). Target: the rest under 2 s for the tiny model.

On a machine with CUDA, pass e.g. --model builtin:vit-base --precision bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

STARTUP = """
import time, sys, io
t0 = time.perf_counter()
import torch
from transformers import ViTForImageClassification
t1 = time.perf_counter()
from mlsm.training.config import RunConfig
from mlsm.training.looping import train
config = RunConfig.model_validate_json(sys.argv[1])
result = train(config, out=io.StringIO())
print(f"{t1 - t0} {result.first_step_at - t1}")
"""


def digits(root: Path, copies: int) -> Path:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images * (255 / 16)).astype(np.uint8)
    for copy in range(copies):
        for i, (image, target) in enumerate(zip(images, bunch.target, strict=True)):
            split = "val" if copy == 0 and i >= 1500 else "train"
            folder = root / split / NAMES[int(target)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"{copy}-{i:04d}.png")
    return root


def model_and_data(data: Path, model_name: str, device: str) -> tuple[Any, Any, Any]:
    """What a plain loop starts from, as the trainer does: the model (seed 0, in
    train mode on `device`), its preprocessing, and the train split cached in memory."""
    import torch

    from mlsm.training.data import ImageFolder, scan_classes
    from mlsm.training.models import load_model

    torch.manual_seed(0)
    classes = scan_classes(data)
    model, prep = load_model(model_name, classes, pretrained=False)
    model.to(device).train()
    dataset = ImageFolder(data, "train", classes, prep.size)
    assert dataset.cache is not None
    return model, prep, dataset


def plain_loop(data: Path, model_name: str, epochs: int, batch_size: int, device: str) -> float:
    """A hand-written loop over the same data and model: samples per second."""
    import torch

    model, prep, dataset = model_and_data(data, model_name, device)
    images, labels = dataset.cache, dataset.labels
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    samples, seconds = 0, 0.0
    for _ in range(epochs):
        order = torch.randperm(len(dataset))
        for batch in order.split(batch_size):
            start = time.perf_counter()
            x = (images[batch].to(device).float() / 255 - mean) / std
            loss = model(pixel_values=x, labels=labels[batch].to(device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            samples += len(batch)
    return samples / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:vit-tiny")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--copies", type=int, default=3, help="Copies of digits in train/.")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    import torch

    from mlsm.training.config import RunConfig
    from mlsm.training.looping import train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        data = digits(Path(tmp) / "digits", args.copies)
        config = RunConfig.model_validate({
            "model": args.model, "dataset_root": str(data), "output_dir": f"{tmp}/out",
            "epochs": args.epochs, "batch_size": args.batch_size, "num_workers": 2,
            "mixed_precision": args.precision, "pretrained": False, "log_every": 10_000,
        })  # fmt: skip
        import io

        plains, trainers, totals = [], [], []
        for round_ in range(2):  # interleaved, best of each: this VM's speed drifts
            plains.append(plain_loop(data, args.model, args.epochs, args.batch_size, device))
            output = config.model_copy(update={"output_dir": f"{tmp}/out{round_}"})
            started = time.perf_counter()
            result = train(output, out=io.StringIO())
            totals.append(result.samples / (time.perf_counter() - started))
            trainers.append(result.samples / result.train_seconds)
        plain, trainer = max(plains), max(trainers)
        per_epoch = result.samples // args.epochs
        print(
            f"device {device}, model {args.model}, batch {args.batch_size}, "
            f"{per_epoch} samples an epoch, {args.epochs} epochs"
        )
        print(f"plain PyTorch loop            {plain:9.0f} samples/s  (best of 2, interleaved)")
        ratio = trainer / plain
        print(f"mlsm trainer (training steps) {trainer:9.0f} samples/s  ({ratio:.2f} of plain)")
        print(f"mlsm trainer (end to end)     {max(totals):9.0f} samples/s  "
              "(with evaluation, checkpoints, set-up)")  # fmt: skip
        config = config.model_copy(update={"output_dir": f"{tmp}/startup", "epochs": 1})
        runs = []
        for _ in range(3):
            done = subprocess.run([sys.executable, "-c", STARTUP, config.model_dump_json()],
                                  capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
            runs.append([float(x) for x in done.stdout.split()])
            subprocess.run(["rm", "-rf", f"{tmp}/startup"], check=True)
        imports = sorted(r[0] for r in runs)[1]
        rest = sorted(r[1] for r in runs)[1]
        print(f"start-up: import torch + transformers  {imports:6.2f} s (median of 3)")
        print(f"start-up: the rest, to the first step  {rest:6.2f} s (median of 3)")
        print(json.dumps({"plain": plain, "trainer": trainer, "ratio": trainer / plain,
                          "imports_s": imports, "rest_s": rest}))  # fmt: skip


if __name__ == "__main__":
    main()
