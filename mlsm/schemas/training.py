"""The built-in trainer's settings: a TrainingJob's `spec.trainer`.

Every field has a default that keeps the trainer's behaviour before it existed, so a
manifest written for an older mlsm trains the same way.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Discriminator, Field, model_validator

from mlsm.schemas.base import SpecModel, union_tag
from mlsm.schemas.datasets import check_storage_path

__all__ = [
    "AUGMENTATION_PRESETS",
    "BUILTIN_MODELS",
    "Augmentation",
    "ColorJitter",
    "EarlyStopping",
    "Monitor",
    "RandAugment",
    "RandomResizedCrop",
    "TrainerConfig",
]

BUILTIN_MODELS = ("vit-tiny", "vit-small", "vit-base", "resnet-tiny", "resnet-18")
"""Model configs the built-in trainer can build and train from scratch ('builtin:vit-tiny')."""


def _check_model(value: str) -> str:
    if value.startswith("builtin:"):
        name = value.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            choices = ", ".join(f"builtin:{m}" for m in BUILTIN_MODELS)
            raise ValueError(f"unknown built-in model '{name}'; choose one of {choices}")
        return value
    return check_storage_path(value)


def _check_range(value: list[float]) -> list[float]:
    if value[0] > value[1]:
        raise ValueError(f"must be [low, high] with low <= high, got {value}")
    return value


Range = Annotated[list[float], Field(min_length=2, max_length=2), AfterValidator(_check_range)]


class RandomResizedCrop(SpecModel):
    """A random part of each image, resized back to the input size."""

    scale: Range = Field(
        default=[0.08, 1.0],
        description="[low, high]: the share of the image's area the crop covers.",
        examples=[[0.8, 1.0]],
    )
    ratio: Range = Field(
        default=[0.75, 1.3333],
        description="[low, high]: the crop's width over its height.",
        examples=[[0.75, 1.3333]],
    )

    @model_validator(mode="after")
    def _positive(self) -> Self:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must lie in (0, 1], got {self.scale}")
        if self.ratio[0] <= 0:
            raise ValueError(f"ratio must be positive, got {self.ratio}")
        return self


class ColorJitter(SpecModel):
    """Random brightness, contrast and saturation factors in [1 - x, 1 + x]."""

    brightness: float = Field(
        examples=[0.4], default=0.0, ge=0, le=1, description="Brightness change."
    )
    contrast: float = Field(examples=[0.4], default=0.0, ge=0, le=1, description="Contrast change.")
    saturation: float = Field(
        examples=[0.4], default=0.0, ge=0, le=1, description="Saturation change."
    )


class RandAugment(SpecModel):
    """RandAugment-style: `ops` operations drawn per image from rotate, shear x/y,
    translate x/y, brightness, colour, contrast, sharpness, posterize, solarize,
    autocontrast and identity, each at `magnitude` with a random sign."""

    ops: int = Field(examples=[2], default=2, ge=1, le=8, description="Operations per image.")
    magnitude: int = Field(
        examples=[9], default=9, ge=0, le=30, description="Strength, 0 to 30 (torchvision's scale)."
    )


class Augmentation(SpecModel):
    """Explicit augmentation ops, applied to training batches in this order: the
    geometry (crop, rotation, translation, flip) as one resampling, then colour
    jitter, then RandAugment."""

    random_resized_crop: RandomResizedCrop | None = Field(
        default=None, description="Crop a random part and resize it back."
    )
    rotation: float = Field(
        examples=[10],
        default=0.0,
        ge=0,
        le=180,
        description="Rotate by up to this many degrees either way.",
    )
    translation: float = Field(
        examples=[0.1],
        default=0.0,
        ge=0,
        le=1,
        description="Shift by up to this share of the side, each axis.",
    )
    horizontal_flip: float = Field(
        examples=[0.5], default=0.0, ge=0, le=1, description="Probability of a left-right mirror."
    )
    color_jitter: ColorJitter | None = Field(default=None, description="Colour changes.")
    rand_augment: RandAugment | None = Field(
        default=None, description="Random operations per image."
    )

    @property
    def enabled(self) -> bool:
        return self != Augmentation()


AUGMENTATION_PRESETS: dict[str, Augmentation] = {
    "none": Augmentation(),
    "light": Augmentation(
        random_resized_crop=RandomResizedCrop(scale=[0.8, 1.0]), horizontal_flip=0.5
    ),
    "strong": Augmentation(
        random_resized_crop=RandomResizedCrop(scale=[0.35, 1.0]),
        horizontal_flip=0.5,
        color_jitter=ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        rand_augment=RandAugment(ops=2, magnitude=9),
    ),
}
"""What `augmentation: light` (or none, strong) stands for."""

Preset = Literal["none", "light", "strong"]


def _preset_or_ops(value: object) -> str:
    return "|preset" if isinstance(value, str) else "|ops"


AugmentationSetting = Annotated[
    Annotated[Preset, union_tag("preset")] | Annotated[Augmentation, union_tag("ops")],
    Discriminator(_preset_or_ops),
]
"""A preset's name, or explicit ops: each error names the one the value was meant as."""


class Monitor(SpecModel):
    """Which validation metric picks the best checkpoint."""

    metric: Literal["accuracy", "f1", "loss"] = Field(
        default="accuracy", description="Validation metric to watch (f1 is macro F1)."
    )
    mode: Literal["max", "min"] | None = Field(
        default=None,
        description="Whether higher or lower is better. Default: min for loss, max otherwise.",
    )

    @property
    def effective_mode(self) -> Literal["max", "min"]:
        """The mode, with the default filled in from the metric."""
        if self.mode is not None:
            return self.mode
        return "min" if self.metric == "loss" else "max"


class EarlyStopping(SpecModel):
    """Stop when the monitored metric has not improved for `patience` evaluations."""

    patience: int = Field(
        examples=[3], ge=1, le=10_000, description="Epochs without improvement before stopping."
    )
    min_delta: float = Field(
        examples=[0.001],
        default=0.0,
        ge=0,
        description="The smallest change that counts as an improvement.",
    )


class TrainerConfig(SpecModel):
    """The built-in trainer: fine-tunes a Hugging Face image classifier on an ImageFolder."""

    model: Annotated[str, AfterValidator(_check_model)] = Field(
        description="A Hugging Face model folder under the node's storage root "
        "('models/vit-base'), or a built-in config trained from scratch: "
        + ", ".join(f"'builtin:{m}'" for m in BUILTIN_MODELS)
        + ".",
        examples=["models/vit-tiny", "builtin:resnet-tiny"],
    )
    epochs: int = Field(
        examples=[10], default=3, ge=1, le=10_000, description="Passes over the train split."
    )
    batch_size: int = Field(
        examples=[64], default=32, ge=1, le=65_536, description="Samples per step per process."
    )
    gradient_accumulation: int = Field(
        examples=[4],
        default=1,
        ge=1,
        le=1024,
        description="Batches whose gradients are summed before each optimizer step (the "
        "effective batch is batchSize x this x processes).",
    )
    image_size: int | None = Field(
        examples=[32],
        default=None,
        ge=8,
        le=4096,
        description="Side in pixels that images are resized to. Default: the model's own "
        "(32 for builtin:vit-tiny and builtin:resnet-tiny, 224 for the others). A ViT "
        "folder interpolates its position embeddings to another size.",
    )
    augmentation: AugmentationSetting = Field(
        default="none",
        description="Random changes to training images (never to val or test), on whole "
        "batches on the device: a preset, or explicit ops. light: randomResizedCrop "
        "scale [0.8, 1] and horizontalFlip 0.5; strong: randomResizedCrop [0.35, 1], "
        "horizontalFlip 0.5, colorJitter 0.4 and randAugment (2 ops, magnitude 9). "
        "Handwriting and text should not be flipped: give explicit ops for them.",
        examples=["light", {"randomResizedCrop": {"scale": [0.8, 1.0]}, "rotation": 10}],
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        default="adamw", description="adamw, or sgd with momentum (Nesterov)."
    )
    learning_rate: float = Field(
        examples=[0.001], default=5e-5, gt=0, le=1, description="Peak learning rate."
    )
    momentum: float | None = Field(
        examples=[0.9],
        default=None,
        ge=0,
        lt=1,
        description="SGD momentum (optimizer sgd only). Default: 0.9.",
    )
    weight_decay: float = Field(
        examples=[0.05], default=0.0, ge=0, le=1, description="Weight decay (decoupled in adamw)."
    )
    warmup_ratio: float = Field(
        examples=[0.1],
        default=0.0,
        ge=0,
        lt=1,
        description="Share of steps spent warming the learning rate up.",
    )
    scheduler: Literal["constant", "linear", "cosine"] = Field(
        default="linear", description="Learning-rate schedule after warm-up."
    )
    label_smoothing: float = Field(
        examples=[0.1],
        default=0.0,
        ge=0,
        lt=1,
        description="Cross-entropy label smoothing (0: none).",
    )
    class_weights: Literal["none", "balanced"] = Field(
        default="none",
        description="balanced: weigh each class's loss by the inverse of its share of the "
        "train split, so that rare classes count as much as common ones.",
    )
    pretrained: bool = Field(
        default=True, description="Start from the model's weights; false trains from its config."
    )
    freeze_backbone: bool = Field(default=False, description="Train only the classification head.")
    monitor: Monitor = Field(default_factory=Monitor, description="Best-checkpoint metric.")
    early_stopping: EarlyStopping | None = Field(
        default=None, description="Stop early when the monitored metric stops improving."
    )
    keep_checkpoints: Literal["best", "last", "every-epoch"] = Field(
        default="best",
        description="best: checkpoints/best/ (the best monitored value) and "
        "checkpoints/last/ (which a retry resumes from); last: only last/; "
        "every-epoch: best/, last/ and epoch-N/ for every epoch.",
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 on CUDA where supported, off on the CPU."
    )
    seed: int = Field(
        examples=[42], default=0, ge=0, description="Seed for data order, init and augmentation."
    )
    num_workers: int = Field(
        examples=[4], default=2, ge=0, le=64, description="DataLoader worker processes."
    )

    @model_validator(mode="after")
    def _momentum_for_sgd(self) -> Self:
        if self.momentum is not None and self.optimizer != "sgd":
            raise ValueError(
                f"momentum applies to optimizer sgd; this trainer uses {self.optimizer} "
                "(set optimizer: sgd, or leave momentum out)"
            )
        return self

    @property
    def augmentation_ops(self) -> Augmentation:
        """The augmentation as explicit ops (a preset looked up)."""
        if isinstance(self.augmentation, str):
            return AUGMENTATION_PRESETS[self.augmentation]
        return self.augmentation
