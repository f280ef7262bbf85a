"""The training loop: train and evaluate, log metrics, keep the best and the last
checkpoint, resume, stop cleanly on SIGTERM, and run under torchrun.

Checkpoints (`<output>/checkpoints/{last,best}/`) are `save_pretrained` folders
(safetensors, label maps in config.json, preprocessor_config.json), so each one
classifies on its own, plus `trainer_state.pt` (optimizer, scheduler, RNG states,
position). They are written to a temporary folder and renamed into place, so a kill
during a save never leaves a broken `last`. A run whose output already holds a
`last` checkpoint resumes from it: the data order is a function of (seed, epoch),
so skipping the batches already done continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from mlsm.training.config import RunConfig
from mlsm.training.data import ImageFolder, scan_classes
from mlsm.training.models import Preprocessing, load_model, save_preprocessing

__all__ = ["EXIT_TERMINATED", "Result", "evaluate", "train"]

EXIT_TERMINATED = 143
STATE_FILE = "trainer_state.pt"


@dataclass
class Result:
    epochs_done: int = 0
    steps: int = 0
    best: float | None = None
    best_epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stopped: str = ""
    """'' when training finished; 'max_steps' or 'SIGTERM' otherwise."""
    samples: int = 0
    """Training samples processed, all processes together."""
    train_seconds: float = 0.0
    """Time spent in training steps (not evaluating or saving)."""
    first_step_at: float | None = None
    """time.perf_counter() when the first step finished (for start-up figures)."""


@dataclass
class _Place:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> _Place:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )


class _Metrics:
    """JSON lines to $MLSM_METRICS_FILE (rank 0 only)."""

    def __init__(self, place: _Place) -> None:
        path = os.environ.get("MLSM_METRICS_FILE")
        self.file = open(path, "a", encoding="utf-8") if path and place.main else None  # noqa: SIM115

    def write(self, step: int, epoch: float, split: str, values: dict[str, float]) -> None:
        if self.file is None:
            return
        now = time.time()
        for name, value in values.items():
            self.file.write(
                json.dumps(
                    {
                        "step": step,
                        "epoch": round(epoch, 4),
                        "split": split,
                        "name": name,
                        "value": value,
                        "time": now,
                    }
                )
                + "\n"
            )
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _schedule(config: RunConfig, total: int) -> Any:
    warmup = int(total * config.warmup_ratio)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if config.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress)

    return factor


def _precision(config: RunConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or config.mixed_precision == "no":
        return None
    if config.mixed_precision == "fp16":
        return torch.float16
    if config.mixed_precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _normalise(images: torch.Tensor, prep: Preprocessing, device: torch.device) -> torch.Tensor:
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    return (images.to(device, non_blocking=True).float() / 255 - mean) / std


@torch.no_grad()
def evaluate(
    model: Any, data: ImageFolder, prep: Preprocessing, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Loss, accuracy and macro F1 over a whole split."""
    model.eval()
    classes = len(data.classes)
    confusion = torch.zeros(classes * classes, dtype=torch.long)
    total_loss, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(data)))
        if data.cached:
            images, labels = data.batch(indices)
        else:
            pairs = [data[int(i)] for i in indices]
            images = torch.stack([p[0] for p in pairs])
            labels = torch.tensor([p[1] for p in pairs])
        out = model(pixel_values=_normalise(images, prep, device), labels=labels.to(device))
        total_loss += float(out.loss) * len(indices)
        count += len(indices)
        predicted = out.logits.argmax(-1).cpu()
        confusion += torch.bincount(labels * classes + predicted, minlength=classes * classes)
    matrix = confusion.view(classes, classes).double()
    true_positive = matrix.diag()
    precision = true_positive / matrix.sum(0).clamp(min=1)
    recall = true_positive / matrix.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = matrix.sum(1) > 0
    model.train()
    return {
        "loss": total_loss / max(count, 1),
        "accuracy": float(true_positive.sum() / max(count, 1)),
        "f1": float(f1[present].mean()) if present.any() else 0.0,
    }


class _Stop:
    """SIGTERM sets a flag; the loop checks it after each step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _save(folder: Path, model: Any, prep: Preprocessing, state: dict[str, Any]) -> None:
    """Write a checkpoint folder atomically (temporary folder, then renames)."""
    temporary = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, safe_serialization=True)
    save_preprocessing(temporary, prep)
    torch.save(state, temporary / STATE_FILE)
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    temporary.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(config: RunConfig, *, out: Any = None) -> Result:
    """Run the whole training; returns what happened. Progress goes to `out` (stdout)."""
    out = out or sys.stdout
    place = _Place.from_env()
    if place.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    # Under mlsm's launcher each process sees only its own GPU (device 0); under a
    # plain torchrun every process sees all of them and takes its LOCAL_RANK-th.
    if torch.cuda.is_available():
        index = place.local_rank if torch.cuda.device_count() > place.local_rank else 0
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if place.world > 1:  # every rank says where it is, once
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
        print(
            f"rank {place.rank} of {place.world} (local {place.local_rank}): {device}, "
            f"CUDA_VISIBLE_DEVICES={visible}",
            file=out,
            flush=True,
        )

    def say(line: str) -> None:
        if place.main:
            print(line, file=out, flush=True)

    root, output = Path(config.dataset_root), Path(config.output_dir)
    checkpoints = output / "checkpoints"
    _seed_everything(config.seed)
    classes = scan_classes(root)
    last = checkpoints / "last"
    resuming = (last / STATE_FILE).is_file()
    # A resumed run loads its weights from the checkpoint folder (from_pretrained maps
    # the saved names onto the model's, which a raw state dict would not).
    model, prep = load_model(
        str(last) if resuming else config.model, classes, pretrained=resuming or config.pretrained
    )
    train_set = ImageFolder(root, "train", classes, prep.size, config.cache_bytes)
    val_set = ImageFolder(root, "val", classes, prep.size, config.cache_bytes)
    _ = train_set.cache  # decode the train split now; val waits for the first evaluation
    if config.freeze_backbone:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("classifier")
    model.to(device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, num_replicas=place.world, rank=place.rank, shuffle=True, seed=config.seed
    )
    steps_per_epoch = math.ceil(len(sampler) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total))
    mode = config.monitor.effective_mode
    result = Result()
    epoch, skip, step = 0, 0, 0
    if resuming:
        state = torch.load(last / STATE_FILE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, skip, step = state["epoch"], state["step_in_epoch"], state["step"]
        result.best, result.best_epoch = state["best"], state["best_epoch"]
        _restore_rng(
            state["rng"][place.rank] if place.rank < len(state["rng"]) else state["rng"][0]
        )
        say(f"resuming from {last}: epoch {epoch + 1}, step {skip} of {steps_per_epoch}")
    precision = _precision(config, device)
    scaler = torch.amp.GradScaler("cuda") if precision is torch.float16 else None
    wrapped = model
    if place.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[place.local_rank] if device.type == "cuda" else None
        )
    metrics = _Metrics(place)
    stop = _Stop()
    say(
        f"training {config.model} on {len(train_set)} images ({len(classes)} classes), "
        f"{config.epochs} epochs of {steps_per_epoch} steps, batch {config.batch_size} x "
        f"{place.world} process(es), on {device}{f' ({precision})' if precision else ''}"
    )

    def state_now(epoch: int, in_epoch: int) -> dict[str, Any]:
        rng = [_rng_state()]
        if place.world > 1:
            gathered: list[Any] = [None] * place.world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        return {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": in_epoch,
            "step": step,
            "rng": rng,
            "best": result.best,
            "best_epoch": result.best_epoch,
            "config": config.model_dump(mode="json"),
        }

    def checkpoint(folder: Path, epoch: int, in_epoch: int) -> None:
        state = state_now(epoch, in_epoch)  # (a collective under torchrun: every rank)
        if place.main:
            _save(folder, model, prep, state)

    wrapped.train()
    started, samples_seen = time.perf_counter(), 0
    try:
        while epoch < config.epochs:
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), dtype=torch.long)
            batches = order.split(config.batch_size)
            loader: Any = None
            if not train_set.cached:
                loader = iter(
                    DataLoader(
                        train_set,
                        batch_sampler=[b.tolist() for b in batches[skip:]],
                        num_workers=config.num_workers,
                        persistent_workers=False,
                    )
                )
            for in_epoch in range(skip, len(batches)):
                step_started = time.perf_counter()  # data loading counts: it must not starve
                if loader is not None:
                    images, labels = next(loader)
                else:
                    images, labels = train_set.batch(batches[in_epoch])
                pixels = _normalise(images, prep, device)
                with torch.autocast(
                    device.type, dtype=precision or torch.float32, enabled=precision is not None
                ):
                    loss = wrapped(pixel_values=pixels, labels=labels.to(device)).loss
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                samples_seen += len(labels) * place.world
                now = time.perf_counter()
                result.train_seconds += now - step_started
                result.samples = samples_seen
                if result.first_step_at is None:
                    result.first_step_at = now
                if step % config.log_every == 0 or in_epoch + 1 == len(batches):
                    reported = loss.detach().float()
                    if place.world > 1:  # every rank logs at the same steps: the mean
                        dist.all_reduce(reported)
                        reported /= place.world
                    elapsed = time.perf_counter() - started
                    rate = samples_seen / max(elapsed, 1e-9)
                    left = (total - step) * config.batch_size * place.world / max(rate, 1e-9)
                    metrics.write(
                        step,
                        epoch + (in_epoch + 1) / len(batches),
                        "train",
                        {"loss": float(reported), "lr": float(scheduler.get_last_lr()[0])},
                    )
                    say(
                        f"epoch {epoch + 1}/{config.epochs} step {in_epoch + 1}/{len(batches)} "
                        f"loss {float(reported):.4f} | {rate:.0f} samples/s | "
                        f"ETA {time.strftime('%H:%M:%S', time.gmtime(left))}"
                    )
                if stop.requested or (config.max_steps is not None and step >= config.max_steps):
                    result.stopped = "SIGTERM" if stop.requested else "max_steps"
                    checkpoint(last, epoch, in_epoch + 1)
                    if stop.requested:
                        say(
                            f"SIGTERM: saved a checkpoint at epoch {epoch + 1}, step "
                            f"{in_epoch + 1} to {last}; a rerun resumes from it"
                        )
                    else:
                        say(f"stopped after {step} steps (max_steps); checkpoint in {last}")
                    result.steps, result.epochs_done = step, epoch
                    return result
            skip = 0
            epoch += 1
            if place.main:
                scores = evaluate(model, val_set, prep, device, config.batch_size * 2)
                metrics.write(step, epoch, "val", scores)
                value = scores[config.monitor.metric]
                better = result.best is None or (
                    value > result.best if mode == "max" else value < result.best
                )
                if better:
                    result.best, result.best_epoch = value, epoch
                result.metrics = scores
                say(
                    f"epoch {epoch}/{config.epochs}: val loss {scores['loss']:.4f} accuracy "
                    f"{scores['accuracy']:.4f} f1 {scores['f1']:.4f}"
                    f"{' (best)' if better else ''}"
                )
            else:
                better = False
            if place.world > 1:
                flags = [better]
                dist.broadcast_object_list(flags, src=0)
                better = bool(flags[0])
            if better:
                checkpoint(checkpoints / "best", epoch, 0)
            checkpoint(last, epoch, 0)
        result.steps, result.epochs_done = step, epoch
        if place.main and (root / "test").is_dir():
            test_set = ImageFolder(root, "test", classes, prep.size, config.cache_bytes)
            scores = evaluate(model, test_set, prep, device, config.batch_size * 2)
            metrics.write(step, epoch, "test", scores)
            say(
                f"test: loss {scores['loss']:.4f} accuracy {scores['accuracy']:.4f} "
                f"f1 {scores['f1']:.4f}"
            )
        say(
            f"done: best val {config.monitor.metric} {result.best or 0:.4f} at epoch "
            f"{result.best_epoch}; checkpoints in {checkpoints}"
        )
        return result
    finally:
        stop.restore()
        metrics.close()
        if place.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
