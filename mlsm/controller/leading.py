"""Which controller leads: every controller serves the API, the agent API and the
site; exactly one, the leader, runs the sync, the scheduling passes and the lease
checks.

PostgreSQL (several controllers on one database):

- **A lock held by a session.** The leader holds an advisory lock on a database
  session of its own, which PostgreSQL lets go the moment that session ends: a
  leader that dies (`kill -9`, a crash, a reboot) frees it at once.
- **A lease, so that a hung leader is replaced.** The leader renews a lease row
  (`leadership`: holder, term, expiry by the database's clock) every `ttl / 4`
  seconds (a 6 s lease). A candidate that holds the lock leads only once the lease
  has lapsed: a leader cut off from the database has lost its session too, but may
  not know it yet. A leader that stops (SIGSTOP, a hung disk) keeps its session, and
  so the lock, but not its lease: once the lease has lapsed, a candidate ends the
  holder's session (`pg_terminate_backend`) and takes the lock.
- **A deposed leader stops first.** A leader counts its lease from before it asked
  for it, on its own monotonic clock, and stops leading at 80% of it unless renewed.
  The database's expiry is later than that, and a candidate waits for the expiry.
  A leader cut off from its database therefore stops acting before another starts.
- **Fencing.** Every leader transaction first reads the lease row `FOR SHARE`:
  holder and term must still be its own, and unexpired. A new leader's takeover
  updates that row, so it waits for the old leader's open transactions to end, and
  each one after it fails with `NotLeader` and rolls back. A binding is never
  written twice.

SQLite serves one controller: the first holds a lock on a file beside the database,
and a second refuses to start and says why.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import anyio
from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from mlsm.errors import UserError, first_line
from mlsm.store import Store
from mlsm.store.database import lock_key

__all__ = ["Leadership", "NotLeader", "leadership_for"]

log = logging.getLogger("mlsm.controller")

LEASE_SECONDS = 6.0
"""A leader renews its lease every quarter of this and stops at 80% of it unless
renewed; another leads once it has lapsed: within 6.5 s of a leader's death."""
LOCK = "controller-leader"
ROW = "controller"
SAFETY = 0.8
"""The share of its lease a leader counts on: it stops at 80%, the database's
expiry comes at 100%."""


class NotLeader(Exception):
    """A leader-only transaction found that this controller no longer leads."""


class Leadership:
    """One controller, always the leader (SQLite, or a store nobody else uses)."""

    identity: str = ""
    term: int = 0

    def __init__(self) -> None:
        self._changed = anyio.Event()

    @property
    def leading(self) -> bool:
        return True

    async def wait_leading(self) -> None:
        return

    def fence(self, session: Session) -> None:
        """Raise NotLeader unless this controller still leads (inside a transaction)."""

    async def run(self) -> None:
        await anyio.sleep_forever()

    def close(self) -> None:
        return


class SqliteLeadership(Leadership):
    """The only controller on a SQLite database: a second one refuses to start."""

    def __init__(self, database: str) -> None:
        super().__init__()
        self.path = Path(database + ".controller.lock")
        self._file: IO[str] | None = None

    def claim(self) -> None:
        file = self.path.open("a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise UserError(
                f"another controller ({holder}) already runs on the SQLite database "
                f"{self.path.name.removesuffix('.controller.lock')}: SQLite serves one "
                "controller. For two, give both the same PostgreSQL database "
                "(--database-url postgresql://...)"
            ) from None
        file.seek(0)
        file.truncate()
        self.identity = f"pid {os.getpid()} on {socket.gethostname()}"
        self.term = 1
        file.write(self.identity + "\n")
        file.flush()
        self._file = file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class PostgresLeadership(Leadership):
    """One of several controllers on one PostgreSQL database."""

    def __init__(
        self, store: Store, *, ttl: float = LEASE_SECONDS, retry: float = 0.5, identity: str = ""
    ) -> None:
        super().__init__()
        self.store = store
        self.ttl = ttl
        self.retry = retry
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.term = 0
        self._deadline = 0.0
        """When this leader stops unless renewed (time.monotonic())."""
        self._session: Connection | None = None
        """The database session that holds the advisory lock."""

    @property
    def leading(self) -> bool:
        return self.term > 0 and time.monotonic() < self._deadline

    async def wait_leading(self) -> None:
        while not self.leading:
            changed = self._changed
            with anyio.move_on_after(self.retry):
                await changed.wait()

    def fence(self, session: Session) -> None:
        if not self.leading:
            raise NotLeader(f"{self.identity} no longer leads")
        held = session.execute(
            text(
                "SELECT 1 FROM leadership WHERE name = :row AND holder = :me AND term = :term "
                "AND expires_at > now() FOR SHARE"
            ),
            {"row": ROW, "me": self.identity, "term": self.term},
        ).first()
        if held is None:
            raise NotLeader(f"{self.identity} lost the lease of term {self.term}")

    async def run(self) -> None:
        try:
            while True:
                if self.term == 0:
                    await self._contend()
                    await anyio.sleep(self.retry)
                elif time.monotonic() >= self._deadline:
                    self._demote()
                else:
                    await self._renew()
                    left = max(self._deadline - time.monotonic(), 0.0)
                    await anyio.sleep(min(self.ttl / 4, left))  # wake at the deadline
        finally:
            self.close()

    async def _contend(self) -> None:
        started = time.monotonic()
        try:
            term = await anyio.to_thread.run_sync(self._take, abandon_on_cancel=True)
        except Exception as exc:  # the database is down: try again
            log.warning("cannot contend for leadership: %s", first_line(exc))
            self._drop_session()
            return
        if term:
            self.term, self._deadline = term, started + self.ttl * SAFETY
            log.info("leading (term %d, %s)", term, self.identity)
            self._notify()

    async def _renew(self) -> None:
        started = time.monotonic()
        with anyio.move_on_after(max(self._deadline - started, 0.0)):
            try:
                renewed = await anyio.to_thread.run_sync(self._extend, abandon_on_cancel=True)
            except Exception as exc:  # the lease holds until the deadline: try again
                log.warning("cannot renew the lease: %s", first_line(exc))
                self._drop_session()  # the next try connects again
                return
            if renewed:
                self._deadline = started + self.ttl * SAFETY
            else:  # another holds the lease: it took over after ours lapsed
                self._demote()

    def _demote(self) -> None:
        log.warning("no longer leading (term %d): the lease was not renewed", self.term)
        self.term = 0
        self._drop_session()
        self._notify()

    # -- in a worker thread -----------------------------------------------------------

    def _connection(self) -> Connection:
        if self._session is None:
            self._session = self.store.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            )
        return self._session

    def _take(self) -> int:
        """The term this controller now leads, or 0 (another leads)."""
        session = self._connection()
        key = lock_key(LOCK)
        if not session.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar():
            self._end_lapsed_leader(session, key)
            return 0
        term = session.execute(
            text(
                "UPDATE leadership SET holder = :me, term = term + 1, "
                "expires_at = now() + make_interval(secs => :ttl) WHERE name = :row "
                "AND (holder = '' OR expires_at IS NULL OR expires_at < now()) RETURNING term"
            ),
            {"me": self.identity, "ttl": self.ttl, "row": ROW},
        ).scalar()
        return int(term or 0)  # 0: the last leader's lease runs yet; it may still act

    def _end_lapsed_leader(self, session: Connection, key: int) -> None:
        """The lock is held: if its holder let the lease lapse, it is hung or cut off;
        end its database session, so that the lock is free at the next try."""
        lapsed = session.execute(
            text("SELECT holder FROM leadership WHERE name = :row AND expires_at < now()"),
            {"row": ROW},
        ).first()
        if lapsed is None:
            return
        holders = session.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = :high AND objid = :low AND objsubid = 1"
            ),
            {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF},
        ).all()
        for (pid,) in holders:
            log.warning(
                "the leader %s let its lease lapse: ending its database session (pid %d)",
                lapsed[0],
                pid,
            )
            session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    def _extend(self) -> bool:
        fresh = self._session is None
        session = self._connection()
        if fresh:  # the session that held the lock was lost: hold it again if it is free
            session.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": lock_key(LOCK)})
        renewed = session.execute(
            text(
                "UPDATE leadership SET expires_at = now() + make_interval(secs => :ttl) "
                "WHERE name = :row AND holder = :me AND term = :term RETURNING term"
            ),
            {"ttl": self.ttl, "row": ROW, "me": self.identity, "term": self.term},
        ).first()
        return renewed is not None

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.invalidate()  # never back to the pool: it may hold the lock
                session.close()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def close(self) -> None:
        """Stop leading: the lease ends now (best effort), so that another leads at
        its next try rather than when the lease would have lapsed."""
        if self.term and self._session is not None:
            with contextlib.suppress(Exception):
                self._session.execute(
                    text(
                        "UPDATE leadership SET expires_at = now() WHERE name = :row "
                        "AND holder = :me AND term = :term"
                    ),
                    {"row": ROW, "me": self.identity, "term": self.term},
                )
        self.term = 0
        self._drop_session()


def leadership_for(store: Store, database: str | None, **options: Any) -> Leadership:
    """The leadership a controller on this store takes part in."""
    if store.dialect == "postgresql":
        return PostgresLeadership(store, **options)
    if store.dialect == "sqlite" and database and database != ":memory:":
        return SqliteLeadership(database)
    return Leadership()


Fence = Callable[[Session], None]
"""`Leadership.fence`: what a leader-only transaction calls first."""
