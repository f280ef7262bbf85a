"""Classifying images with a saved checkpoint: top-k labels with scores."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from mlsm.errors import UserError
from mlsm.training.data import decode
from mlsm.training.models import forward_options, preprocessing_of

__all__ = ["predict"]


@torch.no_grad()
def predict(model_dir: str, images: list[str], *, top_k: int = 3) -> list[list[tuple[str, float]]]:
    """For each image, the `top_k` (label, probability) pairs, most likely first."""
    from transformers import AutoModelForImageClassification

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{folder} is not a saved model (no config.json); give a checkpoint "
            "folder such as <output>/checkpoints/best"
        )
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    prep = preprocessing_of(folder, int(getattr(model.config, "image_size", 224)))
    options = forward_options(model, prep)
    out: list[list[tuple[str, float]]] = []
    for image in images:
        try:
            pixels = decode(image, prep.size).unsqueeze(0).float() / 255
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"{image}: cannot read the image: {exc}") from exc
        logits = model(pixel_values=prep.normalise(pixels), **options).logits
        probabilities = logits.softmax(-1)[0]
        scores, indices = probabilities.topk(min(top_k, probabilities.numel()))
        labels = model.config.id2label
        out.append([(labels[int(i)], float(s)) for s, i in zip(scores, indices, strict=True)])
    return out
