"""What the heartbeat path keeps in memory so that a heartbeat in the steady state
reads nothing from the database and writes with hundreds of others in one commit.

- `Identities`: every live node token's digest → (role, node), loaded in one query
  and reloaded every TOKEN_SECONDS (so a revoked token stops working within that
  time). A digest not in the table is looked up in the database before it is
  refused, so a token issued a moment ago works on its first request; lookups are
  batched (one query at a time answers every unknown digest waiting for it) and
  misses are remembered until the next reload (at most ABSENT_TOKENS of them), so a
  flood of bad tokens costs a few reads, not one per request.
- `NodeTable`: every admitted node's id, assignment revision, last heartbeat, active
  runs and catalog datasets, loaded in three queries. A binding, a lease change or a
  sync calls `forget()`; the next heartbeat reloads the whole table once (single
  flight), never once per node.
- `Beat`: a heartbeat waiting to be written (`AgentApi.flush_heartbeats`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import select

from mlsm.controller.capacity import Capacity
from mlsm.schemas.phases import RunPhase
from mlsm.store import Node, Run, Store, Token

__all__ = ["Beat", "Identities", "NodeState", "NodeTable"]

TOKEN_SECONDS = 10.0
ABSENT_TOKENS = 10_000
LOOKUP_BATCH = 500
NODE_SECONDS = 30.0


@dataclass(slots=True)
class Beat:
    at: dt.datetime
    inventory: dict[str, Any]
    fresh: bool
    """The node had not beaten within the grace period: it (re)joins the fleet."""


@dataclass(slots=True)
class NodeState:
    id: int
    revision: int
    last_beat: dt.datetime | None
    active: frozenset[str]
    datasets: dict[str, dict[str, str]]


class Identities:
    def __init__(
        self,
        store: Store,
        *,
        reload_after: float = TOKEN_SECONDS,
        absent: int = ABSENT_TOKENS,
        capacity: Capacity | None = None,
    ) -> None:
        self.store = store
        self.capacity = capacity or Capacity()
        self.reload_after = reload_after
        self.max_absent = absent
        self.reads = 0
        """Queries run so far (the bench and the tests count them)."""
        self._table: dict[str, tuple[str, str]] = {}
        self._absent: dict[str, None] = {}  # insertion-ordered: the oldest miss goes first
        self._loaded = -1e9
        self._reload_lock = anyio.Lock()
        self._wanted: set[str] = set()
        self._lookup_lock = anyio.Lock()

    async def lookup(self, digest: str) -> tuple[str, str] | None:
        """(role, node) of a live token by its sha256 digest, or None."""
        if time.monotonic() - self._loaded > self.reload_after:
            await self._reload()
        found = self._table.get(digest)
        if found is not None or digest in self._absent:
            return found
        return await self._look_up(digest)

    async def _reload(self) -> None:
        loaded = self._loaded
        async with self._reload_lock:
            if self._loaded != loaded:
                return  # another request reloaded it while this one waited
            table = await self.capacity.control_plane(self._load)
            self._table, self._absent = table, {}
            self._loaded = time.monotonic()

    async def _look_up(self, digest: str) -> tuple[str, str] | None:
        """The digest from the database. One query runs at a time, for every digest
        that was waiting when it began; a request whose digest a query began to look
        for after the request arrived takes that query's answer."""
        self._wanted.add(digest)
        async with self._lookup_lock:
            if digest in self._wanted:
                wanted, self._wanted = self._wanted, set()
                found = await self.capacity.control_plane(self._load_some, sorted(wanted))
                self._table.update(found)
                for missing in wanted.difference(found):
                    self._absent[missing] = None
                while len(self._absent) > self.max_absent:
                    del self._absent[next(iter(self._absent))]
                return found.get(digest)
        return self._table.get(digest)

    def _load(self) -> dict[str, tuple[str, str]]:
        with self.store.read() as session:
            self.reads += 1
            rows = session.execute(
                select(Token.digest, Token.role, Token.node).where(Token.revoked_at.is_(None))
            )
            return {digest: (role, node or "") for digest, role, node in rows}

    def _load_some(self, digests: list[str]) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        with self.store.read() as session:
            for at in range(0, len(digests), LOOKUP_BATCH):
                self.reads += 1
                rows = session.execute(
                    select(Token.digest, Token.role, Token.node).where(
                        Token.digest.in_(digests[at : at + LOOKUP_BATCH]),
                        Token.revoked_at.is_(None),
                    )
                )
                found.update({digest: (role, node or "") for digest, role, node in rows})
        return found


class NodeTable:
    def __init__(
        self,
        store: Store,
        datasets: Callable[[Any], dict[str, dict[str, dict[str, str]]]],
        capacity: Capacity | None = None,
    ) -> None:
        self.store = store
        self.capacity = capacity or Capacity()
        self._datasets = datasets
        self._table: dict[str, NodeState] | None = None
        self._loaded = 0.0
        self._generation = 0
        self._lock = anyio.Lock()

    def forget(self) -> None:
        self._generation += 1
        self._table = None

    async def get(self, name: str) -> NodeState | None:
        """The admitted node's state, or None when it has no merged Node manifest."""
        table = self._table
        if table is None or time.monotonic() - self._loaded > NODE_SECONDS:
            table = await self._reload()
        return table.get(name)

    async def _reload(self) -> dict[str, NodeState]:
        async with self._lock:
            if self._table is not None and time.monotonic() - self._loaded <= NODE_SECONDS:
                return self._table  # another request reloaded it while this one waited
            generation = self._generation
            table = await self.capacity.control_plane(self._load)
            if generation == self._generation:  # not forgotten while loading
                self._table, self._loaded = table, time.monotonic()
            return table

    def _load(self) -> dict[str, NodeState]:
        with self.store.read() as session:
            active: dict[str, set[str]] = {}
            for run_id, node in session.execute(
                select(Run.id, Run.node).where(Run.phase.in_(RunPhase.active_phases()))
            ):
                active.setdefault(node or "", set()).add(run_id)
            catalog = self._datasets(session)
            rows = session.execute(
                select(Node.id, Node.name, Node.assignment_revision, Node.last_heartbeat_at)
                .where(Node.deleted_at.is_(None), Node.generation > 0)
            )  # fmt: skip
            return {
                name: NodeState(
                    id=node_id,
                    revision=revision,
                    last_beat=last,
                    active=frozenset(active.get(name, ())),
                    datasets=catalog.get(name, {}),
                )
                for node_id, name, revision, last in rows
            }
