"""`mlsmctl predict job NAME IMAGE...` picks where the checkpoint is read: here when
the run's folder is on this machine and its provenance says it is that job's on that
node, else through the controller; what it cannot do it says before asking anyone.
(The classifier itself runs in tests/training/test_trainer.py, the relay through a
real agent in tests/integration/test_up.py.)"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from mlsm.cli import predicting
from mlsm.errors import UserError


class FakeClient:
    """The controller as `mlsmctl` sees it (`mlsm.cli.client.Client`)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.posted: list[tuple[str, Any, dict[str, Any]]] = []

    def object(self, kind: str, name: str) -> dict[str, Any]:
        return self.job

    def post(self, path: str, body: Any, **options: Any) -> Any:
        self.posted.append((path, body, options))
        return {"job": "digits", "run": "r2", "node": "gpu-1", "checkpoint": "best",
                "predictions": [{"image": i["name"], "labels": [["7", 0.9]]}
                                for i in body["images"]]}  # fmt: skip


def _job(output: Path, **spec: Any) -> dict[str, Any]:
    runs = [
        {"id": "r1", "attempt": 1, "rank": 0, "node": "gpu-2", "outputDir": "/elsewhere",
         "createdAt": "2026-12-01T10:00:00Z"},
        {"id": "r2", "attempt": 2, "rank": 0, "node": "gpu-1", "outputDir": str(output),
         "createdAt": "2026-12-01T11:00:00Z"},
    ]  # fmt: skip
    return {"spec": {"trainer": {"model": "builtin:resnet-tiny"}, **spec}, "runs": runs,
            "status": {"phase": "Succeeded"}}  # fmt: skip


def _checkpoint(output: Path, **provenance: Any) -> Path:
    best = output / "checkpoints" / "best"
    best.mkdir(parents=True)
    (best / "config.json").write_text("{}")
    (best / "provenance.json").write_text(json.dumps(provenance))
    return best


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "seven.png"
    path.write_bytes(b"\x89PNG not really")
    return path


@pytest.fixture
def classified(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    seen: list[Path] = []

    def classify(checkpoint: Path, images: list[Path], **options: Any) -> Any:
        seen.append(checkpoint)
        return [[["7", 0.8]] for _ in images]

    monkeypatch.setattr(predicting, "classify", classify)
    return seen


def test_a_checkpoint_on_this_machine_is_read_here(
    tmp_path: Path, image: Path, classified: list[Path]
) -> None:
    best = _checkpoint(tmp_path / "out", job="digits", node="gpu-1")
    client = FakeClient(_job(tmp_path / "out"))
    found = predicting.predict_job(client, "digits", [image], top_k=1, timeout=5, remote=False)  # type: ignore[arg-type]
    assert classified == [best]
    assert client.posted == []
    assert found.source == f"gpu-1:{best} (on this machine)"
    assert predicting.render(found) == (
        f"checkpoint: gpu-1:{best} (on this machine)\n{image}   7 0.800\n"
    )


@pytest.mark.parametrize(
    "provenance",
    [
        pytest.param({"job": "digits", "node": "gpu-7"}, id="another-node"),
        pytest.param({"job": "other", "node": "gpu-1"}, id="another-job"),
        pytest.param(None, id="remote-asked"),
    ],
)
def test_otherwise_the_images_go_through_the_nodes_agent(
    tmp_path: Path, image: Path, classified: list[Path], provenance: dict[str, str] | None
) -> None:
    _checkpoint(tmp_path / "out", **(provenance or {"job": "digits", "node": "gpu-1"}))
    client = FakeClient(_job(tmp_path / "out"))
    found = predicting.predict_job(client, "digits", [image], top_k=2, timeout=30,  # type: ignore[arg-type]
                                   remote=provenance is None)  # fmt: skip
    assert classified == []
    [(path, body, options)] = client.posted
    assert path == "/jobs/digits/predict"
    assert body == {"topK": 2, "images": [
        {"name": str(image), "data": base64.b64encode(image.read_bytes()).decode()}
    ]}  # fmt: skip
    assert options == {"params": {"wait": 30}, "timeout": 45}
    assert found.source == f"gpu-1:{tmp_path / 'out'}/checkpoints/best (through the node's agent)"
    assert found.as_json()["predictions"] == [{"image": str(image), "labels": [["7", 0.9]]}]


@pytest.mark.parametrize(
    ("job", "images", "message"),
    [
        pytest.param({"spec": {"command": ["python", "x.py"]}, "runs": []}, ["seven.png"],
                     "job digits runs its own code (no spec.trainer)", id="command-job"),
        pytest.param({"spec": {"trainer": {"model": "m"}}, "runs": [],
                      "status": {"phase": "Pending"}},
                     ["seven.png"], "job digits has no run that wrote checkpoints yet (phase "
                     "Pending)", id="no-run"),
        pytest.param(None, ["missing.png"], "missing.png: no such file", id="missing-image"),
        pytest.param(None, ["seven.png"] * 65, "65 images; at most 64 at a time", id="too-many"),
    ],
)  # fmt: skip
def test_what_cannot_work_is_said_before_asking(
    tmp_path: Path, image: Path, job: dict[str, Any] | None, images: list[str], message: str
) -> None:
    client = FakeClient(job or _job(tmp_path / "out"))
    paths = [tmp_path / name for name in images]
    with pytest.raises(UserError) as caught:
        predicting.predict_job(client, "digits", paths, top_k=1, timeout=5, remote=False)  # type: ignore[arg-type]
    assert str(caught.value).removeprefix(f"{tmp_path}/").startswith(message)
    assert client.posted == []


def test_a_folder_that_is_not_a_checkpoint_is_named(tmp_path: Path, image: Path) -> None:
    with pytest.raises(UserError, match=r"is not a saved checkpoint \(no config.json\)"):
        predicting.predict_here(tmp_path, [image], top_k=1, timeout=5)
