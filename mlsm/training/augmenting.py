"""Augmentation of whole training batches on the device.

The images of a batch arrive as one float tensor (B, 3, H, W) in [0, 1], on the
device the model runs on. Every op draws its parameters per image, but works on
the batch at once:

- the geometry (random resized crop, rotation, translation, horizontal flip and
  RandAugment's shears, shifts and rotations) is one affine matrix per image and one
  `grid_sample` of the batch;
- colour jitter and RandAugment's colour ops are element-wise, each image with its own
  factor (`torch.where` keeps the images an op was not drawn for).

So the cached-images path stays a few tensor operations per batch, with no
per-image Python. The parameters come from a generator seeded by (seed, epoch,
batch, rank): a resumed run augments the rest of its epoch as the first run would.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from mlsm.schemas.training import Augmentation

__all__ = ["RAND_AUGMENT_OPS", "Augmenter"]

RAND_AUGMENT_OPS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
)
"""torchvision's RandAugment ops, but equalize (a per-image histogram)."""

_GEOMETRIC = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate"}
_GRAY = (0.299, 0.587, 0.114)


def _gray(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * images + (1 - factor) * other, clamped; `factor` per image."""
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp_(0, 1)


def _uniform(random: torch.Generator, low: float, high: float, count: int) -> torch.Tensor:
    return torch.rand(count, generator=random) * (high - low) + low


def _sharpness_base(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor(
        [[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=images.device
    ).div_(13)
    kernel = kernel.expand(images.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])


class Augmenter:
    """Applies `ops` to training batches: `augmenter(images, epoch, batch)`."""

    def __init__(self, ops: Augmentation, *, seed: int, rank: int = 0) -> None:
        self.ops = ops
        self.seed, self.rank = seed, rank
        self.geometric = bool(
            ops.random_resized_crop
            or ops.rotation
            or ops.translation
            or ops.horizontal_flip
            or ops.rand_augment
        )

    def generator(self, epoch: int, batch: int) -> torch.Generator:
        key = f"{self.seed}/{epoch}/{batch}/{self.rank}".encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1
        return torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        random = self.generator(epoch, batch)
        count = images.shape[0]
        chosen: dict[str, torch.Tensor] = {}
        signs: dict[str, torch.Tensor] = {}
        if self.ops.rand_augment is not None:
            drawn = torch.randint(
                len(RAND_AUGMENT_OPS), (count, self.ops.rand_augment.ops), generator=random
            )
            for index, name in enumerate(RAND_AUGMENT_OPS):
                mask = (drawn == index).any(1)
                if name != "identity" and bool(mask.any()):
                    chosen[name] = mask
                    signs[name] = torch.randint(2, (count,), generator=random) * 2 - 1
        if self.geometric:
            images = self._geometry(images, random, chosen, signs)
        jitter = self.ops.color_jitter
        if jitter is not None:
            for name, strength in (
                ("brightness", jitter.brightness),
                ("contrast", jitter.contrast),
                ("saturation", jitter.saturation),
            ):
                if strength:
                    factor = _uniform(random, max(0.0, 1 - strength), 1 + strength, count)
                    images = self._colour(name, images, factor.to(images.device))
        if chosen:
            images = self._rand_colour(images, chosen, signs)
        return images

    def _geometry(
        self,
        images: torch.Tensor,
        random: torch.Generator,
        chosen: dict[str, torch.Tensor],
        signs: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        count = images.shape[0]

        def draw(low: float, high: float) -> torch.Tensor:
            return _uniform(random, low, high, count)

        ops = self.ops
        # Output coordinates (normalised to [-1, 1]) map to input ones: first rotation,
        # shear and translation (matrix `m`, shift `shift`), then the crop's scale and
        # place (`scale`, `centre`), the flip mirroring x.
        m = torch.eye(2).repeat(count, 1, 1)
        shift = torch.zeros(count, 2)
        angle = torch.zeros(count)
        if ops.rotation:
            angle += draw(-ops.rotation, ops.rotation)
        if ops.translation:
            shift += torch.stack([draw(-1, 1), draw(-1, 1)], 1) * (2 * ops.translation)
        magnitude = ops.rand_augment.magnitude / 30 if ops.rand_augment else 0.0
        for name in _GEOMETRIC & chosen.keys():
            amount = chosen[name].float() * signs[name].float()
            if name == "rotate":
                angle += amount * 30 * magnitude
            elif name == "shear_x":
                shear = torch.eye(2).repeat(count, 1, 1)
                shear[:, 0, 1] = amount * 0.3 * magnitude
                m = m @ shear
            elif name == "shear_y":
                shear = torch.eye(2).repeat(count, 1, 1)
                shear[:, 1, 0] = amount * 0.3 * magnitude
                m = m @ shear
            else:  # a shift of up to 150/331 of the side, as torchvision's
                axis = 0 if name == "translate_x" else 1
                shift[:, axis] += amount * 2 * (150 / 331) * magnitude
        radians = angle * (math.pi / 180)
        cos, sin = radians.cos(), radians.sin()
        rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        m = rotation @ m
        scale = torch.ones(count, 2)
        centre = torch.zeros(count, 2)
        crop = ops.random_resized_crop
        if crop is not None:
            area = draw(*crop.scale)
            log_ratio = draw(math.log(crop.ratio[0]), math.log(crop.ratio[1])).exp()
            width = (area * log_ratio).sqrt().clamp(max=1)
            height = (area / log_ratio).sqrt().clamp(max=1)
            scale = torch.stack([width, height], 1)
            centre = (torch.rand(count, 2, generator=random) * 2 - 1) * (1 - scale)
        if ops.horizontal_flip:
            flip = torch.rand(count, generator=random) < ops.horizontal_flip
            scale[:, 0] = torch.where(flip, -scale[:, 0], scale[:, 0])
        theta = torch.empty(count, 2, 3)
        theta[:, :, :2] = scale.unsqueeze(2) * m
        theta[:, :, 2] = scale * shift + centre
        theta = theta.to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )

    @staticmethod
    def _colour(name: str, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        if name == "brightness":
            return (images * factor.view(-1, 1, 1, 1)).clamp_(0, 1)
        if name == "contrast":
            mean = _gray(images).mean((1, 2, 3), keepdim=True)
            return _blend(images, mean, factor)
        if name in ("saturation", "color"):
            return _blend(images, _gray(images), factor)
        if name == "sharpness":
            return _blend(images, _sharpness_base(images), factor)
        raise ValueError(name)

    def _rand_colour(
        self, images: torch.Tensor, chosen: dict[str, torch.Tensor], signs: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        assert self.ops.rand_augment is not None
        magnitude = self.ops.rand_augment.magnitude / 30
        for name in RAND_AUGMENT_OPS:  # a fixed order
            if name not in chosen or name in _GEOMETRIC:
                continue
            mask = chosen[name].to(images.device).view(-1, 1, 1, 1)
            if name in ("brightness", "color", "contrast", "sharpness"):
                factor = (1 + signs[name].float() * 0.9 * magnitude).to(images.device)
                changed = self._colour(name, images, factor)
            elif name == "posterize":
                bits = 8 - round(4 * magnitude)
                step = float(2 ** (8 - bits))
                changed = torch.floor(images * 255 / step) * step / 255
            elif name == "solarize":
                threshold = 1 - magnitude
                changed = torch.where(images >= threshold, 1 - images, images)
            else:  # autocontrast, per image and channel
                low = images.amin((2, 3), keepdim=True)
                high = images.amax((2, 3), keepdim=True)
                span = (high - low).clamp(min=1e-6)
                changed = torch.where(high > low, (images - low) / span, images)
            images = torch.where(mask, changed, images)
        return images
