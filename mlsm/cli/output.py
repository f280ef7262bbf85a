"""Printing problems for people (text), programs (json) and GitHub Actions (github)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import TextIO

import typer

from mlsm.manifests import Problem, SweepSummary

__all__ = ["Format", "print_problems"]


class Format(StrEnum):
    text = "text"
    json = "json"
    github = "github"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _summary(problems: Sequence[Problem], *, objects: int, files: int) -> str:
    checked = f"{_plural(objects, 'object')} in {_plural(files, 'file')}"
    if not problems:
        return f"{checked}: all valid"
    bad_files = len({p.path for p in problems})
    return f"{_plural(len(problems), 'error')} in {_plural(bad_files, 'file')} ({checked} checked)"


SWEEP_LINES = 20
"""Children listed per sweep (the rest are counted)."""


def sweep_lines(sweep: SweepSummary) -> list[str]:
    """A sweep's expansion for people: the job, then a line per child."""
    limit = f", at most {sweep.parallelism} at once" if sweep.parallelism else ""
    count = len(sweep.children)
    children = f"{count} {'child' if count == 1 else 'children'}"
    where = f"{sweep.path}:{sweep.line}:{sweep.column}"
    lines = [f"{where}: TrainingJob/{sweep.name}: a sweep of {children}{limit}:"]
    width = max(len(name) for name, _ in sweep.children)
    lines += [f"  {name:{width}s}  {values}" for name, values in sweep.children[:SWEEP_LINES]]
    if len(sweep.children) > SWEEP_LINES:
        lines.append(f"  ... and {len(sweep.children) - SWEEP_LINES} more")
    return lines


def print_problems(
    problems: Sequence[Problem],
    *,
    objects: int,
    files: int,
    format: Format,
    out: TextIO = sys.stdout,
    sweeps: Sequence[SweepSummary] = (),
) -> None:
    """Every problem, each sweep's expansion, then a one-line summary (text and
    github) or one JSON document."""
    if format is Format.json:
        document = {
            "valid": not problems,
            "files": files,
            "objects": objects,
            "sweeps": [
                {
                    "path": w.path,
                    "line": w.line,
                    "name": w.name,
                    "parallelism": w.parallelism,
                    "children": [{"name": n, "values": v} for n, v in w.children],
                }
                for w in sweeps
            ],
            "errors": [
                {
                    "path": p.path,
                    "line": p.line,
                    "column": p.column,
                    "kind": p.kind,
                    "name": p.name,
                    "field": p.field,
                    "message": p.message,
                }
                for p in problems
            ],
        }
        out.write(json.dumps(document, indent=2) + "\n")
        return
    color = format is Format.text and out.isatty()
    for problem in problems:
        if format is Format.github:
            properties = (
                f"file={_escape_property(_repository_path(problem.path))},line={problem.line},"
                f"col={problem.column},title={_escape_property('mlsm validate')}"
            )
            out.write(f"::error {properties}::{_escape_data(problem.describe())}\n")
        else:
            where = f"{problem.path}:{problem.line}:{problem.column}:"
            label = typer.style("error:", fg="red", bold=True) if color else "error:"
            out.write(f"{where} {label} {problem.describe()}\n")
    if format is Format.text:
        for sweep in sweeps:
            out.write("\n".join(sweep_lines(sweep)) + "\n")
    out.write(_summary(problems, objects=objects, files=files) + "\n")


def _repository_path(path: str) -> str:
    """A path as GitHub matches annotations to a diff: relative to the workspace (the
    working directory), without `./`."""
    normal = os.path.normpath(path)
    if os.path.isabs(normal):
        relative = os.path.relpath(normal)
        if not relative.startswith(".."):
            return relative
    return normal
