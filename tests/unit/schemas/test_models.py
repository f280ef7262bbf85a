"""Model-level rules of Node, Dataset and TrainingJob, and their JSON Schema."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from mlsm import schemas


def job(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"runtime": {"venv": {"python": "3.11"}}, "command": ["true"]}
    base.update(spec)
    return {"apiVersion": "mlsm/v1", "kind": "TrainingJob", "metadata": {"name": "j"}, "spec": base}


def errors_of(
    data: dict[str, Any], model: type[pydantic.BaseModel] = schemas.TrainingJob
) -> list[str]:
    try:
        model.model_validate(data, by_alias=True, by_name=False)
    except pydantic.ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []


def test_a_minimal_job_is_valid_and_has_defaults() -> None:
    parsed = schemas.TrainingJob.model_validate(job(), by_alias=True, by_name=False)
    assert parsed.spec.resources.gpus == 0
    assert parsed.spec.resources.cpu == 1.0
    assert parsed.spec.nodes == 1
    assert parsed.spec.retries == 0


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        pytest.param({"runtime": {}}, "neither is set", id="no-runtime-kind"),
        pytest.param(
            {"runtime": {"venv": {}, "docker": {"image": "x"}}}, "both are set", id="two-runtimes"
        ),
        pytest.param({"command": None}, "set one of 'command' or 'trainer'", id="neither"),
        pytest.param(
            {"trainer": {"model": "builtin:vit-tiny"}, "dataset": "d"},
            "set only one of 'command' or 'trainer'",
            id="both",
        ),
        pytest.param({"resources": {"gpus": -1}}, "greater than or equal to 0", id="negative-gpus"),
        pytest.param({"command": []}, "at least 1 item", id="empty-command"),
        pytest.param({"env": {"MLSM_RUN_ID": "x"}}, "set by the agent", id="reserved-env"),
        pytest.param({"env": {"1BAD": "x"}}, "environment variable name", id="bad-env-name"),
        pytest.param({"maxDuration": "0s"}, "longer than 0s", id="zero-duration"),
        pytest.param(
            {"resources": {"cpu": "0.0001"}}, "whole number of millicores", id="cpu-grain"
        ),
        pytest.param({"resources": {"memory": -5}}, ">= 0", id="negative-memory"),
        pytest.param({"nodes": 0}, "greater than or equal to 1", id="zero-nodes"),
    ],
)
def test_job_rules(spec: dict[str, Any], fragment: str) -> None:
    errors = errors_of(job(**spec))
    assert any(fragment in e for e in errors), errors


def test_trainer_needs_a_dataset() -> None:
    errors = errors_of(job(command=None, trainer={"model": "builtin:vit-tiny"}))
    assert any("needs 'dataset'" in e for e in errors), errors


@pytest.mark.parametrize(
    ("model", "ok"),
    [("builtin:vit-tiny", True), ("models/vit", True), ("builtin:gpt", False), ("/abs", False)],
)
def test_trainer_model_reference(model: str, ok: bool) -> None:
    errors = errors_of(job(command=None, trainer={"model": model}, dataset="d"))
    assert (errors == []) is ok, errors


def test_strict_types_reject_strings_for_numbers() -> None:
    errors = errors_of(job(retries="3"))
    assert errors == ["spec.retries: Input should be a valid integer"]


def test_snake_case_keys_are_rejected_in_manifests() -> None:
    errors = errors_of(job(node_selector={"a": "b"}))
    assert errors == ["spec.node_selector: Extra inputs are not permitted"]


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        pytest.param("/data/x", "must be relative", id="absolute"),
        pytest.param("~/x", "must be relative", id="home"),
        pytest.param("a/../../etc", "must not contain '..'", id="dotdot"),
        pytest.param("..", "must not contain '..'", id="only-dotdot"),
        pytest.param("a\x00b", "control characters", id="nul"),
        pytest.param("a\nb", "control characters", id="newline"),
        pytest.param("a\\b", "must be relative", id="backslash"),
        pytest.param(".", "not the root itself", id="root"),
        pytest.param("", "must not be empty", id="empty"),
    ],
)
def test_dataset_paths_stay_under_the_storage_root(path: str, fragment: str) -> None:
    data = {
        "apiVersion": "mlsm/v1",
        "kind": "Dataset",
        "metadata": {"name": "d"},
        "spec": {"format": "files", "locations": [{"node": "n", "path": path}]},
    }
    errors = errors_of(data, schemas.Dataset)
    assert any(fragment in e for e in errors), errors


def test_dataset_checksum_format() -> None:
    data = {
        "apiVersion": "mlsm/v1",
        "kind": "Dataset",
        "metadata": {"name": "d"},
        "spec": {"format": "files", "checksum": "md5:abc"},
    }
    assert any("sha256" in e for e in errors_of(data, schemas.Dataset))


def test_node_defaults() -> None:
    node = schemas.Node.model_validate({"metadata": {"name": "n"}})
    assert node.spec.runtimes == ["venv", "docker"]
    assert node.spec.unschedulable is False
    assert node.spec.capacity.gpus is None


def test_models_are_frozen() -> None:
    node = schemas.Node.model_validate({"metadata": {"name": "n"}})
    with pytest.raises(pydantic.ValidationError):
        node.spec.unschedulable = True  # type: ignore[misc]


def test_monitor_mode_defaults_from_metric() -> None:
    assert schemas.Monitor(metric="loss").effective_mode == "min"
    assert schemas.Monitor(metric="f1").effective_mode == "max"
    assert schemas.Monitor(metric="loss", mode="max").effective_mode == "max"


def test_manifest_dict_uses_yaml_spelling() -> None:
    parsed = schemas.TrainingJob.model_validate(
        job(resources={"memory": "16Gi", "cpu": "500m"}, maxDuration="6h30m"),
        by_alias=True,
        by_name=False,
    )
    out = parsed.to_manifest_dict()
    assert out["apiVersion"] == "mlsm/v1"
    assert out["kind"] == "TrainingJob"
    assert out["spec"]["resources"] == {"cpu": "500m", "memory": "16Gi"}
    assert out["spec"]["maxDuration"] == "6h30m"


def test_json_schema_describes_every_field() -> None:
    schema = schemas.json_schema("TrainingJob")
    missing = []

    def visit(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                if "description" not in prop and "$ref" not in prop and "allOf" not in prop:
                    missing.append(f"{where}.{name}")
            for key, value in node.items():
                visit(value, f"{where}.{key}")

    visit(schema, "")
    assert missing == []
    assert schema["$schema"].startswith("https://json-schema.org/")


def test_json_schema_accepts_quantity_strings() -> None:
    schema = schemas.json_schema("TrainingJob")
    memory = schema["$defs"]["JobResources"]["properties"]["memory"]
    assert "16Gi" in str(memory)


def test_union_schema_discriminates_on_kind() -> None:
    schema = schemas.json_schema()
    assert schema["discriminator"]["propertyName"] == "kind"


@pytest.mark.parametrize("owner", ["\x85", " alice", "al\nice", ""])
def test_owner_is_a_plain_identity(owner: str) -> None:
    data = {"apiVersion": "mlsm/v1", "kind": "Node", "metadata": {"name": "n", "owner": owner}}
    assert errors_of(data, schemas.Node) != []


@pytest.mark.parametrize("cpu", [1.001, 0.3, 2.675, "1001m"])
def test_cpu_in_whole_millicores_is_accepted_despite_float_noise(cpu: float | str) -> None:
    assert errors_of(job(resources={"cpu": cpu})) == []


def trainer_errors(**trainer: Any) -> list[str]:
    values = {"model": "builtin:resnet-tiny", **trainer}
    return errors_of(job(command=None, trainer=values, dataset="d"))


def test_trainer_defaults_keep_the_trainer_as_it_was() -> None:
    parsed = schemas.TrainingJob.model_validate(
        job(command=None, trainer={"model": "builtin:vit-tiny"}, dataset="d")
    )
    trainer = parsed.spec.trainer
    assert trainer is not None
    assert (trainer.optimizer, trainer.label_smoothing, trainer.class_weights) == (
        "adamw", 0.0, "none")  # fmt: skip
    assert (trainer.gradient_accumulation, trainer.early_stopping) == (1, None)
    assert (trainer.image_size, trainer.keep_checkpoints) == (None, "best")
    assert not trainer.augmentation_ops.enabled


@pytest.mark.parametrize(
    ("trainer", "fragment"),
    [
        pytest.param({"augmentation": "medium"}, "'none', 'light' or 'strong'", id="preset"),
        pytest.param({"augmentation": {"flip": 0.5}}, "Extra inputs", id="unknown-op"),
        pytest.param(
            {"augmentation": {"randomResizedCrop": {"scale": [0.5, 1.5]}}},
            "scale must lie in (0, 1]",
            id="crop-scale",
        ),
        pytest.param(
            {"augmentation": {"randomResizedCrop": {"ratio": [2, 1]}}},
            "low <= high",
            id="crop-ratio",
        ),
        pytest.param({"augmentation": {"horizontalFlip": 2}}, "less than or equal to 1", id="p"),
        pytest.param({"augmentation": {"randAugment": {"magnitude": 31}}}, "30", id="magnitude"),
        pytest.param({"momentum": 0.9}, "momentum applies to optimizer sgd", id="momentum"),
        pytest.param({"optimizer": "lion"}, "'adamw' or 'sgd'", id="optimizer"),
        pytest.param({"labelSmoothing": 1.0}, "less than 1", id="smoothing"),
        pytest.param({"classWeights": "inverse"}, "'none' or 'balanced'", id="weights"),
        pytest.param({"earlyStopping": {}}, "Field required", id="patience"),
        pytest.param({"gradientAccumulation": 0}, "greater than or equal to 1", id="accum"),
        pytest.param({"keepCheckpoints": "all"}, "'every-epoch'", id="keep"),
        pytest.param({"imageSize": 4}, "greater than or equal to 8", id="size"),
    ],
)
def test_trainer_rules(trainer: dict[str, Any], fragment: str) -> None:
    errors = trainer_errors(**trainer)
    assert any(fragment in e for e in errors), errors


def test_augmentation_is_a_preset_or_explicit_ops() -> None:
    assert trainer_errors(augmentation="light") == []
    assert trainer_errors(augmentation={"rotation": 10, "colorJitter": {"contrast": 0.2}}) == []
    light = schemas.AUGMENTATION_PRESETS["light"]
    assert light.random_resized_crop is not None
    assert light.horizontal_flip == 0.5
