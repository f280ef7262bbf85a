"""Pydantic models of the manifests: Node, Dataset and TrainingJob.

Imports pydantic and nothing else of mlsm's I/O: every component shares them.
"""

from mlsm.schemas.base import API_VERSION, ObjectMeta, SpecModel, is_union_tag, union_tag
from mlsm.schemas.datasets import Dataset, DatasetLocation, DatasetSpec
from mlsm.schemas.jobs import (
    DockerRuntime,
    JobResources,
    JobRuntime,
    Toleration,
    TrainingJob,
    TrainingJobSpec,
    VenvRuntime,
)
from mlsm.schemas.kinds import KINDS, Manifest, json_schema
from mlsm.schemas.nodes import Node, NodeCapacity, NodeSpec, Taint
from mlsm.schemas.sweeps import Sweep, SweepRange
from mlsm.schemas.training import (
    AUGMENTATION_PRESETS,
    BUILTIN_MODELS,
    Augmentation,
    EarlyStopping,
    Monitor,
    TrainerConfig,
)

__all__ = [
    "API_VERSION",
    "AUGMENTATION_PRESETS",
    "BUILTIN_MODELS",
    "KINDS",
    "Augmentation",
    "Dataset",
    "DatasetLocation",
    "DatasetSpec",
    "DockerRuntime",
    "EarlyStopping",
    "JobResources",
    "JobRuntime",
    "Manifest",
    "Monitor",
    "Node",
    "NodeCapacity",
    "NodeSpec",
    "ObjectMeta",
    "SpecModel",
    "Sweep",
    "SweepRange",
    "Taint",
    "Toleration",
    "TrainerConfig",
    "TrainingJob",
    "TrainingJobSpec",
    "VenvRuntime",
    "is_union_tag",
    "json_schema",
    "union_tag",
]
