"""Optimistic concurrency: rows that more than one writer changes carry a `version`,
and every UPDATE of them says `WHERE version = :v`. A writer that finds its row
changed under it (SQLAlchemy's StaleDataError) reads again and redoes its whole
transaction. `retry_on_conflict` is the one way to do that. The sync, the agents'
reports and the scheduling pass all use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm.exc import StaleDataError

__all__ = ["Conflict", "retry_on_conflict"]

T = TypeVar("T")

Conflict = StaleDataError
"""What a guarded write raises when another writer won."""


def retry_on_conflict(transaction: Callable[[], T], *, attempts: int = 5, pause: float = 0.01) -> T:
    """`transaction()` (which opens, does and commits one whole transaction), again
    after a conflict, up to `attempts` times, pausing `pause` × the attempt number
    between tries. The last conflict is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return transaction()
        except StaleDataError:
            if attempt == attempts:
                raise
            if pause:
                time.sleep(pause * attempt)
    raise AssertionError("unreachable")
