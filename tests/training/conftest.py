"""Offline test data for the trainer: scikit-learn's digits as an ImageFolder of PNGs,
and a tiny ViT saved locally (no hub downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlsm.training.demo import write_digits

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ (1,100 images), val/ (400), test/ (297), one folder per digit name."""
    return write_digits(tmp_path_factory.mktemp("data") / "digits")


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
