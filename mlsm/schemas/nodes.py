"""The Node manifest: admission of a compute server into the fleet."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlsm.schemas.base import API_VERSION, ObjectMeta, SpecModel
from mlsm.schemas.fields import Bytes, Cores, LabelKey, LabelValue

__all__ = ["Node", "NodeCapacity", "NodeSpec", "RuntimeName", "Taint"]

RuntimeName = Literal["venv", "docker"]


def _all_runtimes() -> list[RuntimeName]:
    return ["venv", "docker"]


class NodeCapacity(SpecModel):
    """What the node may hand out. Unset values come from the agent's own inventory."""

    gpus: int | None = Field(
        examples=[4],
        default=None,
        ge=0,
        description="GPUs jobs may use. Default: all the agent finds.",
    )
    cpu: Cores | None = Field(
        default=None, description="CPU cores jobs may use (2, or '1500m'). Default: all."
    )
    memory: Bytes | None = Field(
        default=None, description="Memory jobs may use ('200Gi'). Default: all."
    )


class Taint(SpecModel):
    """Keeps jobs off the node unless they tolerate it, as Kubernetes taints do."""

    key: LabelKey = Field(examples=["reserved"], description="Taint key, in label-key syntax.")
    value: LabelValue = Field(
        examples=["vision"], default="", description="Taint value; may be empty."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule"] = Field(
        default="NoSchedule",
        description="NoSchedule: only tolerating jobs are placed here. PreferNoSchedule: "
        "others are placed here only when nothing else fits.",
    )


class NodeSpec(SpecModel):
    """Desired state of a node. Selectors match the node's metadata.labels."""

    runtimes: list[RuntimeName] = Field(
        examples=[["venv"]],
        default_factory=_all_runtimes,
        min_length=1,
        description="Runtimes jobs may use on this node. Default: both venv and docker "
        "(the agent still reports which are actually available).",
    )
    unschedulable: bool = Field(
        default=False,
        description="Cordon: true keeps new jobs off the node; running jobs go on.",
    )
    capacity: NodeCapacity = Field(
        default_factory=NodeCapacity,
        description="Overrides of what the agent reports, e.g. to keep GPUs for people.",
    )
    taints: list[Taint] = Field(
        default_factory=list, description="Taints that keep non-tolerating jobs off."
    )


class Node(SpecModel):
    """A compute server. An agent whose node has no merged Node manifest is refused."""

    api_version: Literal["mlsm/v1"] = Field(default=API_VERSION, description="Always mlsm/v1.")
    kind: Literal["Node"] = Field(default="Node", description="Always Node.")
    metadata: ObjectMeta
    spec: NodeSpec = Field(default_factory=NodeSpec)
