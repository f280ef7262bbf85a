"""What the heartbeat says about this server: CPU cores, memory, GPUs, free disk under
the storage root, the runtimes it can run, its datasets, and the agent's version."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlsm import __version__
from mlsm.agent.datasets import ScanResult
from mlsm.agent.gpus import Gpu

__all__ = ["host_inventory", "memory_bytes"]


def memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def host_inventory(
    storage_root: Path,
    *,
    gpus: Iterable[Gpu],
    runtimes: Iterable[str],
    datasets: Mapping[str, ScanResult],
    missing: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`missing`: runtimes the agent may offer but cannot now, and why."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpus": cpus or 1,
        "memory": memory_bytes(),
        "gpus": [g.to_json() for g in gpus],
        "diskFree": shutil.disk_usage(storage_root).free,
        "runtimes": sorted(runtimes),
        "runtimeProblems": dict(sorted((missing or {}).items())),
        "datasets": {name: result.to_json() for name, result in sorted(datasets.items())},
        "agentVersion": __version__,
    }
