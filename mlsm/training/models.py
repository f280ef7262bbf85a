"""The model: a Hugging Face image classifier from a local folder, or a built-in ViT
config trained from scratch; and its input size and normalisation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlsm.errors import UserError

__all__ = ["BUILTIN", "Preprocessing", "load_model", "preprocessing_of", "save_preprocessing"]

BUILTIN: dict[str, dict[str, Any]] = {
    "vit-tiny": {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
    },
    "vit-small": {
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
    },
    "vit-base": {
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
}


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects: resize to `size`, scale to [0, 1], then (x - mean) / std."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": self.size[0], "width": self.size[1]},
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }


def preprocessing_of(folder: Path | None, image_size: int) -> Preprocessing:
    config = folder / "preprocessor_config.json" if folder is not None else None
    if config is not None and config.is_file():
        data = json.loads(config.read_text())
        size = data.get("size", {})
        if "height" in size:
            hw = (int(size["height"]), int(size["width"]))
        else:
            side = int(size.get("shortest_edge", image_size))
            hw = (side, side)
        mean = tuple(data.get("image_mean", (0.5, 0.5, 0.5)))
        std = tuple(data.get("image_std", (0.5, 0.5, 0.5)))
        return Preprocessing(hw, mean, std)
    return Preprocessing((image_size, image_size), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def load_model(name: str, classes: list[str], *, pretrained: bool) -> tuple[Any, Preprocessing]:
    """The classifier for `classes` (label maps stored in its config) and its input."""
    from transformers import AutoConfig, AutoModelForImageClassification, ViTConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # our own lines say what matters; no load reports
    hf_logging.disable_progress_bar()

    id2label = dict(enumerate(classes))
    label2id = {c: i for i, c in enumerate(classes)}
    labels: dict[str, Any] = {
        "num_labels": len(classes),
        "id2label": id2label,
        "label2id": label2id,
    }
    if name.startswith("builtin:"):
        preset = BUILTIN.get(name.removeprefix("builtin:"))
        if preset is None:
            raise UserError(
                f"unknown built-in model '{name}'; choose builtin:{', builtin:'.join(BUILTIN)}"
            )
        config = ViTConfig(**preset, **labels)
        model = AutoModelForImageClassification.from_config(config)
        return model, preprocessing_of(None, preset["image_size"])
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise UserError(
            f"model folder {folder} has no config.json: give a folder saved with "
            "save_pretrained, or builtin:vit-tiny"
        )
    if pretrained:
        model = AutoModelForImageClassification.from_pretrained(
            folder, ignore_mismatched_sizes=True, **labels
        )
    else:
        config = AutoConfig.from_pretrained(folder, **labels)
        model = AutoModelForImageClassification.from_config(config)
    image_size = int(getattr(model.config, "image_size", 224))
    return model, preprocessing_of(folder, image_size)


def save_preprocessing(folder: Path, preprocessing: Preprocessing) -> None:
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessing.to_dict(), indent=2))
