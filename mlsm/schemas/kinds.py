"""The registry of manifest kinds and their JSON Schema."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from mlsm.schemas.base import API_VERSION
from mlsm.schemas.datasets import Dataset
from mlsm.schemas.jobs import TrainingJob
from mlsm.schemas.nodes import Node

__all__ = ["KINDS", "Manifest", "json_schema"]

Manifest = Annotated[Node | Dataset | TrainingJob, Field(discriminator="kind")]
"""Any manifest, discriminated on `kind`."""

KINDS: dict[str, type[Node] | type[Dataset] | type[TrainingJob]] = {
    "Node": Node,
    "Dataset": Dataset,
    "TrainingJob": TrainingJob,
}

_SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


def json_schema(kind: str | None = None) -> dict[str, Any]:
    """The JSON Schema of one kind, or of any manifest when `kind` is None."""
    if kind is None:
        schema = TypeAdapter(Manifest).json_schema(mode="validation", by_alias=True)
        schema["title"] = f"mlsm manifest ({API_VERSION})"
    else:
        schema = KINDS[kind].model_json_schema(mode="validation", by_alias=True)
    return {"$schema": _SCHEMA_URI, **schema}
