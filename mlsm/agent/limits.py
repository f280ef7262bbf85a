"""What a venv job is allowed, made real: `resources.cpu` as CPU affinity (whole
CPUs, the least used first), `resources.memory` as a watch by the run's shim that
ends the run with reason OOMKilled past it (`shim.py`), as Slurm's OverMemoryKill
does. The docker runtime leaves both to the engine.

There is no CPU quota: a fraction of a CPU (500m) gets one whole CPU, and the
sentence the run reports says so.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlsm.schemas.fields import format_bytes

__all__ = ["Limits", "allowed_cpus", "choose", "memory_cgroup", "oom_killed", "release", "size"]


@dataclass(frozen=True, slots=True)
class Limits:
    cpus: tuple[int, ...]
    """CPUs the run is pinned to; empty: all the agent may use."""
    memory: int | None
    """Resident bytes past which the run is ended (by the shim's watch)."""
    said: str
    """What is enforced and how, for `mlsmctl describe`."""
    cgroup: Path | None = None
    """The run's memory cgroup, which the shim joins (then `memory` is None)."""


CGROUP_ROOT = Path("/sys/fs/cgroup")


def memory_cgroup(run: str, limit: int, root: Path = CGROUP_ROOT) -> Path | None:
    """A new memory cgroup for `run`, below the agent's own, limited to `limit`
    bytes; None where the machine offers none the agent may write."""
    try:
        own = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    except OSError:
        return None
    v1 = [path for _, controllers, path in own if "memory" in controllers.split(",")]
    v2 = [path for _, controllers, path in own if controllers == ""]
    if v1:
        base, limit_file = root / "memory" / v1[0].lstrip("/"), "memory.limit_in_bytes"
    elif v2 and (root / "cgroup.controllers").is_file():
        base, limit_file = root / v2[0].lstrip("/"), "memory.max"
    else:
        return None
    group = base / f"mlsm-{run}"
    try:
        group.mkdir(exist_ok=True)
        (group / limit_file).write_text(str(limit))
        if (group / "memory.swappiness").exists():
            (group / "memory.swappiness").write_text("0")  # the limit is memory, not swap
    except OSError:
        release(group)
        return None
    return group


def release(group: Path | None) -> None:
    """Remove a run's cgroup once nothing runs in it."""
    if group is not None:
        with contextlib.suppress(OSError):
            group.rmdir()


def oom_killed(group: Path) -> str | None:
    """How the kernel ended the run for memory, or None when it did not."""
    for name in ("memory.events", "memory.oom_control"):  # v2, v1
        try:
            lines = (group / name).read_text().splitlines()
        except OSError:
            continue
        counts = dict(line.split() for line in lines if len(line.split()) == 2)
        if int(counts.get("oom_kill", "0")) > 0:
            limit = "limit"
            for limit_file in ("memory.max", "memory.limit_in_bytes"):
                with contextlib.suppress(OSError, ValueError):
                    limit = size(int((group / limit_file).read_text()))
            held = "(resources.memory, held by a memory cgroup)"
            return f"killed by the kernel for memory: over the {limit} it is allowed {held}"
    return None


def allowed_cpus() -> list[int]:
    """The CPUs this agent may use (its own affinity, which a cgroup's cpuset sets)."""
    return sorted(os.sched_getaffinity(0))


def choose(
    cpu: float,
    memory: int | None,
    allowed: Sequence[int],
    busy: Sequence[int],
    cgroup: Path | None = None,
) -> Limits:
    """Limits for a run asking `cpu` cores and `memory` bytes, on an agent that may
    use `allowed` CPUs of which running runs are pinned to `busy` (a CPU once per
    run); `cgroup`: the memory cgroup made for it, if any."""
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
    if memory and cgroup is not None:
        parts.append(f"memory {size(memory)}: a memory cgroup ({cgroup}), held by the kernel")
    elif memory:
        watched = "its processes' resident memory watched every 0.25 s, OOMKilled past it"
        parts.append(f"memory {size(memory)}: {watched} (no memory cgroup to use here)")
    else:
        parts.append("memory: not limited (no resources.memory)")
    said = "enforced: " + "; ".join(parts)
    if cgroup is not None:
        return Limits(cpus=cpus, memory=None, said=said, cgroup=cgroup)
    return Limits(cpus=cpus, memory=memory, said=said)


def size(count: int) -> str:
    """A byte count as people write it (`64Mi`), for messages."""
    written = format_bytes(count)
    return written if isinstance(written, str) else f"{written} bytes"
