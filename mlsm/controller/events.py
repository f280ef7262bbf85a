"""Conditions and events: what every reconciler writes about an object.

`record` writes one row of the audit log (kept for good, with the commit and actor
that caused it); `set_condition` sets a Kubernetes-style condition, moving its
transition time only when its status changes. Used by the sync (`applying`), the
lifecycle, the scheduling pass and the lease check.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mlsm.store import Event, StoredObject
from mlsm.store.types import utcnow

__all__ = ["Commit", "condition", "record", "set_condition"]


@dataclass(frozen=True, slots=True)
class Commit:
    """The commit a sync reads: what every object it changes records."""

    sha: str
    author: str = ""
    message: str = ""

    @property
    def short(self) -> str:
        return self.sha[:10]

    @property
    def title(self) -> str:
        return self.message.strip().splitlines()[0] if self.message.strip() else ""


def condition(conditions: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    status: bool,
    *,
    reason: str,
    message: str,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """A new list with the condition set; its transition time moves only when its
    status does (as in Kubernetes)."""
    old = condition(conditions, kind)
    value = "True" if status else "False"
    changed = old is None or old.get("status") != value
    new = {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now.isoformat() if changed else old["lastTransitionTime"],  # type: ignore[index]
    }
    return [c for c in conditions if c.get("type") != kind] + [new]


def record(
    session: Session,
    obj: StoredObject | None,
    reason: str,
    message: str,
    *,
    kind: str = "",
    name: str = "",
    warning: bool = False,
    commit: Commit | None = None,
    actor: str = "",
    now: dt.datetime | None = None,
) -> Event:
    """Write one event row about `obj` (or about kind/name, for what has no row)."""
    event = Event(
        at=now or utcnow(),
        kind=obj.kind if obj is not None else kind,
        name=obj.name if obj is not None else name,
        uid=obj.uid if obj is not None else None,
        type="Warning" if warning else "Normal",
        reason=reason,
        message=message,
        commit_sha=commit.sha if commit else "",
        actor=actor or (commit.author if commit else "controller"),
    )
    session.add(event)
    return event
