"""A sweep: one TrainingJob's `spec.sweep`, which expands it into child jobs over
named trainer fields (`mlsm.manifests.sweeping`)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from mlsm.schemas.base import SpecModel

__all__ = [
    "MAX_CHILDREN",
    "PARALLELISM_LABEL",
    "SWEEP_LABEL",
    "SWEPT_FIELDS",
    "Sweep",
    "SweepRange",
]

SWEEP_LABEL = "mlsm.dev/sweep"
"""On each child: the job whose sweep made it."""
PARALLELISM_LABEL = "mlsm.dev/sweep-parallelism"
"""On each child of a sweep with a parallelism: that parallelism (the scheduler's limit)."""

SWEPT_FIELDS = (
    "learningRate",
    "batchSize",
    "epochs",
    "augmentation",
    "optimizer",
    "momentum",
    "weightDecay",
    "warmupRatio",
    "scheduler",
    "labelSmoothing",
    "classWeights",
    "gradientAccumulation",
    "imageSize",
    "seed",
    "model",
)
"""spec.trainer fields a sweep may vary (their YAML names)."""

MAX_CHILDREN = 1000
"""The most children any sweep may have, whatever its maxChildren says."""


def _check_field(value: str) -> str:
    if value not in SWEPT_FIELDS:
        raise ValueError(
            f"'{value}' is not a trainer field a sweep can vary; choose from "
            + ", ".join(SWEPT_FIELDS)
        )
    return value


SweptField = Annotated[str, AfterValidator(_check_field)]
Value = str | bool | int | float


class SweepRange(SpecModel):
    """A range that a random sweep draws from (uniformly, or log-uniformly)."""

    min: float = Field(examples=[0.0001], description="The lowest value.")
    max: float = Field(examples=[0.01], description="The highest value.")
    log: bool = Field(
        default=False, description="Draw log-uniformly (for learning rates and decays)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if self.log and self.min <= 0:
            raise ValueError("a log range needs min > 0")
        return self


class Sweep(SpecModel):
    """Expand this job into children, one per combination (grid) or draw (random)."""

    method: Literal["grid", "random"] = Field(
        default="grid",
        description="grid: every combination of the values, in order; random: `trials` "
        "draws, each from the values (or range) of every field.",
    )
    parameters: dict[SweptField, list[Value] | SweepRange] = Field(
        min_length=1,
        examples=[{"learningRate": [0.001, 0.003], "augmentation": ["none", "light"]}],
        description="Trainer fields and the values they take. A random sweep may also "
        "give a range: {min, max, log}.",
    )
    trials: int | None = Field(
        examples=[16],
        default=None,
        ge=1,
        le=MAX_CHILDREN,
        description="random: how many children. A larger count keeps the children "
        "already drawn (child k's draw depends only on seed and k).",
    )
    seed: int = Field(examples=[0], default=0, ge=0, description="random: the draws' seed.")
    max_children: int = Field(
        examples=[64],
        default=100,
        ge=1,
        le=MAX_CHILDREN,
        description="The most children this sweep may expand to: a larger grid is an "
        "error, not a surprise bill.",
    )
    parallelism: int | None = Field(
        examples=[4],
        default=None,
        ge=1,
        le=MAX_CHILDREN,
        description="At most this many children scheduled or running at once; the "
        "others wait (default: no limit but the fleet's).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for name, values in self.parameters.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"parameters.{name} has no values")
            if isinstance(values, SweepRange) and self.method == "grid":
                raise ValueError(
                    f"parameters.{name} is a range: a grid needs a list of values "
                    "(or use method: random)"
                )
        if self.method == "random" and self.trials is None:
            raise ValueError("a random sweep needs 'trials': how many children to draw")
        if self.method == "grid" and self.trials is not None:
            raise ValueError("trials is for method: random; a grid has one child per combination")
        count = self.size
        if count > self.max_children:
            raise ValueError(
                f"the sweep expands to {count} children, more than maxChildren "
                f"{self.max_children}: raise maxChildren or sweep fewer values"
            )
        return self

    @property
    def size(self) -> int:
        """How many children the sweep expands to."""
        if self.method == "random":
            return self.trials or 0
        count = 1
        for values in self.parameters.values():
            count *= len(values) if isinstance(values, list) else 1
        return count
