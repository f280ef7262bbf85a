"""`mlsmctl diff`: what the controller would do if a path were the branch, from the
pure planner over local manifests and the objects the controller holds."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlsm import manifests, planning
from mlsm.cli.client import Client
from mlsm.schemas.phases import JobPhase

__all__ = ["diff_lines", "field_changes", "plan_against", "stored_manifest"]

_ADDED_METADATA = ("uid", "generation", "specHash", "createdAt", "updatedAt", "deletedAt",
                   "source", "commit")  # fmt: skip


def _stored(obj: dict[str, Any]) -> planning.Stored:
    meta = obj["metadata"]
    conditions: list[dict[str, Any]] = obj["status"].get("conditions", [])
    valid: dict[str, Any] = next((c for c in conditions if c["type"] == "Valid"), {})
    return planning.Stored(
        kind=obj["kind"], name=meta["name"], uid=meta["uid"], hash=meta["specHash"],
        generation=meta["generation"], path=meta["source"]["path"], line=meta["source"]["line"],
        valid=valid.get("status", "True") == "True",
        error="" if valid.get("status", "True") == "True" else valid.get("message", ""),
        finished=obj["status"].get("phase", "Succeeded") in JobPhase.finished_phases(),
    )  # fmt: skip


def stored_manifest(obj: dict[str, Any]) -> dict[str, Any]:
    """The manifest as stored: the API's object without what the controller adds."""
    metadata = {k: v for k, v in obj["metadata"].items() if k not in _ADDED_METADATA}
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": metadata,
            "spec": obj["spec"]}  # fmt: skip


def plan_against(
    client: Client, path: str
) -> tuple[planning.Plan, dict[tuple[str, str], dict[str, Any]], list[manifests.Problem]]:
    root = Path(path)
    result = manifests.load_paths([path], cross_checks=False)
    if root.is_dir():  # paths as in the repository: relative to its root
        prefix = str(root).rstrip("/") + "/"
        result = manifests.LoadResult(
            objects=[_relative(o, prefix) for o in result.objects],
            problems=[_relative(p, prefix) for p in result.problems],
            files=result.files, checked=result.checked,
        )  # fmt: skip
    desired = planning.desired_state(result)
    live = {}
    for kind in ("Node", "Dataset", "TrainingJob"):
        for obj in client.objects(kind):
            live[(kind, obj["metadata"]["name"])] = obj
    plan = planning.plan_sync(desired, [_stored(o) for o in live.values()])
    return plan, live, result.problems


def _relative(item: Any, prefix: str) -> Any:
    return dataclasses.replace(item, path=item.path.removeprefix(prefix))


def diff_lines(plan: planning.Plan, live: dict[tuple[str, str], dict[str, Any]]) -> Iterator[str]:
    for action in plan.actions:
        if isinstance(action, planning.Create):
            d = action.desired
            if d.manifest is None:
                yield f"! {d.kind}/{d.name}: would be created invalid: {d.error}"
            else:
                yield f"+ {d.kind}/{d.name}  ({d.path}:{d.line})"
        elif isinstance(action, planning.Update):
            d = action.desired
            yield f"~ {d.kind}/{d.name}  generation {action.stored.generation + 1}"
            old = stored_manifest(live[action.stored.key])
            yield from (f"    {line}" for line in field_changes(old, d.manifest or {}))
        elif isinstance(action, planning.Relocate):
            s, d = action.stored, action.desired
            yield f"~ {s.kind}/{s.name}  moves {s.path}:{s.line} -> {d.path}:{d.line}"
        elif isinstance(action, planning.Revalidate):
            yield f"~ {action.stored.kind}/{action.stored.name}  valid again"
        elif isinstance(action, planning.Invalidate):
            s = action.stored
            yield f"! {s.kind}/{s.name}: would be invalid, generation {s.generation} stays: " + (
                action.error
            )
        else:
            s = action.stored
            cancel = " (cancels it: it has not finished)" if action.cancel else ""
            yield f"- {s.kind}/{s.name}{cancel}"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def field_changes(old: dict[str, Any], new: dict[str, Any]) -> Iterator[str]:
    before, after = _flatten(old), _flatten(new)
    for field in sorted(before.keys() | after.keys()):
        if field not in after:
            yield f"- {field}: {json.dumps(before[field])}"
        elif field not in before:
            yield f"+ {field}: {json.dumps(after[field])}"
        elif before[field] != after[field]:
            yield f"~ {field}: {json.dumps(before[field])} -> {json.dumps(after[field])}"
