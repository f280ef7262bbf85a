"""What the agent remembers of each run, in its state dir (`runs/<id>.json`), so that
a restarted agent adopts the runs still going, reports those that ended while it was
down, ships the rest of their logs, and never starts a run twice.

A record is written when the run's process starts and rewritten when its shipping
offsets move or it ends, always atomically and fsynced (a temporary file, fsync,
rename, fsync of the folder); it is removed once the run is reported, forgotten and
all its output is shipped.

The run's own folder (`runs/<id>/`) keeps what is needed to find the run again if
its record is lost or damaged (a full disk, a crash mid-write, a hand edit):
`process.json` (run, job, the shim's pid and start time, the assignment), written
when it starts, beside the shim's exit-status file. `load_records` rebuilds such a
run from there; failing that, it looks for the shim in /proc by the run's
MLSM_RUN_ID; failing that, the run ended unseen and is reported as such. A damaged
record never means a second start of the same run.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsm.agent.reconciling import Observed
from mlsm.files import write_durably

if TYPE_CHECKING:
    from mlsm.agent.runtimes import Handle

__all__ = [
    "PROCESS_FILE",
    "LocalRun",
    "RunFolder",
    "RunRecord",
    "load_records",
    "process_start",
    "recover",
    "safe_name",
    "write_durably",
]

PROCESS_FILE = "process.json"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_name(name: object) -> bool:
    """A run id or job name the agent may use as a folder name under its storage root."""
    return isinstance(name, str) and bool(_SAFE_NAME.fullmatch(name)) and ".." not in name


@dataclass(frozen=True, slots=True)
class RunFolder:
    """A run's own folder, `<storage_root>/runs/<id>/`: the one place its layout is
    named. The job runs there (its working directory)."""

    path: Path

    @property
    def log(self) -> Path:
        """The job's stdout and stderr, shipped line by line."""
        return self.path / "output.log"

    @property
    def metrics(self) -> Path:
        """MLSM_METRICS_FILE: one JSON record a line, shipped like the log."""
        return self.path / "metrics.jsonl"

    @property
    def status(self) -> Path:
        """The shim's exit status, written when the job ends."""
        return self.path / "exit-status.json"

    @property
    def process(self) -> Path:
        """What finds the run again without its record (`RunRecord.save_process`)."""
        return self.path / PROCESS_FILE

    @property
    def provenance(self) -> Path:
        """MLSM_PROVENANCE_FILE: what made the run (`mlsm.agent.provenance`)."""
        return self.path / "provenance.json"

    @property
    def trainer_config(self) -> Path:
        """The built-in trainer's config, for trainer jobs."""
        return self.path / "trainer.json"


@dataclass
class LocalRun:
    """A run this agent holds, in memory: its assignment, what the reconciler knows of
    it, its handle once started (`mlsm.agent.runtimes`) and its record."""

    id: str
    assignment: dict[str, Any]
    runtime: str = "venv"
    observed: Observed = field(default_factory=lambda: Observed("preparing"))
    handle: Handle | None = None
    """The runtime's, once the run has started or been adopted."""
    cancelled: bool = False
    record: RunRecord | None = None
    rendezvous: str = ""
    """host:port its ranks meet at, when this node hosts a multi-node job's rendezvous."""

    @property
    def job(self) -> str:
        return str(self.assignment.get("job", "?"))

    @property
    def nodes(self) -> int:
        """How many nodes its job spans (one run on each)."""
        nodes = self.assignment.get("nodes", 1)
        return nodes if isinstance(nodes, int) and nodes > 0 else 1

    @property
    def rank(self) -> int:
        """Its node rank among them."""
        rank = self.assignment.get("rank", 0)
        return rank if isinstance(rank, int) and rank >= 0 else 0


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
    runtime: str = "venv"
    """The runtime that runs it (`mlsm.agent.runtimes`), which adopts it again."""
    container: str | None = None
    """The container's name (docker runs; their pid is 0)."""
    cgroup: str | None = None
    """The run's memory cgroup (venv runs where the machine offers one)."""
    enforced: str | None = None
    """What is enforced on it, as said when it started."""

    @property
    def folder(self) -> RunFolder:
        return RunFolder(Path(self.directory))

    @property
    def log(self) -> Path:
        return self.folder.log

    @property
    def metrics(self) -> Path:
        return self.folder.metrics

    @property
    def status(self) -> Path:
        return self.folder.status

    @property
    def process_file(self) -> Path:
        return self.folder.process

    def save(self, state: Path) -> None:
        write_durably(state / "runs" / f"{self.run}.json", json.dumps(asdict(self)))

    def save_process(self) -> None:
        """What finds the run again without its record (written once, at its start)."""
        facts = {
            "run": self.run,
            "job": self.job,
            "pid": self.pid,
            "pidStart": self.pid_start,
            "assignment": self.assignment,
            "runtime": self.runtime,
            "container": self.container,
            "cgroup": self.cgroup,
        }
        write_durably(self.process_file, json.dumps(facts))

    def remove(self, state: Path) -> None:
        """Forget the run: it is reported and shipped (its folder stays, as output)."""
        self.process_file.unlink(missing_ok=True)
        (state / "runs" / f"{self.run}.json").unlink(missing_ok=True)

    def alive(self) -> bool:
        """The run's shim still runs (the same process, not a reused pid); a container's
        state is the engine's to say (False here)."""
        if self.container is not None:
            return False
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


def load_records(state: Path, runs: Path) -> tuple[list[RunRecord], list[str]]:
    """The records in `state/runs`, and what was damaged, each said in a sentence.

    A record that cannot be read, and a run folder under `runs` with a process file
    but no record (the agent died as it started the run), are rebuilt from the run's
    own folder (`recover`) and saved again. Offsets start at 0: the controller keeps
    what it has and takes only what it lacks."""
    records: list[RunRecord] = []
    damage: list[str] = []
    seen: set[str] = set()
    for path in sorted((state / "runs").glob("*.json")):
        run = path.stem
        seen.add(run)
        try:
            records.append(RunRecord(**json.loads(path.read_text())))
            continue
        except (OSError, ValueError, TypeError) as exc:
            what = f"{exc.__class__.__name__}: {exc}"[:200]
        record, how = recover(run, runs / run)
        if record is None:
            damage.append(
                f"run {run}: its record {path} is damaged ({what}) and it never "
                f"started here ({how}): it may start now"
            )
            path.unlink(missing_ok=True)
            continue
        record.save(state)
        records.append(record)
        damage.append(f"run {run}: its record {path} was damaged ({what}); {how}")
    for process in sorted(runs.glob(f"*/{PROCESS_FILE}")):
        run = process.parent.name
        if run in seen:
            continue
        record, how = recover(run, process.parent)
        if record is not None:
            record.save(state)
            records.append(record)
            damage.append(f"run {run} had no record (the agent stopped as it started it); {how}")
    return records, damage


def recover(run: str, directory: Path) -> tuple[RunRecord | None, str]:
    """The record of a run rebuilt from its folder, and how it was found; None when
    the folder is not there (the run never started here)."""
    if not directory.is_dir():
        return None, f"no folder {directory}"
    try:
        facts = json.loads(RunFolder(directory).process.read_text())
        record = RunRecord(
            run=run,
            job=str(facts["job"]),
            pid=int(facts["pid"]),
            pid_start=facts.get("pidStart"),
            directory=str(directory),
            assignment=dict(facts.get("assignment") or {}),
            runtime=str(facts.get("runtime") or "venv"),
            container=facts.get("container"),
            cgroup=facts.get("cgroup"),
        )
        how = f"found from {RunFolder(directory).process}"
    except (OSError, ValueError, KeyError, TypeError):
        pid = _find_shim(run)
        record = RunRecord(
            run=run,
            job="?",
            pid=pid or 0,
            pid_start=process_start(pid) if pid else None,
            directory=str(directory),
        )
        how = f"its shim found in /proc by MLSM_RUN_ID={run}" if pid else "no process of it found"
    if record.container is not None:
        return record, f"{how}, container {record.container}: adopted from the engine"
    alive = "still running: adopted" if record.alive() else "ended: its exit status is reported"
    return record, f"{how}, pid {record.pid}, {alive}"


def _find_shim(run: str) -> int | None:
    """The pid of the run's shim: the process leading its own group whose environment
    holds MLSM_RUN_ID=<run>, among this user's processes."""
    needle = f"\0MLSM_RUN_ID={run}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = b"\0" + (entry / "environ").read_bytes()
            if needle in environ and os.getpgid(int(entry.name)) == int(entry.name):
                return int(entry.name)
        except (OSError, ProcessLookupError):
            continue
    return None
