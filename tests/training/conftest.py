"""Offline test data for the trainer: scikit-learn's digits as an ImageFolder of PNGs,
and a tiny ViT saved locally (no hub downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ (1,100 images), val/ (400), test/ (297), one folder per digit name."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    bunch = load_digits()
    images = (bunch.images * (255 / 16)).astype(np.uint8)
    for i, (image, target) in enumerate(zip(images, bunch.target, strict=True)):
        split = "train" if i < 1100 else "val" if i < 1500 else "test"
        folder = root / split / NAMES[int(target)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT (32x32 input) saved with save_pretrained, as a user would ship one."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vit-tiny")
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=128, num_labels=2)  # fmt: skip
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
