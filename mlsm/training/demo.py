"""Example data made offline, for `make run` and the tests: scikit-learn's handwritten
digits written as an ImageFolder (train/, val/, test/; one folder per digit).

    python -m mlsm.training.demo digits DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["NAMES", "write_digits"]

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digits(root: Path) -> Path:
    """train/ (1,100 images), val/ (400), test/ (297) under `root`; nothing is written
    when `root/train` is there already."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if (root / "train").is_dir():
        return root
    partial = root.with_name(root.name + ".partial")
    bunch = load_digits()
    images = (bunch.images * (255 / 16)).astype(np.uint8)
    for i, (image, target) in enumerate(zip(images, bunch.target, strict=True)):
        split = "train" if i < 1100 else "val" if i < 1500 else "test"
        folder = partial / split / NAMES[int(target)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        root.rmdir()  # an empty folder left for it
    partial.rename(root)
    return root


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "digits":
        print("usage: python -m mlsm.training.demo digits DIR", file=sys.stderr)
        return 2
    print(f"digits ImageFolder in {write_digits(Path(argv[1]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
