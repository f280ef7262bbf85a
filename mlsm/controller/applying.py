"""Applying a sync plan to the store, in the caller's transaction.

`stored_objects` reads what the planner compares against; `apply_plan` carries out
its actions, and every change goes through `events.record`, which writes the event
row too, so an object's state and the audit log never disagree; a pruned job is
cancelled through the lifecycle.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mlsm import planning
from mlsm.controller.events import Commit, condition, record, set_condition
from mlsm.controller.lifecycle import cancel_job
from mlsm.planning import Create, Desired, Invalidate, Plan, Prune, Relocate, Revalidate, Update
from mlsm.schemas.phases import JobPhase
from mlsm.store import OBJECT_MODELS, Job, StoredObject
from mlsm.store.types import utcnow

__all__ = ["apply_plan", "stored_objects"]


def stored_objects(session: Session) -> list[planning.Stored]:
    """Every live object, as the planner sees it."""
    out: list[planning.Stored] = []
    for model in OBJECT_MODELS.values():
        columns = [model.name, model.uid, model.spec_hash, model.generation, model.source_path,
                   model.source_line, model.conditions]  # fmt: skip
        phase = Job.phase if model is Job else None
        query = select(*columns, *([phase] if phase is not None else []))
        for row in session.execute(query.where(model.deleted_at.is_(None))):
            valid = condition(row.conditions, "Valid") or {}
            out.append(
                planning.Stored(
                    kind=model.kind,
                    name=row.name,
                    uid=row.uid,
                    hash=row.spec_hash,
                    generation=row.generation,
                    path=row.source_path,
                    line=row.source_line,
                    valid=valid.get("status", "True") == "True",
                    error="" if valid.get("status", "True") == "True" else valid.get("message", ""),
                    finished=phase is None or row.phase in JobPhase.finished_phases(),
                )
            )
    return out


def apply_plan(
    session: Session, plan: Plan, commit: Commit, *, now: dt.datetime | None = None
) -> int:
    """Carry out every action; returns how many objects changed. The caller commits."""
    now = now or utcnow()
    rows = _live_rows(session, plan)
    for action in plan.actions:
        if isinstance(action, Create):
            _create(session, action.desired, commit, now)
            continue
        row = rows[action.stored.kind, action.stored.name]
        if isinstance(action, Update):
            _update(session, row, action.desired, commit, now)
        elif isinstance(action, Relocate):
            row.source_path, row.source_line = action.desired.path, action.desired.line
        elif isinstance(action, Revalidate):
            row.source_path, row.source_line = action.desired.path, action.desired.line
            _validity(session, row, None, commit, now)
        elif isinstance(action, Invalidate):
            _validity(session, row, action.error, commit, now)
        else:
            _prune(session, row, action, commit, now)
    return len(plan.actions)


def _live_rows(session: Session, plan: Plan) -> dict[tuple[str, str], StoredObject]:
    wanted: dict[str, list[str]] = {}
    for action in plan.actions:
        if not isinstance(action, Create):
            wanted.setdefault(action.stored.kind, []).append(action.stored.name)
    rows: dict[tuple[str, str], StoredObject] = {}
    for kind, names in wanted.items():
        model = OBJECT_MODELS[kind]
        for start in range(0, len(names), 500):
            query = select(model).where(
                model.deleted_at.is_(None), model.name.in_(names[start : start + 500])
            )
            rows.update(((kind, row.name), row) for row in session.scalars(query))
    return rows


def _fill(row: StoredObject, desired: Desired, commit: Commit) -> None:
    manifest = desired.manifest or {}
    metadata = manifest.get("metadata", {})
    row.manifest = manifest
    row.spec_hash = desired.hash
    row.labels = metadata.get("labels", {})
    row.source_path, row.source_line = desired.path, desired.line
    row.commit_sha, row.commit_author, row.commit_message = (
        commit.sha,
        commit.author,
        commit.message,
    )
    if isinstance(row, Job):
        row.owner = metadata.get("owner", "") or commit.author
        row.priority = manifest.get("spec", {}).get("priority", 0)


def _create(session: Session, desired: Desired, commit: Commit, now: dt.datetime) -> None:
    model = OBJECT_MODELS[desired.kind]
    row = model(uid=str(uuid.uuid4()), name=desired.name, created_at=now, updated_at=now)
    _fill(row, desired, commit)
    valid = desired.manifest is not None
    row.generation = 1 if valid else 0
    row.conditions = _valid_conditions([], desired.error or None, now)
    session.add(row)
    if valid:
        record(session, row, "Created", f"created by {commit.short} {commit.title}".rstrip(),
               commit=commit, now=now)  # fmt: skip
    else:
        record(session, row, "Invalid", f"not created, the manifest is invalid: {desired.error}",
               warning=True, commit=commit, now=now)  # fmt: skip


def _update(
    session: Session, row: StoredObject, desired: Desired, commit: Commit, now: dt.datetime
) -> None:
    _fill(row, desired, commit)
    row.generation += 1
    row.updated_at = now
    row.conditions = _valid_conditions(row.conditions, None, now)
    record(session, row, "Updated",
           f"generation {row.generation} from {commit.short} {commit.title}".rstrip(),
           commit=commit, now=now)  # fmt: skip


def _validity(
    session: Session, row: StoredObject, error: str | None, commit: Commit, now: dt.datetime
) -> None:
    row.conditions = _valid_conditions(row.conditions, error, now)
    row.updated_at = now
    if error is None:
        record(session, row, "Valid", "the manifest is valid again", commit=commit, now=now)
    else:
        kept = (f"generation {row.generation} stays in force" if row.generation
                else "it has never been valid")  # fmt: skip
        record(session, row, "Invalid", f"{error} ({kept})", warning=True, commit=commit, now=now)


def _valid_conditions(
    conditions: list[dict[str, Any]], error: str | None, now: dt.datetime
) -> list[dict[str, Any]]:
    if error is None:
        return set_condition(conditions, "Valid", True, reason="Valid", message="", now=now)
    return set_condition(
        conditions, "Valid", False, reason="InvalidManifest", message=error, now=now
    )


def _prune(
    session: Session, row: StoredObject, action: Prune, commit: Commit, now: dt.datetime
) -> None:
    row.deleted_at = now
    row.updated_at = now
    if action.cancel and isinstance(row, Job):
        cancel_job(session, row, reason="Pruned", message=f"removed from git in {commit.short}; "
                   "cancelled", commit=commit, now=now)  # fmt: skip
    record(session, row, "Pruned", f"removed from git in {commit.short} {commit.title}".rstrip(),
           commit=commit, now=now)  # fmt: skip
