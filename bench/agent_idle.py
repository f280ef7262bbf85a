"""What an idle `mlsm-agent` costs its server: CPU (share of one core) and resident
memory, with no job running, talking to a real controller (heartbeats every 5 s, a
long poll for assignments, its reconcile and shipping loops), with the container
engine connected when one answers (DOCKER_HOST, or `make engine`'s socket).

    python bench/agent_idle.py [--seconds 30]

Targets (issue 8): under 1% of a core, under 80 MB resident.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Harness, wait


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name, Harness(Path(name)) as h:
        wait(lambda: h.client.get("/api/v1/nodes/n1").json()["status"]["lastHeartbeatAt"])
        assert h.agent is not None
        time.sleep(5)  # past start-up: imports, GPU discovery, the first heartbeats
        pid, start, wall = h.agent.pid, cpu_seconds(h.agent.pid), time.monotonic()
        time.sleep(args.seconds)
        used = cpu_seconds(pid) - start
        share = used / (time.monotonic() - wall)
        status = h.client.get("/api/v1/nodes/n1").json()["status"]
        runtimes = ", ".join(status.get("runtimes", [])) or "none"
        print(f"idle agent over {args.seconds:.0f} s (runtimes offered: {runtimes}): "
              f"{share * 100:.2f}% of a core, {rss_mb(pid):.0f} MB resident")  # fmt: skip


if __name__ == "__main__":
    main()
