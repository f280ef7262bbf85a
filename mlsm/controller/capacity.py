"""Worker-thread capacity, split by purpose, so that heavy reads never starve the
control plane.

Every blocking database call runs in a worker thread. With one shared pool, 200
clients listing 5,000 jobs filled it, and a node heartbeating every 5 s went
NotReady for two minutes because the heartbeat flush waited behind them. Here
each purpose has its own limiter:

- `control`: the heartbeat flush, the token and node tables that admit
  heartbeats, the scheduling pass with its lease check, and the sync;
- `agents`: the agent API's reads and writes (assignments, reports, output);
- `health`: `/healthz`;
- `reads`: the read API (`mlsmctl`, the site): a bounded share. Past it a read
  waits its turn in the event loop, which costs nothing while it waits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread

__all__ = ["Capacity"]

T = TypeVar("T")

READ_THREADS = 1
"""Read API calls at once. A read is Python work under the interpreter lock, so more
threads add no throughput, only contention for the lock the event loop needs for
heartbeats: one thread listed 200 × 5,000 jobs faster than two or four did."""


@dataclass
class Capacity:
    reads: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(READ_THREADS)
    )
    agents: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(16))
    control: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(8))
    health: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(2))

    async def read(self, function: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(function, *args, limiter=self.reads)

    async def agent(self, function: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(function, *args, limiter=self.agents)

    async def control_plane(self, function: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(function, *args, limiter=self.control)

    async def check_health(self, function: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(function, *args, limiter=self.health)
