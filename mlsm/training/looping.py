"""The training loop: train and evaluate, log metrics, keep checkpoints, stop early,
resume, stop cleanly on SIGTERM, and run under torchrun.

Checkpoints (`<output>/checkpoints/{last,best,epoch-N}/`, `mlsm.training.checkpoints`)
are written atomically. A run whose output already holds a `last` checkpoint resumes
from it: the data order is a function of (seed, epoch) and the augmentation of
(seed, epoch, batch), so skipping the batches already done continues exactly where it
stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
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
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from mlsm.training import checkpoints as saving
from mlsm.training import provenance as origin
from mlsm.training.augmenting import Augmenter
from mlsm.training.config import RunConfig
from mlsm.training.data import ImageFolder, check_split, scan_classes, to_pixels
from mlsm.training.evaluating import RECORD_BUDGET, Evaluation, evaluate
from mlsm.training.models import forward_options, load_model

__all__ = ["EXIT_TERMINATED", "Result", "evaluate", "train"]

EXIT_TERMINATED = 143
STATE_FILE = saving.STATE_FILE


@dataclass
class Result:
    epochs_done: int = 0
    steps: int = 0
    best: float | None = None
    best_epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stopped: str = ""
    """'' when training finished; 'early_stopping', 'max_steps' or 'SIGTERM' otherwise."""
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
        self.write_records(step, epoch, split, [{"name": n, "value": v} for n, v in values.items()])

    def write_records(
        self, step: int, epoch: float, split: str, records: list[dict[str, Any]]
    ) -> None:
        if self.file is None:
            return
        now = time.time()
        for record in records:
            line = {"step": step, "epoch": round(epoch, 4), "split": split, **record, "time": now}
            self.file.write(json.dumps(line) + "\n")
        self.file.flush()

    def evaluation(self, step: int, epoch: float, evaluation: Evaluation) -> None:
        self.write(step, epoch, evaluation.split, evaluation.scores)
        self.write_records(step, epoch, evaluation.split, [evaluation.record()])

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


def _optimizer(config: RunConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        momentum = 0.9 if config.momentum is None else config.momentum
        return torch.optim.SGD(
            parameters,
            lr=config.learning_rate,
            momentum=momentum,
            nesterov=momentum > 0,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def _class_weights(config: RunConfig, data: ImageFolder) -> torch.Tensor | None:
    """balanced: n / (classes x count of the class), as scikit-learn's."""
    if config.class_weights != "balanced":
        return None
    counts = torch.bincount(data.labels, minlength=len(data.classes)).double()
    return (counts.sum() / (len(counts) * counts.clamp(min=1))).float()


class _Patience:
    """Early stopping: evaluations since the monitored metric last improved by more
    than minDelta."""

    def __init__(self, config: RunConfig) -> None:
        self.rule = config.early_stopping
        self.mode = config.monitor.effective_mode
        self.best: float | None = None
        self.stale = 0

    @property
    def exhausted(self) -> bool:
        return self.rule is not None and self.stale >= self.rule.patience

    def update(self, value: float) -> None:
        delta = self.rule.min_delta if self.rule is not None else 0.0
        gain = (
            None if self.best is None else (value - self.best) * (1 if self.mode == "max" else -1)
        )
        if gain is None or gain > delta:
            self.best, self.stale = value, 0
        else:
            self.stale += 1

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "stale": self.stale}

    def load(self, state: dict[str, Any] | None) -> None:
        if state:
            self.best, self.stale = state["best"], state["stale"]


class _Stop:
    """SIGTERM sets a flag; the loop checks it after each step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


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
    check_split(root, "val")  # before the model is built: a missing split is said at once
    last = checkpoints / "last"
    resuming = (last / STATE_FILE).is_file()
    # A resumed run loads its weights from the checkpoint folder (from_pretrained maps
    # the saved names onto the model's, which a raw state dict would not).
    model, prep = load_model(
        str(last) if resuming else config.model,
        classes,
        pretrained=resuming or config.pretrained,
        image_size=config.image_size,
    )
    options = forward_options(model, prep)
    train_set = ImageFolder(root, "train", classes, prep.size, config.cache_bytes)
    val_set = ImageFolder(root, "val", classes, prep.size, config.cache_bytes)
    _ = train_set.cache  # decode the train split now; val waits for the first evaluation
    if config.freeze_backbone:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("classifier")
    model.to(device)
    optimizer = _optimizer(config, [p for p in model.parameters() if p.requires_grad])
    weights = _class_weights(config, train_set)
    weights = weights.to(device) if weights is not None else None
    ops = config.augmentation_ops
    augmenter = Augmenter(ops, seed=config.seed, rank=place.rank) if ops.enabled else None
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, num_replicas=place.world, rank=place.rank, shuffle=True, seed=config.seed
    )
    accumulate = config.gradient_accumulation
    batches_per_epoch = math.ceil(len(sampler) / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total))
    mode = config.monitor.effective_mode
    patience = _Patience(config)
    result = Result()
    epoch, skip, step = 0, 0, 0
    if resuming:
        state = torch.load(last / STATE_FILE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, skip, step = state["epoch"], state["step_in_epoch"], state["step"]
        result.best, result.best_epoch = state["best"], state["best_epoch"]
        patience.load(state.get("patience"))
        _restore_rng(
            state["rng"][place.rank] if place.rank < len(state["rng"]) else state["rng"][0]
        )
        say(f"resuming from {last}: epoch {epoch + 1}, batch {skip} of {batches_per_epoch}")
    precision = _precision(config, device)
    scaler = torch.amp.GradScaler("cuda") if precision is torch.float16 else None
    wrapped = model
    if place.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[place.local_rank] if device.type == "cuda" else None
        )
    metrics = _Metrics(place)
    made = origin.collect(config, device, world=place.world) if place.main else {}
    metrics.write_records(step, epoch, "", [origin.record_of(made, RECORD_BUDGET)])
    stop = _Stop()
    per_step = f"batch {config.batch_size} x {place.world} process(es)" + (
        f" x {accumulate} accumulated" if accumulate > 1 else ""
    )
    if augmenter is None:
        augmented = ""
    elif isinstance(config.augmentation, str):
        augmented = f", augmentation {config.augmentation}"
    else:
        augmented = ", augmentation (explicit ops)"
    say(
        f"training {config.model} on {len(train_set)} images ({len(classes)} classes, "
        f"{prep.size[0]}x{prep.size[1]} px), {config.epochs} epochs of {steps_per_epoch} "
        f"steps, {per_step}, {config.optimizer}, on {device}"
        f"{f' ({precision})' if precision else ''}{augmented}"
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
            "patience": patience.state(),
            "config": config.model_dump(mode="json"),
        }

    def checkpoint(
        folder: Path, epoch: int, in_epoch: int, files: dict[str, dict[str, Any]] | None = None
    ) -> None:
        state = state_now(epoch, in_epoch)  # (a collective under torchrun: every rank)
        if place.main:
            where = {
                "epoch": epoch,
                "batchInEpoch": in_epoch,
                "step": step,
                "savedAt": origin.now(),
            }
            files = {**(files or {}), origin.PROVENANCE_FILE: {**made, "checkpoint": where}}
            saving.save(folder, model, prep, state, files)

    wrapped.train()
    started, samples_seen = time.perf_counter(), 0
    try:
        while epoch < config.epochs and not patience.exhausted:
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
                pixels = to_pixels(images, device)
                if augmenter is not None:
                    pixels = augmenter(pixels, epoch, in_epoch)
                pixels = prep.normalise(pixels)
                # gradients of `group` batches are summed (mean over the group), and
                # synchronised between processes on its last batch only
                first = in_epoch - in_epoch % accumulate
                group = min(accumulate, len(batches) - first)
                stepping = in_epoch + 1 == first + group
                syncing = stepping or place.world == 1
                with contextlib.nullcontext() if syncing else wrapped.no_sync():
                    with torch.autocast(
                        device.type,
                        dtype=precision or torch.float32,
                        enabled=precision is not None,
                    ):
                        logits = wrapped(pixel_values=pixels, **options).logits
                    loss = F.cross_entropy(
                        logits.float(),
                        labels.to(device),
                        weight=weights,
                        label_smoothing=config.label_smoothing,
                    )
                    scaled = loss / group
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                samples_seen += len(labels) * place.world
                now = time.perf_counter()
                result.train_seconds += now - step_started
                result.samples = samples_seen
                if not stepping:
                    continue
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if result.first_step_at is None:
                    result.first_step_at = time.perf_counter()
                in_epoch_step = in_epoch // accumulate + 1
                if step % config.log_every == 0 or in_epoch + 1 == len(batches):
                    reported = loss.detach().float()
                    if place.world > 1:  # every rank logs at the same steps: the mean
                        dist.all_reduce(reported)
                        reported /= place.world
                    elapsed = time.perf_counter() - started
                    rate = samples_seen / max(elapsed, 1e-9)
                    per_sample = config.batch_size * accumulate * place.world
                    left = (total - step) * per_sample / max(rate, 1e-9)
                    metrics.write(
                        step,
                        epoch + (in_epoch + 1) / len(batches),
                        "train",
                        {"loss": float(reported), "lr": float(scheduler.get_last_lr()[0])},
                    )
                    say(
                        f"epoch {epoch + 1}/{config.epochs} step {in_epoch_step}/"
                        f"{steps_per_epoch} loss {float(reported):.4f} | {rate:.0f} samples/s"
                        f" | ETA {time.strftime('%H:%M:%S', time.gmtime(left))}"
                    )
                if stop.requested or (config.max_steps is not None and step >= config.max_steps):
                    result.stopped = "SIGTERM" if stop.requested else "max_steps"
                    checkpoint(last, epoch, in_epoch + 1)
                    if stop.requested:
                        say(
                            f"SIGTERM: saved a checkpoint at epoch {epoch + 1}, step "
                            f"{in_epoch_step} to {last}; a rerun resumes from it"
                        )
                    else:
                        say(f"stopped after {step} steps (max_steps); checkpoint in {last}")
                    result.steps, result.epochs_done = step, epoch
                    return result
            skip = 0
            epoch += 1
            files: dict[str, dict[str, Any]] = {}
            better = False
            if place.main:
                evaluation = evaluate(model, val_set, prep, device, config.batch_size * 2, options)
                metrics.evaluation(step, epoch, evaluation)
                scores = evaluation.scores
                value = scores[config.monitor.metric]
                better = result.best is None or (
                    value > result.best if mode == "max" else value < result.best
                )
                if better:
                    result.best, result.best_epoch = value, epoch
                patience.update(value)
                result.metrics = scores
                files[saving.EVALUATION_FILE] = {
                    "epoch": epoch,
                    "step": step,
                    "val": evaluation.to_dict(),
                }
                say(
                    f"epoch {epoch}/{config.epochs}: val loss {scores['loss']:.4f} accuracy "
                    f"{scores['accuracy']:.4f} f1 {scores['f1']:.4f}"
                    f"{' (best)' if better else ''}"
                )
            if place.world > 1:
                flags: list[Any] = [better, patience.state()]
                dist.broadcast_object_list(flags, src=0)
                better = bool(flags[0])
                patience.load(flags[1])
            if better and config.keep_checkpoints != "last":
                checkpoint(checkpoints / "best", epoch, 0, files)
            if config.keep_checkpoints == "every-epoch":
                checkpoint(checkpoints / f"epoch-{epoch}", epoch, 0, files)
            checkpoint(last, epoch, 0, files)
            if patience.exhausted and epoch < config.epochs:
                assert config.early_stopping is not None
                result.stopped = "early_stopping"
                say(
                    f"early stopping: val {config.monitor.metric} has not improved by more "
                    f"than {config.early_stopping.min_delta:g} for "
                    f"{config.early_stopping.patience} epoch(s); stopped after epoch "
                    f"{epoch} of {config.epochs}"
                )
        result.steps, result.epochs_done = step, epoch
        if place.main and (root / "test").is_dir():
            test_set = ImageFolder(root, "test", classes, prep.size, config.cache_bytes)
            evaluation = evaluate(model, test_set, prep, device, config.batch_size * 2, options)
            metrics.evaluation(step, epoch, evaluation)
            scores = evaluation.scores
            _add_test(last, evaluation)
            if result.best_epoch == epoch and config.keep_checkpoints != "last":
                _add_test(checkpoints / "best", evaluation)
            say(
                f"test: loss {scores['loss']:.4f} accuracy {scores['accuracy']:.4f} "
                f"f1 {scores['f1']:.4f}"
            )
        if place.main:
            ended = {**made, "endedAt": origin.now(), "epochsDone": result.epochs_done}
            metrics.write_records(step, epoch, "", [origin.record_of(ended, RECORD_BUDGET)])
        say(
            f"done: best val {config.monitor.metric} {result.best or 0:.4f} at epoch "
            f"{result.best_epoch}, {result.epochs_done} epochs in {result.train_seconds:.1f} s "
            f"of training; checkpoints in {checkpoints}"
        )
        return result
    finally:
        stop.restore()
        metrics.close()
        if place.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _add_test(folder: Path, evaluation: Evaluation) -> None:
    """The test split's scores, added to a checkpoint's evaluation.json (the model
    they were measured on: the final one)."""
    path = folder / saving.EVALUATION_FILE
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    data["test"] = evaluation.to_dict()
    saving.write_json(path, data)
