"""Noticing a database that went back in time.

A database restored from an older copy, or one that lost its last writes (a lost
SQLite WAL, a PostgreSQL replica promoted behind), used to start silently. Its
nodes' assignment revisions then go backwards: an agent holding revision 9 while
the store says 5 is answered at once, but once new bindings bring the store back
to 9 the agent's long poll sees "no change" and misses them.

The controller keeps a mark beside its state (`<state_dir>/store-mark.json`): the
newest event id and the highest assignment revision it has seen, per database.
At start, a store behind its mark is reported (a log line at error level and a
`StoreRewound` warning event) and every node's assignment revision is moved past
the highest one ever handed out, so that no agent's revision can match a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update

from mlsm.controller.events import record
from mlsm.files import write_durably
from mlsm.store import Event, Node, Store

__all__ = ["Mark", "check_mark", "read_mark", "save_mark"]

log = logging.getLogger("mlsm.controller")


@dataclass(frozen=True, slots=True)
class Mark:
    events: int
    """The newest event id seen."""
    revision: int
    """The highest node assignment revision seen."""


def _path(state_dir: Path, database_url: str) -> Path:
    name = hashlib.sha256(database_url.encode()).hexdigest()[:16]
    return state_dir / f"store-mark-{name}.json"


def read_mark(store: Store) -> Mark:
    """Where the store stands now."""
    with store.read() as session:
        events = session.scalar(select(func.max(Event.id))) or 0
        revision = session.scalar(select(func.max(Node.assignment_revision))) or 0
    return Mark(events=int(events), revision=int(revision))


def save_mark(store: Store, state_dir: Path, database_url: str) -> None:
    """Remember where the store stands (called after syncs and scheduling passes)."""
    mark = read_mark(store)
    text = json.dumps({"events": mark.events, "revision": mark.revision})
    write_durably(_path(state_dir, database_url), text)


def check_mark(store: Store, state_dir: Path, database_url: str) -> str:
    """At start: '' when the store is where it was last seen or ahead; else what went
    back, said once in the log and as an event, with the revisions moved on."""
    try:
        known = json.loads(_path(state_dir, database_url).read_text())
        seen = Mark(events=int(known["events"]), revision=int(known["revision"]))
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # no mark yet (a first start, or another state dir)
    now = read_mark(store)
    if now.events >= seen.events and now.revision >= seen.revision:
        return ""
    message = (
        f"the database is behind what this controller last saw (events up to #{now.events}, "
        f"were #{seen.events}; assignment revisions up to {now.revision}, were {seen.revision}): "
        "restored from an older copy, or its last writes lost? Work recorded since is "
        "gone; node assignment revisions are moved past "
        f"{seen.revision} so that every agent fetches its assignments again"
    )
    with store.write() as session:
        session.execute(
            update(Node).values(assignment_revision=Node.assignment_revision + seen.revision + 1)
        )
        record(session, None, "StoreRewound", message, kind="Store", name="database", warning=True)
    log.error("%s", message)
    return message
