"""ImageFolder data: `root/<split>/<class>/<image>`, decoded and resized once.

Images are decoded, converted to RGB and resized to the model's input size as
uint8 tensors; normalisation happens on whole batches on the device. When the
decoded split fits `cache_bytes`, it is decoded once up front (in a thread pool:
PIL releases the GIL) and kept in memory, so the loop never waits on JPEG decoding;
otherwise DataLoader workers decode on the fly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mlsm.errors import UserError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "check_split",
    "decode",
    "scan_classes",
    "to_pixels",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def check_split(root: Path, split: str) -> Path:
    """The split's folder; a one-line error naming it when it is missing."""
    folder = root / split
    if not folder.is_dir():
        raise UserError(
            f"dataset split '{split}' is missing: expected the folder {folder} with one "
            "folder of images per class"
        )
    return folder


def scan_classes(root: Path, split: str = "train") -> list[str]:
    folder = check_split(root, split)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(
            f"{folder} has no class folders: put each class's images in {folder}/<class name>/"
        )
    return classes


def decode(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """One image as a uint8 CHW tensor of `size` (height, width)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def to_pixels(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images on `device` as floats in [0, 1]."""
    return images.to(device, non_blocking=True).float() / 255


@dataclass
class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """One split. `classes` come from the train split, so labels agree across splits."""

    root: Path
    split: str
    classes: Sequence[str]
    size: tuple[int, int]
    cache_bytes: int = 2 << 30

    def __post_init__(self) -> None:
        folder = check_split(self.root, self.split)
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for entry in sorted(p for p in folder.iterdir() if p.is_dir()):
            if entry.name not in index:
                raise UserError(
                    f"class folder {entry} is not in the train split's classes "
                    f"({', '.join(self.classes)})"
                )
            images = sorted(str(p) for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images and self.split == "train":
                raise UserError(f"class folder {entry} has no images ({', '.join(IMAGE_SUFFIXES)})")
            self.samples += [(p, index[entry.name]) for p in images]
        if not self.samples:
            raise UserError(f"dataset split {folder} has no images")
        self.labels = torch.tensor([label for _, label in self.samples])
        self.cached = len(self.samples) * 3 * self.size[0] * self.size[1] <= self.cache_bytes
        self._cache: torch.Tensor | None = None

    @property
    def cache(self) -> torch.Tensor | None:
        """Every image decoded (on first use, so a split is decoded when it is needed),
        or None when the split is too large to keep."""
        if self.cached and self._cache is None:
            self._cache = self._decode_all()
        return self._cache

    def _decode_all(self) -> torch.Tensor:
        out = torch.empty((len(self.samples), 3, *self.size), dtype=torch.uint8)

        def fill(i: int) -> None:
            out[i] = decode(self.samples[i][0], self.size)

        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            list(pool.map(fill, range(len(self.samples))))
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        cache = self.cache
        return (cache[i] if cache is not None else decode(self.samples[i][0], self.size)), (
            self.samples[i][1]
        )

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch from the cache in one indexing operation (no per-sample calls)."""
        assert self.cache is not None
        return self.cache[indices], self.labels[indices]
