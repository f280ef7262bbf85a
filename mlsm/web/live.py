"""Live updates over server-sent events: `GET /live` (what any page shows moved) and
`GET /live?job=NAME` (that job's state, and its log lines as they arrive).

A cursor names what a client has seen: `<run id>.<last log offset>.<state digest>`,
all of it from the store, so it means the same after a controller restart. It is
every message's `id:`, so a browser that reconnects sends it back as
`Last-Event-ID`; a page passes the cursor it was rendered at as `?after=`, and gets
nothing it already shows.

One feed per followed key, shared by all its clients: a client that is caught up
and finds nobody reading for the feed reads for it (after the wake-up signal, new
output in this controller, or `interval` seconds) and every client waiting on that
feed sends the same encoded bytes. So 100 browsers on one job cost one read per
tick, not 100; a client that comes back from further behind catches up with a read
of its own, then follows the shared feed again. No background task outlives its
clients.

Messages: `changed` (the state digest moved: a page refreshes its live parts) and
`log` (`{"run": id, "lines": [[offset, text], ...]}`).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mlsm.store import Event, Job, Run, Store, SyncState
from mlsm.store.outputs import read_log
from mlsm.web.access import Reader

__all__ = ["Cursor", "Feeds"]

LINES_PER_READ = 1000
CATCH_UP_READS = 20
"""A client further behind than this many reads of lines is told to reload instead."""
PING_SECONDS = 15.0
KEPT_TICKS = 64
"""Recent ticks a feed keeps encoded, for clients a tick or a few behind."""
RETRY_MS = 2000


@dataclass(frozen=True)
class Cursor:
    run: str = ""
    offset: int = -1
    digest: str = ""

    def __str__(self) -> str:
        return f"{self.run}.{self.offset}.{self.digest}"

    @classmethod
    def parse(cls, raw: str) -> Cursor | None:
        run, _, rest = raw.strip().partition(".")
        offset, _, digest = rest.partition(".")
        if len(raw) > 120 or not offset.lstrip("-").isdigit():
            return None
        return cls(run, int(offset), digest)


@dataclass
class _Feed:
    key: str
    cursor: Cursor | None = None
    ticks: OrderedDict[Cursor, tuple[Cursor, bytes]] = field(default_factory=OrderedDict)
    """cursor before a tick -> (cursor after it, its messages)."""
    moved: anyio.Event = field(default_factory=anyio.Event)
    reading: bool = False
    clients: int = 0

    def poke(self) -> None:
        self.moved.set()
        self.moved = anyio.Event()


def message(event: str, data: Any, cursor: Cursor | None = None) -> bytes:
    head = f"id: {cursor}\n" if cursor is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def read_state(session: Session, key: str) -> tuple[str, str]:
    """(the state digest, the current run id) of a job, or of the whole site for ''."""
    if not key:
        last_event = session.scalar(select(func.max(Event.id)))
        syncs = session.execute(
            select(SyncState.source, SyncState.status, SyncState.commit_sha, SyncState.version)
        ).all()
        return _digest(last_event, [tuple(s) for s in syncs]), ""
    job = session.execute(
        select(Job.id, Job.phase, Job.version)
        .where(Job.name == key)
        .order_by(Job.deleted_at.is_not(None), Job.id.desc())
        .limit(1)
    ).first()
    if job is None:
        return _digest(None), ""
    runs = session.execute(
        select(Run.id, Run.phase, Run.version, Run.metrics_offset)
        .where(Run.job_id == job.id)
        .order_by(Run.attempt, Run.created_at)
    ).all()
    return _digest(tuple(job), [tuple(r) for r in runs]), (runs[-1].id if runs else "")


def _tick(store: Store, key: str, before: Cursor | None) -> tuple[Cursor, bytes]:
    """Read what moved since `before`: the messages that bring a client from there to
    the returned cursor (empty when nothing moved)."""
    with store.read() as session:
        digest, run = read_state(session, key)
        offset = before.offset if before is not None and before.run == run else -1
        lines = read_log(session, run, after=offset, limit=LINES_PER_READ) if run else []
    after = Cursor(run, lines[-1][0] if lines else offset, digest)
    if before is None:
        return after, b""
    out: list[bytes] = []
    if digest != before.digest or run != before.run:
        out.append(message("changed", {"run": run}, None if lines else after))
    if lines:
        out.append(message("log", {"run": run, "lines": lines}, after))
    return after, b"".join(out)


def _catch_up(store: Store, key: str, client: Cursor | None, feed: Cursor) -> bytes:
    """The messages that bring a client at `client` to the feed's cursor."""
    if client is None:
        return b""
    events: list[tuple[str, dict[str, Any]]] = []
    if client.digest != feed.digest or client.run != feed.run:
        events.append(("changed", {"run": feed.run}))
    if client.run == feed.run and feed.run and client.offset < feed.offset:
        offset = client.offset
        with store.read() as session:
            for _ in range(CATCH_UP_READS):
                lines = read_log(session, feed.run, after=offset, limit=LINES_PER_READ)
                lines = [line for line in lines if line[0] <= feed.offset]
                if not lines:
                    break
                events.append(("log", {"run": feed.run, "lines": lines}))
                offset = lines[-1][0]
            else:
                events.append(("changed", {"run": feed.run, "reload": True}))
    last = len(events) - 1
    return b"".join(
        message(event, data, feed if i == last else None) for i, (event, data) in enumerate(events)
    )


class Feeds:
    """The live feeds of one site: `stream(key, after)` is one client's events."""

    def __init__(
        self,
        store: Store,
        *,
        reads: Reader,
        wake: Callable[[float], Awaitable[None]] | None = None,
        interval: float = 1.0,
    ) -> None:
        self.store = store
        self.reads = reads
        self.wake = wake or anyio.sleep
        """Returns after at most that many seconds, sooner when output or state moved."""
        self.interval = interval
        self._feeds: dict[str, _Feed] = {}

    async def stream(self, key: str, after: str) -> AsyncIterator[bytes]:
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = _Feed(key)
        feed.clients += 1
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            async for chunk in self._follow(feed, Cursor.parse(after) if after else None):
                yield chunk
        finally:
            feed.clients -= 1
            if feed.clients == 0 and self._feeds.get(key) is feed:
                del self._feeds[key]

    async def _follow(self, feed: _Feed, cursor: Cursor | None) -> AsyncIterator[bytes]:
        quiet_since = anyio.current_time()
        if feed.cursor is None and not feed.reading:
            await self._read(feed, wait=False)
        while True:
            sent = b""
            if feed.cursor is None or cursor == feed.cursor:
                if not feed.reading:
                    await self._read(feed, wait=True)
                else:
                    with anyio.move_on_after(PING_SECONDS):
                        await feed.moved.wait()
            elif cursor is not None and cursor in feed.ticks:
                cursor, sent = feed.ticks[cursor]
            else:
                target = feed.cursor
                sent = await self.reads(_catch_up, self.store, feed.key, cursor, target)
                cursor = target
            if sent:
                quiet_since = anyio.current_time()
                yield sent
            elif anyio.current_time() - quiet_since >= PING_SECONDS:
                quiet_since = anyio.current_time()
                yield b": ping\n\n"

    async def _read(self, feed: _Feed, *, wait: bool) -> None:
        """Read for the feed (one client at a time); the others wait on `moved`."""
        feed.reading = True
        try:
            if wait:
                await self.wake(self.interval)
            before = feed.cursor
            after, messages = await self.reads(_tick, self.store, feed.key, before)
            if before is not None and after != before:
                feed.ticks[before] = (after, messages)
                while len(feed.ticks) > KEPT_TICKS:
                    feed.ticks.popitem(last=False)
            feed.cursor = after
        finally:
            feed.reading = False
            feed.poke()
