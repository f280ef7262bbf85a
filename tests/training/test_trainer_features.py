"""The trainer's settings, each doing what its field says: the optimizer, the loss
(label smoothing, balanced class weights), gradient accumulation, early stopping,
which checkpoints are kept, the image size, augmentation of the train split only,
and the per-class evaluation in the metrics and beside each checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mlsm.training import looping
from mlsm.training.data import ImageFolder, scan_classes
from mlsm.training.evaluating import evaluate
from mlsm.training.looping import train
from mlsm.training.models import load_model
from mlsm.training.predicting import predict
from tests.training.test_trainer import config


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def stopped_early(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    """resnet-tiny with sgd, label smoothing, balanced weights, accumulation of 2,
    strong augmentation, every epoch kept; no gain can exceed minDelta 1, so it stops
    after epoch 2 of 5."""
    folder = tmp_path_factory.mktemp("features")
    run = config(digits, "builtin:resnet-tiny", folder / "out", epochs=5, optimizer="sgd",
                 momentum=0.9, learning_rate=0.05, label_smoothing=0.1,
                 class_weights="balanced", gradient_accumulation=2, augmentation="strong",
                 keep_checkpoints="every-epoch",
                 early_stopping={"patience": 1, "minDelta": 1.0})  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLSM_METRICS_FILE", str(folder / "metrics.jsonl"))
        result = train(run)
    return result, folder / "metrics.jsonl", folder / "out"


def test_early_stopping_stops_after_patience_and_a_rerun_trains_no_further(
    digits: Path, stopped_early: tuple[Any, Path, Path]
) -> None:
    result, _, out = stopped_early
    assert result.stopped == "early_stopping"
    assert result.epochs_done == 2
    # 1,100 images in batches of 32: 35 batches, 18 optimizer steps an epoch
    assert result.steps == 36
    state = torch.load(out / "checkpoints" / "last" / "trainer_state.pt", weights_only=False)
    assert state["patience"]["stale"] == 1
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9  # sgd's
    again = train(config(digits, "builtin:resnet-tiny", out, epochs=5, optimizer="sgd",
                         early_stopping={"patience": 1, "minDelta": 1.0}))  # fmt: skip
    assert again.steps == 36


def test_every_epoch_is_kept_with_its_evaluation_beside_it(
    stopped_early: tuple[Any, Path, Path],
) -> None:
    result, _, out = stopped_early
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["best", "epoch-1", "epoch-2", "last"]
    for name in kept:
        evaluation = json.loads((out / "checkpoints" / name / "evaluation.json").read_text())
        val = evaluation["val"]
        assert sum(map(sum, val["confusion"])) == 400  # every val image, once
        assert len(val["precision"]) == len(val["recall"]) == len(val["classes"]) == 10
        diagonal = sum(val["confusion"][i][i] for i in range(10))
        assert diagonal / 400 == pytest.approx(val["accuracy"])
    last = json.loads((out / "checkpoints" / "last" / "evaluation.json").read_text())
    assert last["epoch"] == 2
    assert sum(map(sum, last["test"]["confusion"])) == 297
    best = json.loads((out / "checkpoints" / "best" / "evaluation.json").read_text())
    assert best["epoch"] == result.best_epoch


def test_per_class_figures_are_in_the_metrics_and_tables_skip_them(
    stopped_early: tuple[Any, Path, Path],
) -> None:
    from mlsm import scores

    _, metrics, _ = stopped_early
    records = records_of(metrics)
    per_class = [r for r in records if r["name"] == "classes"]
    assert [r["split"] for r in per_class] == ["val", "val", "test"]
    assert len(per_class[0]["confusion"]) == 10
    assert "value" not in per_class[0]
    columns, _ = scores.per_epoch(records)
    assert not any("classes" in c for c in columns)


def test_the_val_split_is_never_augmented(
    digits: Path, stopped_early: tuple[Any, Path, Path]
) -> None:
    # The recorded val accuracy is that of the saved model on the plain val images.
    result, _, out = stopped_early
    classes = scan_classes(digits)
    model, prep = load_model(str(out / "checkpoints" / "last"), classes, pretrained=True)
    again = evaluate(model, ImageFolder(digits, "val", classes, prep.size), prep,
                     torch.device("cpu"), 64)  # fmt: skip
    assert again.scores["accuracy"] == pytest.approx(result.metrics["accuracy"])


def test_accumulating_two_half_batches_is_one_whole_batch(digits: Path, tmp_path: Path) -> None:
    # vit-tiny has no batch norm and no dropout: the same samples in one batch of 32
    # or in two of 16 give the same gradients (to float rounding), so the same weights.
    # Plain SGD, whose step is linear in the gradient: Adam divides by the gradient's
    # running size, which turns the rounding of a near-zero gradient into a step of
    # the full learning rate (a whole-batch and a half-batch run differed by 3e-5).
    plain = {"epochs": 1, "max_steps": 4, "optimizer": "sgd", "momentum": 0.0,
             "learning_rate": 1.0, "warmup_ratio": 0.0}  # fmt: skip
    whole = config(digits, "builtin:vit-tiny", tmp_path / "whole", **plain)
    halves = config(digits, "builtin:vit-tiny", tmp_path / "halves", **plain, batch_size=16,
                    gradient_accumulation=2)  # fmt: skip
    assert train(whole).steps == train(halves).steps == 4
    a, b = (load_file(tmp_path / run / "checkpoints" / "last" / "model.safetensors")
            for run in ("whole", "halves"))  # fmt: skip
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_keep_last_writes_no_best(digits: Path, tmp_path: Path) -> None:
    run = config(digits, "builtin:resnet-tiny", tmp_path / "out", epochs=1,
                 keep_checkpoints="last")  # fmt: skip
    assert train(run).best is not None
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["last"]


def test_balanced_class_weights_weigh_rare_classes_up(digits: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(digits, root)
    for image in sorted((root / "train" / "zero").iterdir())[10:]:
        image.unlink()  # 10 zeros against about 110 of every other digit
    classes = scan_classes(root)
    data = ImageFolder(root, "train", classes, (8, 8))
    run = config(root, "builtin:resnet-tiny", tmp_path / "o", class_weights="balanced")
    weights = looping._class_weights(run, data)
    assert weights is not None
    counts = torch.bincount(data.labels).double()
    torch.testing.assert_close(weights.double(), len(data) / (10 * counts), rtol=1e-5, atol=0)
    assert int(weights.argmax()) == classes.index("zero")
    assert looping._class_weights(config(root, "builtin:resnet-tiny", tmp_path / "o"), data) is None


def test_image_size_resizes_the_input_and_a_vit_interpolates_its_positions(
    digits: Path, tiny_model: Path, tmp_path: Path
) -> None:
    resnet = config(digits, "builtin:resnet-tiny", tmp_path / "r", epochs=1, max_steps=2,
                    image_size=24)  # fmt: skip
    train(resnet)
    saved = json.loads((tmp_path / "r" / "checkpoints" / "last" / "preprocessor_config.json")
                       .read_text())  # fmt: skip
    assert saved["size"] == {"height": 24, "width": 24}
    vit = config(digits, tiny_model, tmp_path / "v", epochs=1, max_steps=2, image_size=48)
    train(vit)  # a 32 px ViT folder, given 48 px images
    last = tmp_path / "v" / "checkpoints" / "last"
    image = next((digits / "val" / "three").iterdir())
    [[(_label, score), *_]] = predict(str(last), [str(image)], top_k=2)
    assert 0 < score <= 1


def test_every_checkpoint_has_its_provenance(
    digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import platform

    import transformers

    # what an agent writes before the run starts (mlsm.agent.provenance)
    agent = {"job": "j", "generation": 3, "run": "r1", "node": "n1",
             "commit": {"sha": "c0ffee", "author": "Ada", "message": "Train"},
             "dataset": {"name": "digits", "checksum": "sha256:" + "a" * 64},
             "environment": {"runtime": "venv", "requirementsHash": "abc"}}  # fmt: skip
    (tmp_path / "provenance.json").write_text(json.dumps(agent))
    monkeypatch.setenv("MLSM_PROVENANCE_FILE", str(tmp_path / "provenance.json"))
    monkeypatch.setenv("MLSM_METRICS_FILE", str(tmp_path / "metrics.jsonl"))
    run = config(digits, "builtin:resnet-tiny", tmp_path / "out", epochs=2, seed=11,
                 keep_checkpoints="every-epoch")  # fmt: skip
    train(run)
    for name in ("best", "last", "epoch-1", "epoch-2"):
        made = json.loads((tmp_path / "out" / "checkpoints" / name / "provenance.json").read_text())
        assert made["commit"] == agent["commit"]
        assert made["dataset"]["checksum"] == agent["dataset"]["checksum"]
        trainer = made["trainer"]
        assert trainer["seed"] == 11
        assert trainer["versions"]["torch"] == torch.__version__
        assert trainer["versions"]["transformers"] == transformers.__version__
        assert trainer["versions"]["python"] == platform.python_version()
        assert trainer["device"]["type"] == "cpu"
        assert trainer["device"]["name"]
        if name != "best":
            assert made["checkpoint"]["epoch"] == (2 if name == "last" else int(name[-1]))
        assert made["checkpoint"]["savedAt"] >= trainer["startedAt"]
    records = [r for r in records_of(tmp_path / "metrics.jsonl") if r["name"] == "provenance"]
    assert len(records) == 2
    assert records[0]["job"] == "j"
    assert "endedAt" not in records[0]
    assert records[1]["endedAt"] >= records[0]["trainer"]["startedAt"]
