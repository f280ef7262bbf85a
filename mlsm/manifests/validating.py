"""Plain YAML data -> a validated manifest, or problems that say where and how to fix.

Dispatches on `kind`, validates with the kind's pydantic model (camelCase keys only,
strict types), and turns each pydantic error into a `Problem`: located through the
YAML node marks, with a message that names the value and what would be right.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from mlsm import schemas
from mlsm.manifests.parsing import Document, NodeIndex, Position
from mlsm.manifests.problems import Problem, format_field
from mlsm.manifests.sweeping import SweepProblem, expand

__all__ = ["Budget", "Located", "Locator", "expand_sweep", "validate_document"]

_YAML_11_BOOLS = {"yes": True, "no": False, "on": True, "off": False, "y": True, "n": False}

_REQUIRED_TOP = ("apiVersion", "kind", "metadata", "spec")


@dataclass(frozen=True, slots=True)
class Located:
    """A valid manifest and where it was written."""

    manifest: schemas.Node | schemas.Dataset | schemas.TrainingJob
    path: str
    document: int
    position: Position

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def name(self) -> str:
        return self.manifest.metadata.name


@dataclass(slots=True)
class Budget:
    """How many more problems of a file are described; past it they are only counted
    (locating and wording each costs far more than finding it)."""

    left: int
    more: int = 0
    """Problems found past the budget."""
    first_hidden: Position | None = None
    """Where the first document with a problem not described begins."""

    def take(self, document: Position) -> bool:
        """Whether a problem of `document` is described."""
        if self.left > 0:
            self.left -= 1
            return True
        self.more += 1
        if self.first_hidden is None:
            self.first_hidden = document
        return False

    def summary(self, path: str, limit: int) -> Problem | None:
        """'and M more' for the file (no kind or name: the file is broken, so objects
        whose problems are not described keep their last valid spec)."""
        if not self.more:
            return None
        at = self.first_hidden or Position(1, 1)
        return Problem(
            path=path,
            line=at.line,
            column=at.column,
            message=f"and {self.more} more problems from here, not shown (at most {limit} "
            "are described per file): fix these and check again",
        )


class Locator:
    """Finds where a field is written, reading each file at most once (errors only),
    and composing it once for all of its problems (`parsing.NodeIndex`)."""

    def __init__(self, read: Callable[[str], bytes]) -> None:
        self._read = read
        self._cache: dict[str, bytes] = {}
        self._indexes: dict[str, NodeIndex] = {}
        self._lines: dict[str, list[bytes]] = {}

    def text(self, path: str) -> bytes:
        if path not in self._cache:
            try:
                self._cache[path] = self._read(path)
            except OSError:
                self._cache[path] = b""
        return self._cache[path]

    def find(
        self, path: str, document: Position, field: Sequence[str | int], *, key: bool = False
    ) -> Position:
        index = self._indexes.get(path)
        if index is None:
            index = self._indexes[path] = NodeIndex(self.text(path))
        return index.locate(document, field, key=key)

    def scalar_text(self, path: str, at: Position) -> str | None:
        """The scalar as written at `at` ('3.10' where YAML read the number 3.1)."""
        lines = self._lines.get(path)
        if lines is None:
            lines = self._lines[path] = self.text(path).split(b"\n")
        if not 0 < at.line <= len(lines):
            return None
        line = lines[at.line - 1].decode("utf-8", "replace")
        match = re.match(r"[^\s,\]}#]+", line[at.column - 1 :])
        return match.group(0) if match else None


def _name_of(data: dict[Any, Any]) -> str | None:
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
        return str(metadata["name"])
    return None


def validate_document(
    document: Document, *, path: str, locator: Locator, budget: Budget | None = None
) -> Located | list[Problem]:
    """Validate one document's data; a list of problems when it is not valid (with
    a `budget`, only those it allows are described; the list may then be empty)."""
    data = document.data
    at = document.position

    def described() -> bool:
        return budget is None or budget.take(at)

    if not isinstance(data, dict) and not described():
        return []
    if not isinstance(data, dict):
        got = _describe(data)
        return [
            Problem(
                path=path,
                line=at.line,
                column=at.column,
                message=f"a manifest must be a mapping with {', '.join(_REQUIRED_TOP)}; got {got}",
            )
        ]
    name = _name_of(data)
    kind = data.get("kind")
    problems = []
    versioned = "apiVersion" in data
    if not versioned and described():
        problems.append(
            Problem(
                path=path,
                line=at.line,
                column=at.column,
                kind=_str_or_none(kind),
                name=name,
                field="apiVersion",
                message=f"required field is missing; add 'apiVersion: {schemas.API_VERSION}'",
            )
        )
    model = schemas.KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        if described():
            problems.append(
                _kind_problem(kind, path=path, document=document, name=name, locator=locator)
            )
        return problems
    try:
        manifest = model.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            if not described():
                continue
            problems.append(
                _translate(
                    error,
                    model,
                    path=path,
                    document=document,
                    kind=str(kind),
                    name=name,
                    locator=locator,
                )
            )
        return problems
    if not versioned:
        return problems
    return Located(manifest=manifest, path=path, document=document.index, position=at)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def expand_sweep(located: Located, *, locator: Locator) -> list[Located] | list[Problem]:
    """A job with `spec.sweep` as its children (`mlsm.manifests.sweeping`), written
    where the job is; any other object as itself."""
    manifest = located.manifest
    if not isinstance(manifest, schemas.TrainingJob) or manifest.spec.sweep is None:
        return [located]
    try:
        children = expand(manifest)
    except SweepProblem as problem:
        field: list[str | int] = ["spec", "sweep", *problem.field]
        at = locator.find(located.path, located.position, field, key=True)
        return [
            Problem(
                path=located.path,
                line=at.line,
                column=at.column,
                kind="TrainingJob",
                name=manifest.metadata.name,
                field=format_field(field),
                message=problem.message,
            )
        ]
    return [
        Located(manifest=c, path=located.path, document=located.document, position=located.position)
        for c in children
    ]


def _kind_problem(
    kind: Any, *, path: str, document: Document, name: str | None, locator: Locator
) -> Problem:
    kinds = ", ".join(schemas.KINDS)
    if kind is None:
        at = document.position
        return Problem(
            path=path,
            line=at.line,
            column=at.column,
            name=name,
            field="kind",
            message=f"required field is missing; set it to one of {kinds}",
        )
    at = locator.find(path, document.position, ["kind"])
    hint = _did_you_mean(str(kind), list(schemas.KINDS))
    return Problem(
        path=path,
        line=at.line,
        column=at.column,
        kind=_str_or_none(kind),
        name=name,
        field="kind",
        message=f"unknown kind {_describe(kind)}{hint} ({schemas.API_VERSION} kinds: {kinds})",
    )


def _did_you_mean(value: str, choices: Sequence[str]) -> str:
    folded = {choice.lower().replace("_", "").replace("-", ""): choice for choice in choices}
    exact = folded.get(value.lower().replace("_", "").replace("-", ""))
    if exact is not None:
        return f"; did you mean '{exact}'?"
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _translate(
    error: ErrorDetails,
    model: type[BaseModel],
    *,
    path: str,
    document: Document,
    kind: str,
    name: str | None,
    locator: Locator,
) -> Problem:
    loc = [step for step in error["loc"] if not schemas.is_union_tag(step)]
    on_key = False
    if loc and loc[-1] == "[key]":  # a dict key failed validation: point at the key
        loc.pop()
        on_key = True
    kind_of_error = error["type"]
    # an unknown key, or a rule about a whole mapping: show the key, not the first child
    on_key = on_key or kind_of_error == "extra_forbidden"
    on_key = on_key or (kind_of_error == "value_error" and isinstance(error.get("input"), dict))
    at = locator.find(path, document.position, loc, key=on_key)
    message = _message(error, model, loc, written=lambda: locator.scalar_text(path, at))
    return Problem(
        path=path,
        line=at.line,
        column=at.column,
        kind=kind,
        name=name,
        field=format_field(loc) or None,
        message=message,
    )


def _message(
    error: ErrorDetails,
    model: type[BaseModel],
    loc: Sequence[str | int],
    *,
    written: Callable[[], str | None],
) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    got = _describe(value)
    if kind == "missing":
        return _missing(model, loc)
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        hint = _did_you_mean(str(loc[-1]), allowed) if allowed else ""
        if not hint and allowed:
            hint = f"; allowed here: {', '.join(allowed)}"
        return f"unknown field{hint}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {ctx.get(key)}, got {_plain(value)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = _did_you_mean(str(value), choices) if isinstance(value, str) else ""
        listed = ", ".join(f"'{c}'" for c in choices)
        if list(loc) == ["apiVersion"]:
            return (
                f"unsupported apiVersion {got}; this mlsm reads '{schemas.API_VERSION}' "
                "(a newer mlsm may be needed)"
            )
        return f"must be one of {listed}, got {got}{hint}"
    if kind == "string_type":
        hint = ""
        if isinstance(value, (int, float, bool)) or value is None:
            text = written() or _plain(value)
            hint = f'; quote it: "{text}"'
        return f"must be a string, got {got}{hint}"
    if kind == "list_type":
        hint = ""
        if isinstance(value, str):
            try:
                hint = f"; write it as a list: {json.dumps(shlex.split(value))}"
            except ValueError:
                hint = f"; write it as a list: [{json.dumps(value)}]"
        return f"must be a list, got {got}{hint}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if value is None:
            return "is empty; give it fields, or remove the key"
        return f"must be a mapping (key: value), got {got}"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"must be a whole number, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        hint = ""
        if isinstance(value, str) and value.lower() in _YAML_11_BOOLS:
            word = "true" if _YAML_11_BOOLS[value.lower()] else "false"
            hint = f"; YAML 1.2 reads {value} as text, so write {word}"
        return f"must be true or false, got {got}{hint}"
    if kind in ("too_short", "string_too_short"):
        minimum = ctx.get("min_length", 1)
        if kind == "string_too_short" and minimum == 1:
            return "must not be empty"
        unit = "character" if kind == "string_too_short" else "item"
        return f"must have at least {minimum} {unit}{'s' if minimum != 1 else ''}"
    if kind in ("too_long", "string_too_long"):
        unit = "characters" if kind == "string_too_long" else "items"
        return f"must have at most {ctx.get('max_length')} {unit}"
    return str(error["msg"])


def _missing(model: type[BaseModel], loc: Sequence[str | int]) -> str:
    parent = _model_at(model, loc[:-1])
    field = _field_by_alias(parent, str(loc[-1])) if parent else None
    message = "required field is missing"
    if field is not None:
        if field.examples:
            example = json.dumps({str(loc[-1]): field.examples[0]})
            message += f"; for example {example[1:-1]}"
        elif field.description:
            message += f" ({field.description.rstrip('.')})"
    return message


def _field_by_alias(model: type[BaseModel], alias: str) -> Any:
    for name, info in model.model_fields.items():
        if (info.alias or name) == alias:
            return info
    return None


def _allowed_fields(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    parent = _model_at(model, loc)
    if parent is None:
        return []
    return [info.alias or name for name, info in parent.model_fields.items()]


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the type that holds the value."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(options) > 1:  # a name or a mapping (augmentation): the mapping's model
                options = [arg for arg in options if _is_model(_unwrap(arg))]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc`, if one does."""
    current: Any = model
    for step in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = _field_by_alias(current, str(step))
            if field is None:
                return None
            current = field.annotation
        elif origin is list:
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


EXCERPT = 40
"""The most of a value a message repeats: messages travel (the read API, the site,
CI logs), and a file that is not a manifest (a link to /etc/passwd) must not be
published through them."""


def _plain(value: Any) -> str:
    """A value as YAML would show it (true, null, 3.5, text), as a short excerpt with
    control characters escaped."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if len(text) > EXCERPT:
        text = text[: EXCERPT - 3] + "..."
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _describe(value: Any) -> str:
    """A value for 'got ...': 'the number 3.1', 'a list', "'text'"."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {_plain(value)}"
    if isinstance(value, (int, float)):
        return f"the number {_plain(value)}"
    if isinstance(value, str):
        return f"'{_plain(value)}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
