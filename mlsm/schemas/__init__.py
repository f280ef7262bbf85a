"""Pydantic models of the manifests: Node, Dataset and TrainingJob.

Imports pydantic and nothing else of mlsm's I/O: every component shares them.
"""

from mlsm.schemas.base import API_VERSION, ObjectMeta, SpecModel
from mlsm.schemas.datasets import Dataset, DatasetLocation, DatasetSpec
from mlsm.schemas.jobs import (
    BUILTIN_MODELS,
    DockerRuntime,
    JobResources,
    JobRuntime,
    Monitor,
    Toleration,
    TrainerConfig,
    TrainingJob,
    TrainingJobSpec,
    VenvRuntime,
)
from mlsm.schemas.kinds import KINDS, Manifest, json_schema
from mlsm.schemas.nodes import Node, NodeCapacity, NodeSpec, Taint

__all__ = [
    "API_VERSION",
    "BUILTIN_MODELS",
    "KINDS",
    "Dataset",
    "DatasetLocation",
    "DatasetSpec",
    "DockerRuntime",
    "JobResources",
    "JobRuntime",
    "Manifest",
    "Monitor",
    "Node",
    "NodeCapacity",
    "NodeSpec",
    "ObjectMeta",
    "SpecModel",
    "Taint",
    "Toleration",
    "TrainerConfig",
    "TrainingJob",
    "TrainingJobSpec",
    "VenvRuntime",
    "json_schema",
]
