"""The base model and the metadata every manifest carries.

Models of what users write are strict (unknown keys rejected, no string-to-number
coercion, frozen). Field names are snake_case in Python and camelCase in YAML.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Tag
from pydantic.alias_generators import to_camel

from mlsm.schemas.fields import Labels, ResourceName

__all__ = ["API_VERSION", "ObjectMeta", "SpecModel", "is_union_tag", "union_tag"]

API_VERSION: Final = "mlsm/v1"

_TAG_MARK = "|"


def union_tag(name: str) -> Tag:
    """The tag of one member of a discriminated union (a field that takes, say, a
    preset's name or a mapping). Pydantic puts it in an error's location; marked so
    that the manifest validator drops it and points at the field users wrote."""
    return Tag(_TAG_MARK + name)


def is_union_tag(step: str | int) -> bool:
    return isinstance(step, str) and step.startswith(_TAG_MARK)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_owner(value: str) -> str:
    if _CONTROL.search(value) or value != value.strip():
        raise ValueError(
            "must be a username or e-mail without control characters or surrounding spaces"
        )
    return value


class SpecModel(BaseModel):
    """Base of every model users write in a manifest."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        use_attribute_docstrings=False,
    )

    def to_manifest_dict(self) -> dict[str, Any]:
        """The YAML-ready form: camelCase keys, quantities as '16Gi', defaults left out
        (but apiVersion and kind, which every manifest states)."""
        out = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        kind = type(self).model_fields.get("kind")
        if kind is not None:
            out = {"apiVersion": API_VERSION, "kind": kind.default, **out}
        return out


class ObjectMeta(SpecModel):
    """Identity of an object, as in Kubernetes. Status is never written in git."""

    name: ResourceName = Field(
        description="Unique name among objects of this kind: a DNS-1123 label "
        "(lowercase letters, digits and '-', at most 63 characters).",
        examples=["vit-small-digits"],
    )
    labels: Labels = Field(
        default_factory=dict,
        description="Key/value pairs used by selectors (a job's nodeSelector matches a "
        "Node's labels). Keys and values follow Kubernetes label syntax.",
        examples=[{"gpu": "a100", "team": "vision"}],
    )
    annotations: dict[str, str] = Field(
        examples=[{"mlsm.dev/paper": "arXiv:2401.00001"}],
        default_factory=dict,
        description="Free-form notes for tools and people; never used for selection.",
    )
    owner: Annotated[str, AfterValidator(_check_owner)] | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Who is responsible for the object (a username or e-mail). Fair share "
        "between owners uses it; when unset, the author of the commit that added the "
        "object is used.",
        examples=["alice"],
    )
