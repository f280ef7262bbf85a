"""The venv runtime: one Python virtual environment per (Python version, requirements,
system site packages), built once under `<storage root>/envs/` and reused by later
jobs; a job runs in it as its own process group, led by the shim (`shim.py`), which
holds its CPU and memory limits (`limits.py`) and writes its exit status.

A build holds a file lock on the environment, so two runs that need the same one
never build it twice (the second waits and reuses it), even across agent restarts.
An environment is ready only once its marker file is written; a half-built one left
by a crash is removed and built again. A failed build raises `EnvBuildFailed` with the
last lines of pip's output, which the run's failure message carries.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsm.agent import limits, shim
from mlsm.agent.reconciling import Outcome
from mlsm.agent.records import RunFolder, RunRecord, process_start
from mlsm.agent.runtimes import EnvBuildFailed, Launch, Mount, StartFailed, signal_outcome, tail

__all__ = ["RunProcess", "VenvRuntime"]

READY = ".mlsm-ready"
SHIM = shim.__file__


@dataclass(slots=True)
class RunProcess:
    """A started venv job: its shim leads the run's process group (`shim.py`)."""

    pid: int
    folder: RunFolder
    pid_start: int | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    limits: limits.Limits | None = None
    cgroup: Path | None = None
    """The run's memory cgroup, if it has one (also for adopted runs)."""
    said: str | None = None
    """What was enforced, as recorded (adopted runs)."""
    unknown: bool = False
    """It ended while no agent watched, and its shim could not write the status."""
    _outcome: Outcome | None = field(default=None, repr=False)

    @property
    def enforced(self) -> str | None:
        return self.limits.said if self.limits is not None else self.said

    @property
    def cpus(self) -> tuple[int, ...]:
        return self.limits.cpus if self.limits is not None else ()

    def code(self) -> int | None:
        """The exit status once the job has ended (negative: killed by that signal)."""
        if self.popen is not None:
            if self.popen.poll() is None:
                return None
        else:  # adopted after a restart: not our child, so watch /proc
            start = process_start(self.pid)
            if start is not None and (self.pid_start is None or start == self.pid_start):
                return None
        try:
            return int(json.loads(self.folder.status.read_text())["exitCode"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if self.popen is not None:  # the shim itself was killed (SIGKILL to the group)
            return self.popen.returncode
        self.unknown = True
        return -1

    def poll(self) -> Outcome | None:
        if self._outcome is None:
            code = self.code()
            if code is None:
                return None
            self._outcome = self._ended(code)
            limits.release(self.cgroup)
        return self._outcome

    def _ended(self, code: int) -> Outcome:
        if self.unknown:
            return Outcome(
                "Failed",
                "Unknown",
                "it ended while the agent was down, and its "
                "exit status was lost (was its process group killed?)",
            )
        last = tail(self.folder.log, lines=3, limit=1024)
        ended = self.ended()
        killed = limits.oom_killed(self.cgroup) if self.cgroup is not None else None
        if code != 0 and (ended.get("reason") == "OOMKilled" or killed):
            said = killed or str(ended.get("message", "killed for memory"))
            return Outcome("Failed", "OOMKilled", f"{said}; last output:\n{last}".rstrip(), code)
        return signal_outcome(code, last)

    def ended(self) -> dict[str, Any]:
        """What the shim wrote when the run ended ({} when nothing could be read)."""
        try:
            data = json.loads(self.folder.status.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def signal(self, sig: signal.Signals) -> None:
        if self.pid <= 1:  # a run found again with no process (0 would be our own group)
            return
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.pid, sig)

    def facts(self) -> dict[str, Any]:
        return {
            "runtime": "venv",
            "pid": self.pid,
            "pid_start": self.pid_start,
            "cgroup": None if self.cgroup is None else str(self.cgroup),
            "enforced": self.enforced,
        }


def _agent_site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def _site_packages(env: Path) -> Path:
    found = sorted(env.glob("lib/python3*/site-packages"))
    if not found:
        raise EnvBuildFailed(f"{env} has no lib/python3.*/site-packages after python -m venv")
    return found[0]


class VenvRuntime:
    name = "venv"

    def __init__(self, storage_root: Path, *, pip_args: list[str] | None = None) -> None:
        self.envs = storage_root / "envs"
        self.pip_args = list(pip_args or [])
        self._versions: dict[str, str] = {}

    def sees(self, mount: Mount) -> str:
        return str(mount.source)

    def problem(self) -> str | None:
        return None

    def prepare(self, launch: Launch) -> Path:
        return self.ensure_env(launch)

    def environment(self, launch: Launch, prepared: Path) -> dict[str, Any]:
        """The environment's key (Python version, requirements, inherited site
        directories) and its hash, which names the cached venv."""
        try:
            key = json.loads((prepared / READY).read_text())
        except (OSError, ValueError):
            key = {}
        return {"runtime": "venv", **key, "requirementsHash": prepared.name}

    def adopt(self, record: RunRecord) -> RunProcess:
        cgroup = Path(record.cgroup) if record.cgroup else None
        return RunProcess(
            record.pid, record.folder, record.pid_start, cgroup=cgroup, said=record.enforced
        )

    def release(self, record: RunRecord) -> None:
        limits.release(Path(record.cgroup) if record.cgroup else None)

    def strays(self, known: Collection[str]) -> list[RunRecord]:
        return []  # load_records finds a venv run from its folder and /proc

    # environments --------------------------------------------------------------------

    def interpreter(self, wanted: str) -> tuple[str, str]:
        """An installed Python matching `wanted` ('3', '3.11', '3.11.7'): (path, version)."""
        candidates = [sys.executable]
        parts = wanted.split(".")
        for n in range(len(parts), 1, -1):
            found = shutil.which(f"python{'.'.join(parts[:n])}")
            if found:
                candidates.append(found)
        seen = []
        for candidate in candidates:
            version = self._version(candidate)
            seen.append(version)
            if version == wanted or version.startswith(wanted + "."):
                return candidate, version
        found = ", ".join(sorted(set(seen)))
        raise EnvBuildFailed(
            f"Python {wanted} is not installed on this node (found {found}); "
            "install it, or ask for one of those in spec.runtime.venv.python"
        )

    def _version(self, executable: str) -> str:
        if executable not in self._versions:
            if executable == sys.executable:
                self._versions[executable] = ".".join(map(str, sys.version_info[:3]))
            else:
                code = "import sys; print('.'.join(map(str, sys.version_info[:3])))"
                done = subprocess.run(
                    [executable, "-c", code], capture_output=True, text=True, timeout=30
                )
                self._versions[executable] = done.stdout.strip() or "unknown"
        return self._versions[executable]

    def env_dir(self, launch: Launch) -> tuple[Path, str, dict[str, object]]:
        executable, version = self.interpreter(launch.python)
        key: dict[str, object] = {
            "python": version,
            "requirements": [r.strip() for r in launch.requirements],
            "systemSitePackages": launch.system_site_packages,
        }
        mine = ".".join(map(str, sys.version_info[:2]))
        agents = version == mine or version.startswith(mine + ".")
        if launch.trainer:
            if not agents:
                raise EnvBuildFailed(
                    f"the built-in trainer runs on the agent's Python {mine}, and the job asks "
                    f"for {launch.python} ({version}); set spec.runtime.venv.python to '{mine}'"
                )
            key["inherit"] = _agent_site_dirs()
        elif launch.torchrun and agents:  # torch from the agent's, unless the job pins its own
            key["inherit"] = _agent_site_dirs()
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.envs / digest, executable, key

    def ensure_env(self, launch: Launch) -> Path:
        """The run's environment, built first if needed (blocking: call from a thread)."""
        path, executable, key = self.env_dir(launch)
        if (path / READY).is_file():
            return path
        self.envs.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run building it: wait, then reuse
            if (path / READY).is_file():
                return path
            shutil.rmtree(path, ignore_errors=True)  # a half-built one from a crash
            try:
                self._build(path, executable, key, launch)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
        return path

    def _build(self, path: Path, executable: str, key: dict[str, object], launch: Launch) -> None:
        log = path.with_suffix(".build.log")
        requirements = [r.strip() for r in launch.requirements if r.strip()]
        venv = [executable, "-m", "venv", str(path)]
        if launch.system_site_packages:
            venv.append("--system-site-packages")
        if not requirements:
            venv.append("--without-pip")  # nothing to install: skip ensurepip (seconds)
        with log.open("wb") as out:
            if subprocess.run(venv, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise EnvBuildFailed(f"python -m venv failed:\n{tail(log)}")
            inherit = key.get("inherit")
            if isinstance(inherit, list) and inherit:
                # After the environment's own packages on sys.path, with their .pth files
                # (an editable mlsm is one), so a requirement the job pins still wins.
                lines = [f"import site; site.addsitedir({d!r})" for d in inherit]
                (_site_packages(path) / "mlsm-agent.pth").write_text("\n".join(lines) + "\n")
            if requirements:
                (path / "requirements.txt").write_text("\n".join(requirements) + "\n")
                pip = [
                    str(path / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--no-input",
                    "--disable-pip-version-check",
                    *self.pip_args,
                    "-r",
                    str(path / "requirements.txt"),
                ]
                out.write(f"$ {' '.join(pip)}\n".encode())
                out.flush()
                if subprocess.run(pip, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                    raise EnvBuildFailed(f"pip install failed:\n{tail(log, lines=8)}")
        (path / READY).write_text(json.dumps(key, indent=2) + "\n")

    # processes -----------------------------------------------------------------------

    def start(self, launch: Launch, env_dir: Path) -> RunProcess:
        """Start the run's command in `env_dir`, in its own process group led by the
        shim, with stdout and stderr appended to its log file. The job sees the
        agent's environment under its own variables (spec.env, MLSM_*), and only its
        GPUs (CUDA_VISIBLE_DEVICES)."""
        bin_dir = str(env_dir / "bin")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
        env.update(launch.env)
        env.update(CUDA_VISIBLE_DEVICES=",".join(map(str, launch.gpus)), VIRTUAL_ENV=str(env_dir))
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
        env.pop("PYTHONHOME", None)
        program = shutil.which(launch.argv[0], path=env["PATH"]) if launch.argv else None
        if program is None:
            raise StartFailed(
                f"command not found: '{launch.argv[0] if launch.argv else ''}' "
                f"(looked in the environment's bin and PATH)"
            )
        folder = launch.folder
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.status.unlink(missing_ok=True)
        group = limits.memory_cgroup(launch.run, launch.memory) if launch.memory else None
        enforced = limits.choose(
            launch.cpu, launch.memory, limits.allowed_cpus(), launch.busy_cpus, cgroup=group
        )
        options: list[str] = []
        if enforced.cpus:
            options += ["--cpus", ",".join(map(str, enforced.cpus))]
        if enforced.memory:
            options += ["--memory", str(enforced.memory)]
        if group is not None:
            options += ["--cgroup", str(group)]
        with folder.log.open("ab") as out:
            try:
                popen = subprocess.Popen(
                    [
                        sys.executable,
                        "-I",
                        SHIM,
                        str(folder.status),
                        *options,
                        "--",
                        program,
                        *launch.argv[1:],
                    ],
                    cwd=folder.path,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                limits.release(group)
                raise StartFailed(f"cannot start '{launch.argv[0]}': {exc.strerror}") from None
        return RunProcess(popen.pid, folder, process_start(popen.pid), popen, enforced, group)
