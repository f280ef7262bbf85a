"""What is wrong with a manifest, where, and how to fix it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mlsm.errors import UserError

__all__ = ["ManifestError", "Problem", "format_field"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One error in one manifest file, located to a line and column (1-based)."""

    path: str
    line: int
    column: int
    message: str
    kind: str | None = None
    name: str | None = None
    field: str | None = None

    @property
    def object(self) -> str | None:
        """'TrainingJob/vit-small', or what is known of it."""
        if self.kind and self.name:
            return f"{self.kind}/{self.name}"
        return self.kind or None

    def describe(self) -> str:
        """'TrainingJob/vit: spec.resources.gpus: must be >= 0, got -1' (no location)."""
        parts = [part for part in (self.object, self.field) if part]
        return ": ".join([*parts, self.message])

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: error: {self.describe()}"

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.path, self.line, self.column, self.message)


class ManifestError(UserError):
    """One or more manifests are invalid; `problems` says which, where and why."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(sorted(problems, key=Problem.sort_key))
        if not self.problems:
            raise ValueError("ManifestError needs at least one problem")
        first = str(self.problems[0])
        more = len(self.problems) - 1
        super().__init__(first + (f" (and {more} more)" if more else ""))


def format_field(path: Sequence[str | int]) -> str:
    """('spec', 'locations', 0, 'path') -> 'spec.locations[0].path'.

    Keys that are not plain identifiers (label keys like 'example.com/team') are
    written in brackets: metadata.labels["example.com/team"].
    """
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif step.replace("_", "a").replace("-", "a").isalnum():
            out += f".{step}" if out else step
        else:
            out += f'["{step}"]'
    return out
