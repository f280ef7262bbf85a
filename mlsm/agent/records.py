"""What the agent remembers of each run, in its state dir (`runs/<id>.json`), so that
a restarted agent adopts the runs still going, reports those that ended while it was
down, ships the rest of their logs, and never starts a run twice.

A record is written when the run's process starts and rewritten (atomically) when
its shipping offsets move or it ends; it is removed once the run is reported,
forgotten and all its output is shipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunRecord", "load_records", "process_start"]


@dataclass
class RunRecord:
    run: str
    job: str
    pid: int
    pid_start: int | None
    """The process's start time (clock ticks since boot): a pid reused by another
    process after a reboot or a long time is not mistaken for the run."""
    directory: str
    """runs/<id>: output.log, metrics.jsonl, and the shim's status file."""
    assignment: dict[str, Any] = field(default_factory=dict)
    log_offset: int = 0
    metrics_offset: int = 0
    ended: bool = False
    outcome: dict[str, Any] | None = None
    """How it ended (phase, reason, message, exit code), once it has."""
    reported: str | None = None
    forgotten: bool = False

    @property
    def log(self) -> Path:
        return Path(self.directory) / "output.log"

    @property
    def metrics(self) -> Path:
        return Path(self.directory) / "metrics.jsonl"

    @property
    def status(self) -> Path:
        return Path(self.directory) / "exit-status.json"

    def save(self, state: Path) -> None:
        folder = state / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{self.run}.json.tmp"
        partial.write_text(json.dumps(asdict(self)))
        os.replace(partial, folder / f"{self.run}.json")

    def remove(self, state: Path) -> None:
        (state / "runs" / f"{self.run}.json").unlink(missing_ok=True)

    def alive(self) -> bool:
        """The run's shim still runs (the same process, not a reused pid)."""
        start = process_start(self.pid)
        return start is not None and (self.pid_start is None or start == self.pid_start)

    def exit_status(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.status.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def process_start(pid: int) -> int | None:
    """The process's start time from /proc, or None when there is no such live process
    (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def load_records(state: Path) -> list[RunRecord]:
    records = []
    for path in sorted((state / "runs").glob("*.json")):
        try:
            records.append(RunRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue  # a damaged record: that run is left for the controller's lease
    return records
