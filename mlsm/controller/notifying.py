"""Wake-ups between controllers on one PostgreSQL database, by LISTEN/NOTIFY.

Within one controller, a binding, a shipped log line or a finished run wakes the
long polls and live feeds waiting on it at once (in-memory events). With two
controllers, the waiter may be on the other one: an agent's long poll for
assignments held by the follower while the leader binds, a browser's live log on one
while the agent ships through the other. So each controller also publishes what
moved on one channel, `mlsm`, and listens on it:

    assignments   runs were bound or moved: wake assignment long polls and feeds
    output        log lines, metrics or a run's phase arrived: wake log followers
    schedule      a scheduling pass may bind something (for the leader)
    sync          a webhook or `mlsmctl apply` asked for a sync (for the leader)
    catalog       the datasets changed: forget the cached catalog

A message names its sender, which ignores its own. Topics published within a few
milliseconds go out as one message each, however often they were published. After
the listening connection is lost and made again, every handler runs once: what
was said meanwhile is not replayed, so waiters read the database again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread

from mlsm.backoff import Backoff
from mlsm.errors import first_line
from mlsm.store import Store

__all__ = ["Bus", "PostgresBus", "bus_for"]

log = logging.getLogger("mlsm.controller")

CHANNEL = "mlsm"
TOPICS = frozenset({"assignments", "output", "schedule", "sync", "catalog"})
COALESCE_SECONDS = 0.005

Handlers = dict[str, Callable[[], None]]


class Bus:
    """One controller alone: nothing to tell anyone."""

    def publish(self, topic: str) -> None:
        return

    async def run(self, handlers: Handlers) -> None:
        await anyio.sleep_forever()


class PostgresBus(Bus):
    def __init__(self, store: Store, identity: str) -> None:
        self.url = store.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self.identity = identity
        self._pending: set[str] = set()
        self._kick = threading.Event()
        self._stopping = threading.Event()
        self.sent = 0
        self.heard = 0

    def publish(self, topic: str) -> None:
        self._pending.add(topic)
        self._kick.set()

    async def run(self, handlers: Handlers) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._send_loop)
                tasks.start_soon(anyio.to_thread.run_sync, self._listen, handlers)
        finally:
            self._stopping.set()
            self._kick.set()

    # -- sending ----------------------------------------------------------------------

    async def _send_loop(self) -> None:
        import psycopg

        connection: Any = None
        backoff = Backoff(0.2, 5.0)
        try:
            while True:
                await anyio.to_thread.run_sync(self._kick.wait, abandon_on_cancel=True)
                await anyio.sleep(COALESCE_SECONDS)  # let a burst become one message
                self._kick.clear()
                topics, self._pending = self._pending, set()
                if not topics:
                    continue
                try:
                    if connection is None or connection.closed:
                        connection = await anyio.to_thread.run_sync(self._connect)
                    await anyio.to_thread.run_sync(self._notify, connection, sorted(topics))
                    backoff.reset()
                except psycopg.Error as exc:
                    said = ", ".join(sorted(topics))
                    log.warning("cannot tell the other controllers (%s): %s", said, first_line(exc))
                    self._pending |= topics
                    self._kick.set()
                    connection = None
                    await anyio.sleep(backoff.next())
        finally:
            if connection is not None:
                connection.close()

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, autocommit=True, connect_timeout=5)

    def _notify(self, connection: Any, topics: list[str]) -> None:
        for topic in topics:
            connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self.identity} {topic}"))
            self.sent += 1

    # -- listening (a worker thread) ----------------------------------------------------

    def _listen(self, handlers: Handlers) -> None:
        import psycopg

        backoff = Backoff(0.2, 5.0)
        first = True
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    if not first:  # messages were missed meanwhile: everybody reads again
                        for handler in handlers.values():
                            anyio.from_thread.run_sync(handler)
                    first = False
                    backoff.reset()
                    while not self._stopping.is_set():
                        for message in connection.notifies(timeout=1.0):
                            sender, _, topic = message.payload.partition(" ")
                            if sender == self.identity or topic not in handlers:
                                continue
                            self.heard += 1
                            anyio.from_thread.run_sync(handlers[topic])
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    return
                log.warning("lost the channel to the other controllers: %s; again", first_line(exc))
                self._stopping.wait(backoff.next())
            except anyio.RunFinishedError:
                return


def bus_for(store: Store, identity: str) -> Bus:
    return PostgresBus(store, identity) if store.dialect == "postgresql" else Bus()
