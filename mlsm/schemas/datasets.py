"""The Dataset manifest: a catalog entry for data on the nodes' own disks."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from mlsm.schemas.base import API_VERSION, ObjectMeta, SpecModel
from mlsm.schemas.fields import ResourceName

__all__ = [
    "Dataset",
    "DatasetLocation",
    "DatasetSpec",
    "StoragePath",
    "check_checksum",
    "check_storage_path",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")


def check_storage_path(value: str) -> str:
    """A path under an agent's storage root: relative, no '..', nothing that could escape."""
    if not value:
        raise ValueError(
            "must not be empty; give a path under the storage root, e.g. 'datasets/cats'"
        )
    if _CONTROL.search(value):
        raise ValueError("must not contain NUL or control characters")
    if value.startswith(("/", "~")) or "\\" in value:
        raise ValueError(
            f"must be relative to the node's storage root, got '{value}'; "
            "write it without the leading '/', e.g. 'datasets/cats'"
        )
    parts = value.split("/")
    if ".." in parts:
        raise ValueError(f"must not contain '..' (it would leave the storage root), got '{value}'")
    if all(part in ("", ".") for part in parts):
        raise ValueError("must name a folder under the storage root, not the root itself")
    return value


StoragePath = Annotated[str, AfterValidator(check_storage_path)]


def check_checksum(value: str) -> str:
    if not _CHECKSUM.fullmatch(value):
        raise ValueError("must be 'sha256:' followed by 64 lowercase hex digits")
    return value


class DatasetLocation(SpecModel):
    """One copy of the dataset on one node's disk."""

    node: ResourceName = Field(
        examples=["gpu-1"], description="Name of the Node that holds this copy."
    )
    path: StoragePath = Field(
        description="Folder relative to that node's storage root (no '..', not absolute).",
        examples=["datasets/digits"],
    )


class DatasetSpec(SpecModel):
    """Where the data lies and how to read it."""

    format: Literal["imagefolder", "files"] = Field(
        description="imagefolder: train/ and val/ (test/ optional) with one folder per "
        "class. files: any files, passed to the job as they are."
    )
    locations: list[DatasetLocation] = Field(
        default_factory=list,
        description="Nodes that hold a copy. Jobs using the dataset run only where an "
        "agent reports it present.",
    )
    checksum: Annotated[str, AfterValidator(check_checksum)] | None = Field(
        examples=["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
        default=None,
        description="Expected checksum of the whole tree ('sha256:...'), as agents report it.",
    )
    replicate: bool = Field(
        default=False, description="Whether the data may be copied to other nodes."
    )
    description: str = Field(
        examples=["ImageNet-1k, train and val splits"],
        default="",
        description="What the data is, for people.",
    )


class Dataset(SpecModel):
    """A dataset that lives on nodes' own disks (there is no shared filesystem)."""

    api_version: Literal["mlsm/v1"] = Field(default=API_VERSION, description="Always mlsm/v1.")
    kind: Literal["Dataset"] = Field(default="Dataset", description="Always Dataset.")
    metadata: ObjectMeta
    spec: DatasetSpec
