"""The runtime port: what the agent asks of the thing that runs a job, whichever it is.

A runtime prepares a run's environment (`prepare`: a venv built, an image found or
pulled; blocking, called from a worker thread), starts it (`start`), and finds it
again after an agent restart from its record (`adopt`). What comes back is a
`Handle`: `poll` says how the run ended once it has (an `Outcome`), `signal` asks it
to stop (SIGTERM, then SIGKILL once the grace period is over) and `facts` is what
the run's record keeps to adopt it. Every runtime writes the job's stdout and
stderr to the run folder's log (`RunFolder.log`), which the agent ships the same
way for all of them; `release` is called once that output is shipped.

The agent loop knows runtimes only through this port (`venv.VenvRuntime`,
`docker.DockerRuntime`). A job's paths reach it as `Mount`s (host folders under
the storage root, each with the place the job sees it at): a venv job sees the host
path itself, a container the mount's target.
"""

from __future__ import annotations

import signal
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlsm.agent.reconciling import Outcome
from mlsm.agent.records import RunFolder, RunRecord
from mlsm.errors import MlsmError

__all__ = [
    "EnvBuildFailed",
    "Handle",
    "ImagePullFailed",
    "Launch",
    "Mount",
    "Runtime",
    "StartError",
    "StartFailed",
    "signal_outcome",
    "tail",
]


class StartError(MlsmError):
    """The run could not be started; `reason` is what its failure reports."""

    reason = "StartFailed"


class StartFailed(StartError):
    """The job's process could not be started (command not found, a refused mount)."""


class EnvBuildFailed(StartError):
    """The environment could not be built; the message says why (pip's last lines)."""

    reason = "EnvBuildFailed"


class ImagePullFailed(StartError):
    """The image is not on the node and could not be pulled; the engine's message."""

    reason = "ImagePullFailed"


@dataclass(frozen=True, slots=True)
class Mount:
    """A host folder under the storage root that the job sees at `target` (in a
    container; a venv job sees `source` itself)."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything needed to start one run, whatever runs it."""

    run: str
    job: str
    node: str
    folder: RunFolder
    """The run's folder on the host: its log, metrics and status files."""
    argv: Sequence[str]
    """The command; empty: the image's own (docker only)."""
    env: Mapping[str, str]
    """The job's variables (spec.env and MLSM_*), paths as the job sees them."""
    mounts: Sequence[Mount] = ()
    """The run folder first (the working directory), then output, dataset, model..."""
    gpus: Sequence[int] = ()
    cpu: float = 1.0
    memory: int | None = None
    """resources.memory in bytes."""
    busy_cpus: Sequence[int] = ()
    """CPUs other runs here are pinned to (a CPU once per run)."""
    python: str = "3"
    requirements: Sequence[str] = ()
    system_site_packages: bool = False
    image: str | None = None
    trainer: bool = False
    """The built-in trainer (part of mlsm): the job needs mlsm's own code."""
    torchrun: bool = False
    """Its processes start under torchrun: the job needs torch (a venv on the agent's
    Python inherits the agent's, after the job's own requirements)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    host_network: bool = False
    """A job on several nodes: its ranks meet other nodes' (a container shares the
    host's network, as NCCL and gloo need)."""


class Handle(Protocol):
    """A started (or adopted) run."""

    @property
    def enforced(self) -> str | None:
        """What is enforced on it and how, for `mlsmctl describe` (None: unknown)."""

    @property
    def cpus(self) -> tuple[int, ...]:
        """The CPUs it is pinned to (empty: not pinned, or the engine's to place)."""

    def poll(self) -> Outcome | None:
        """How it ended, once it has (never blocks)."""

    def signal(self, sig: signal.Signals) -> None:
        """Send it `sig` (may block briefly: call from a worker thread)."""

    def facts(self) -> dict[str, Any]:
        """What its record keeps to adopt it after a restart (RunRecord fields)."""


class Runtime(Protocol):
    name: str

    def sees(self, mount: Mount) -> str:
        """The path at which the job sees `mount`."""

    def problem(self) -> str | None:
        """Why this runtime cannot run jobs here now; None when it can (blocking)."""

    def prepare(self, launch: Launch) -> Any:
        """Make the run's environment ready (blocking: build, pull); returns what
        `start` needs."""

    def environment(self, launch: Launch, prepared: Any) -> dict[str, Any]:
        """What the run's process runs in, for its provenance: the venv's Python,
        requirements and their hash, or the image and its digest."""

    def start(self, launch: Launch, prepared: Any) -> Handle:
        """Start the run (blocking)."""

    def adopt(self, record: RunRecord) -> Handle:
        """The run of `record`, found again after a restart (it may have ended)."""

    def release(self, record: RunRecord) -> None:
        """The run is over and its output shipped: free what it held (blocking)."""

    def strays(self, known: Collection[str]) -> list[RunRecord]:
        """Records for this node's runs that the runtime holds and no record in
        `known` names (a container whose record was lost; blocking)."""


def tail(path: Path, lines: int = 10, limit: int = 4096) -> str:
    """The last lines of a text file (at most `limit` bytes of it)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(handle.tell() - limit, 0))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def signal_outcome(code: int, last: str, *, memory_hint: str = "") -> Outcome:
    """The outcome of a job that ended with `code` (negative: killed by that signal),
    its last output lines `last`."""
    if code == 0:
        return Outcome("Succeeded", "Completed", "exit code 0", 0)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = memory_hint or (" (out of memory?)" if code == -signal.SIGKILL else "")
        return Outcome(
            "Failed", "Killed", f"killed by {name}{hint}; last output:\n{last}".rstrip(), code
        )
    return Outcome("Failed", "Error", f"exit code {code}; last output:\n{last}".rstrip(), code)
