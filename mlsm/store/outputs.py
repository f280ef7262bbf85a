"""Runs' shipped output in the store: log lines and metric records, each under (run,
byte offset), and the offset held per run, which is what the agent reads on from.
Lines below the held offset are dropped, so a retried upload never duplicates one.
Used by the agent API (writes), the read API (`/runs/{id}/logs`, `/metrics`) and
the status site.
"""

from __future__ import annotations

import json
from typing import Any, cast

from sqlalchemy import Table, insert, or_, select, update
from sqlalchemy.orm import Session

from mlsm.ranks import line_rank
from mlsm.store.models import LogLine, MetricRecord, Run

__all__ = ["STREAMS", "read_log", "read_metrics", "store_lines"]

STREAMS = ("log", "metrics")
MAX_TEXT = 64 * 1024
"""The longest line stored, whatever an agent sends (agents cap at 16 KiB)."""


def store_lines(
    session: Session, run: Run, stream: str, lines: list[tuple[int, str]], end: int
) -> int:
    """Keep the lines at or past the run's held offset; returns the new held offset."""
    held = run.log_offset if stream == "log" else run.metrics_offset
    fresh = [(run.id, offset, text[:MAX_TEXT]) for offset, text in lines if offset >= held]
    table = cast(Table, Run.__table__)
    if fresh and stream == "log":
        ranked = [(r, o, t, line_rank(t)) for r, o, t in fresh]
        # The DB-API's executemany, not SQLAlchemy's per-row parameter processing:
        # shipping is the one bulk insert in mlsm, and this triples its speed.
        connection = session.connection()
        mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
        connection.exec_driver_sql(
            'INSERT INTO log_lines (run_id, "offset", text, rank) '
            f"VALUES ({mark}, {mark}, {mark}, {mark})",
            ranked,
        )
        seen = {rank for *_, rank in ranked if rank is not None}
        if not seen <= set(run.ranks):  # which processes this node hosts (a plain UPDATE)
            ranks = sorted(seen | set(run.ranks))
            session.execute(update(table).where(table.c.id == run.id).values(ranks=ranks))
    elif fresh:
        session.execute(insert(cast(Table, MetricRecord.__table__)), [
            {"run_id": r, "offset": o, "record": _record(t)} for r, o, t in fresh
        ])  # fmt: skip
    new = max(held, end)
    if new != held:
        # A plain UPDATE: these columns are the agent's alone (no version bump, so a
        # status report racing this upload does not conflict with it).
        column = "log_offset" if stream == "log" else "metrics_offset"
        session.execute(update(table).where(table.c.id == run.id).values({column: new}))
    return new


def _record(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"invalid": text}
    return value if isinstance(value, dict) else {"value": value}


def read_log(
    session: Session,
    run_id: str,
    *,
    after: int = -1,
    limit: int = 1000,
    tail: int | None = None,
    rank: int | None = None,
) -> list[tuple[int, str]]:
    """Lines past the offset `after`, oldest first; or the last `tail` lines. With
    `rank`, only that process's lines and the launcher's."""
    query = select(LogLine.offset, LogLine.text).where(LogLine.run_id == run_id)
    if rank is not None:
        query = query.where(or_(LogLine.rank == rank, LogLine.rank.is_(None)))
    if tail is not None:
        rows = session.execute(query.order_by(LogLine.offset.desc()).limit(tail)).all()
        return [(o, t) for o, t in reversed(rows)]
    rows = session.execute(
        query.where(LogLine.offset > after).order_by(LogLine.offset).limit(limit)
    ).all()
    return [(o, t) for o, t in rows]


def read_metrics(session: Session, run_id: str, *, limit: int = 100_000) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(MetricRecord.record).where(MetricRecord.run_id == run_id)
        .order_by(MetricRecord.offset).limit(limit)
    )  # fmt: skip
    return list(rows)
