"""The built-in trainer on real (small) data: learning, metrics, checkpoints, resume,
SIGTERM, torchrun with two processes, and a checkpoint that classifies on its own,
through mlsmctl and through an agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mlsm.errors import UserError
from mlsm.training.__main__ import main
from mlsm.training.config import RunConfig
from mlsm.training.demo import NAMES
from mlsm.training.looping import train


def config(digits: Path, model: Path | str, output: Path, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = {"model": str(model), "dataset_root": str(digits),
                              "output_dir": str(output), "epochs": 4, "batch_size": 32,
                              "learning_rate": 3e-3, "warmup_ratio": 0.1, "seed": 7,
                              "num_workers": 0}  # fmt: skip
    return RunConfig.model_validate(values | overrides)


def write_config(path: Path, run: RunConfig) -> Path:
    path.write_text(run.model_dump_json(by_alias=True))
    return path


@pytest.fixture(scope="module")
def trained(
    digits: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Path, Path]:
    """One 4-epoch run that two tests read: its result, metrics file and output."""
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLSM_METRICS_FILE", str(folder / "metrics.jsonl"))
        result = train(config(digits, tiny_model, folder / "out"))
    return result, folder / "metrics.jsonl", folder / "out"


def test_training_learns_and_records_metrics_and_checkpoints(
    trained: tuple[Any, Path, Path],
) -> None:
    result, metrics_file, out = trained
    assert result.stopped == ""
    assert result.best is not None
    assert result.best > 0.3  # chance is 0.1
    assert result.metrics["f1"] > 0.2
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert {r["split"] for r in records if "value" in r} == {"train", "val", "test"}
    assert set(records[1]) == {"step", "epoch", "split", "name", "value", "time"}
    # the first record is the run's provenance, the last its end
    assert (records[0]["name"], records[-1]["name"]) == ("provenance", "provenance")
    assert "endedAt" in records[-1]
    val = [r for r in records if r["split"] == "val" and r["name"] == "accuracy"]
    assert len(val) == 4
    for name in ("best", "last"):
        folder = out / "checkpoints" / name
        assert (folder / "model.safetensors").is_file()
        assert (folder / "preprocessor_config.json").is_file()
        config_json = json.loads((folder / "config.json").read_text())
        assert config_json["id2label"] == {str(i): n for i, n in enumerate(sorted(NAMES))}


def test_a_builtin_model_learns_from_scratch_and_a_resumed_run_ends_where_a_whole_one_does(
    digits: Path, tmp_path: Path
) -> None:
    model = "builtin:vit-tiny"  # no pretrained folder: made from its config
    whole = train(config(digits, model, tmp_path / "whole", epochs=2))
    assert whole.best is not None
    assert whole.best > 0.2  # chance is 0.1
    # 1,100 images in batches of 32: 35 steps an epoch; stop in the middle of epoch 2
    part = train(config(digits, model, tmp_path / "parts", epochs=2, max_steps=50))
    assert part.stopped == "max_steps"
    rest = train(config(digits, model, tmp_path / "parts", epochs=2))
    assert rest.steps == whole.steps == 70
    final = [load_file(tmp_path / run / "checkpoints" / "last" / "model.safetensors")
             for run in ("whole", "parts")]  # fmt: skip
    assert final[0].keys() == final[1].keys()
    for key in final[0]:
        torch.testing.assert_close(final[0][key], final[1][key], rtol=0, atol=1e-6)


def test_sigterm_mid_epoch_leaves_a_loadable_checkpoint(
    digits: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageClassification

    run = config(digits, tiny_model, tmp_path / "out", epochs=50, batch_size=16, log_every=1)
    process = subprocess.Popen(
        [sys.executable, "-m", "mlsm.training", "--config",
         str(write_config(tmp_path / "run.json", run))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("epoch 1/50 step 5/"):
            process.send_signal(signal.SIGTERM)
            break
    rest = process.stdout.read()
    assert process.wait(60) == 143
    assert "SIGTERM: saved a checkpoint at epoch 1, step" in rest
    last = tmp_path / "out" / "checkpoints" / "last"
    model = AutoModelForImageClassification.from_pretrained(last)
    assert model.config.id2label[0] == "eight"
    state = torch.load(last / "trainer_state.pt", weights_only=False)
    assert state["epoch"] == 0
    assert state["step_in_epoch"] >= 5


def test_torchrun_with_two_processes_writes_one_checkpoint(
    digits: Path, tiny_model: Path, tmp_path: Path
) -> None:
    run = write_config(
        tmp_path / "run.json", config(digits, tiny_model, tmp_path / "out", epochs=1)
    )
    env = {**os.environ, "MLSM_METRICS_FILE": str(tmp_path / "metrics.jsonl")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "-m", "mlsm.training", "--config", str(run)],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "batch 32 x 2 process(es)" in done.stdout
    assert done.stdout.count("done: best val accuracy") == 1  # rank 0 speaks
    checkpoints = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert checkpoints == ["best", "last"]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if r["split"] == "val" and r["name"] == "accuracy"]) == 1


def test_a_checkpoint_classifies_on_its_own(
    digits: Path, trained: tuple[Any, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForImageClassification, ViTImageProcessorPil

    from mlsm.training.predicting import predict

    best = trained[2] / "checkpoints" / "best"
    model = AutoModelForImageClassification.from_pretrained(best).eval()
    processor = ViTImageProcessorPil.from_pretrained(best)
    images = sorted((digits / "val").glob("*/*.png"))[::20]
    from PIL import Image

    right = 0
    for path in images:
        with Image.open(path) as image:
            inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            label = model.config.id2label[int(model(**inputs).logits.argmax(-1))]
        assert label in NAMES
        right += label == path.parent.name
    assert right / len(images) > 0.3
    ranked = predict(str(best), [str(p) for p in images], top_k=3)
    assert all(len(r) == 3 and r[0][1] >= r[1][1] >= r[2][1] for r in ranked)
    assert sum(r[0][0] == p.parent.name for r, p in zip(ranked, images, strict=True)) == right
    assert main(["predict", str(best), str(images[0]), "--top-k", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"{images[0]}: {ranked[0][0][0]} ")

    # mlsmctl predict with a checkpoint folder here: the same labels, from a child process
    shown = subprocess.run(
        [sys.executable, "-m", "mlsm.cli", "predict", "job", "any", "--checkpoint",
         str(trained[2] / "checkpoints"), *map(str, images[:3]), "-o", "json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    assert answer["source"] == f"{best} (on this machine)"
    assert [p["labels"][0][0] for p in answer["predictions"]] == [r[0][0] for r in ranked[:3]]


def test_an_agent_predicts_with_its_own_copy_of_the_jobs_checkpoint(
    digits: Path, trained: tuple[Any, Path, Path], tmp_path: Path
) -> None:
    import base64
    import shutil

    from mlsm.agent.client import Complaints
    from mlsm.agent.predicting import Predictor
    from mlsm.training.predicting import predict

    root = tmp_path / "storage"
    shutil.copytree(trained[2] / "checkpoints" / "best",
                    root / "jobs" / "digits" / "output" / "checkpoints" / "best")  # fmt: skip
    agent = Predictor(None, root, tmp_path / "state", Complaints())  # type: ignore[arg-type]
    image = sorted((digits / "val").glob("*/*.png"))[0]
    data = base64.b64encode(image.read_bytes()).decode()
    answer = agent.predict(
        {"job": "digits", "topK": 2, "images": [{"name": "mine.png", "data": data}]}
    )
    expected = predict(str(trained[2] / "checkpoints" / "best"), [str(image)], top_k=2)
    assert answer["checkpoint"] == "best"
    assert [[label for label, _ in r] for r in answer["labels"]] == [
        [label for label, _ in r] for r in expected
    ]
    assert list((tmp_path / "state" / "predictions").iterdir()) == []  # the copies are gone

    junk = base64.b64encode(b"not an image").decode()
    unreadable = agent.predict(
        {"job": "digits", "images": [{"name": "mine.png", "data": data},
                                     {"name": "notes.txt", "data": junk}]}
    )  # fmt: skip
    assert unreadable["status"] == 400
    assert unreadable["error"].startswith("notes.txt: cannot read the image")

    assert agent.predict({"job": "other", "images": []})["status"] == 409
    assert agent.predict({"job": "../digits", "images": []})["status"] == 400
    outside = tmp_path / "elsewhere"
    shutil.copytree(trained[2] / "checkpoints" / "best", outside / "best")
    (root / "jobs" / "linked" / "output").mkdir(parents=True)
    (root / "jobs" / "linked" / "output" / "checkpoints").symlink_to(outside)
    linked = agent.predict({"job": "linked", "images": [{"name": "x", "data": data}]})
    assert linked["status"] == 409  # a link out of the storage root is not followed

    # the classifier runs in the venv that trained the checkpoint, when it is here
    made = tmp_path / "made"
    made.mkdir()
    venv = {"environment": {"runtime": "venv", "requirementsHash": "0123abcd"}}
    (made / "provenance.json").write_text(json.dumps(venv))
    assert agent.python_for(made) == sys.executable  # not built on this node
    (root / "envs" / "0123abcd" / "bin").mkdir(parents=True)
    (root / "envs" / "0123abcd" / "bin" / "python").write_text("")
    assert agent.python_for(made) == str(root / "envs" / "0123abcd" / "bin" / "python")
    venv["environment"]["requirementsHash"] = "../../elsewhere"
    (made / "provenance.json").write_text(json.dumps(venv))
    assert agent.python_for(made) == sys.executable


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        pytest.param("no-val", "dataset split 'val' is missing: expected the folder", id="no-val"),
        pytest.param("empty-class", "has no images", id="empty-class"),
    ],
)
def test_bad_data_is_named_with_its_folder(
    digits: Path, tiny_model: Path, tmp_path: Path, breakage: str, message: str
) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(digits / "train", root / "train")
    if breakage == "empty-class":
        shutil.copytree(digits / "val", root / "val")
        (root / "train" / "ten").mkdir()
    with pytest.raises(UserError, match=message):
        train(config(root, tiny_model, tmp_path / "out", epochs=1))
    if breakage != "no-val":
        return  # the command line's handling of it is the same for both: shown once
    written = write_config(tmp_path / "c.json", config(root, tiny_model, tmp_path / "o", epochs=1))
    done = subprocess.run(
        [sys.executable, "-m", "mlsm.training", "--config", str(written)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_yaml_config_is_read_and_a_bad_one_is_named(tmp_path: Path) -> None:
    from mlsm.training.config import load_config

    good = tmp_path / "run.yaml"
    good.write_text("model: builtin:vit-tiny\ndatasetRoot: /data\noutputDir: /out\nepochs: 2\n"
                    "monitor: {metric: f1}\nmixedPrecision: no\n")  # fmt: skip
    run = load_config(str(good))
    assert (run.epochs, run.monitor.metric, run.mixed_precision) == (2, "f1", "no")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: builtin:vit-tiny\ndatasetRoot: /data\noutputDir: /out\nepochs: 0\n")
    with pytest.raises(UserError, match=r"bad\.yaml: epochs: Input should be greater than"):
        load_config(str(bad))
    with pytest.raises(UserError, match="cannot read the config"):
        load_config(str(tmp_path / "missing.yaml"))
