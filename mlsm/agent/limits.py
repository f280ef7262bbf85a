"""What a venv job is allowed, made real: `resources.cpu` as CPU affinity (whole
CPUs, the least used first), `resources.memory` as a watch by the run's shim that
ends the run with reason OOMKilled past it (`shim.py`), as Slurm's OverMemoryKill
does. The docker runtime leaves both to the engine.

There is no CPU quota: a fraction of a CPU (500m) gets one whole CPU, and the
sentence the run reports says so.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Limits", "allowed_cpus", "choose"]


@dataclass(frozen=True, slots=True)
class Limits:
    cpus: tuple[int, ...]
    """CPUs the run is pinned to; empty: all the agent may use."""
    memory: int | None
    """Resident bytes past which the run is ended."""
    said: str
    """What is enforced and how, for `mlsmctl describe`."""


def allowed_cpus() -> list[int]:
    """The CPUs this agent may use (its own affinity, which a cgroup's cpuset sets)."""
    return sorted(os.sched_getaffinity(0))


def choose(cpu: float, memory: int | None, allowed: Sequence[int], busy: Sequence[int]) -> Limits:
    """Limits for a run asking `cpu` cores and `memory` bytes, on an agent that may
    use `allowed` CPUs of which running runs are pinned to `busy` (a CPU once per run)."""
    wanted = max(1, math.ceil(cpu - 1e-9))
    parts = []
    if wanted >= len(allowed):
        cpus: tuple[int, ...] = ()
        parts.append(f"cpu {cpu:g}: all {len(allowed)} CPUs of the node (not limited)")
    else:
        load = Counter(busy)
        cpus = tuple(sorted(sorted(allowed, key=lambda c: (load[c], c))[:wanted]))
        rounded = "" if wanted == cpu else f", rounded up from {cpu:g} (no CPU quota)"
        listed = ",".join(map(str, cpus))
        parts.append(f"cpu {cpu:g}: {wanted} of {len(allowed)} CPUs ({listed}) by affinity")
        parts[-1] += rounded
    if memory:
        watched = "its processes' resident memory watched every 0.25 s, OOMKilled past it"
        parts.append(f"memory {_size(memory)}: {watched}")
    else:
        parts.append("memory: not limited (no resources.memory)")
    return Limits(cpus=cpus, memory=memory, said="enforced: " + "; ".join(parts))


def _size(count: int) -> str:
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return f"{count} bytes"
