"""The docker runtime: a job runs in a container, through the node's Docker Engine API
(Docker's, or Podman's `podman system service`), with the `docker` SDK.

- The engine: DOCKER_HOST (or the agent's `docker_host`), else the first of the usual
  sockets that exists (Docker's, rootful Podman's, this user's Podman). The agent
  offers the runtime only while the engine answers (`problem`).
- The image: the local one when the engine has it (`images.get`: a pull of a local
  image still asks the registry), else pulled, within `pull_timeout`; an image that
  cannot be had fails the run with reason ImagePullFailed and the engine's message.
- The container: named `mlsm-<run id>`, so the engine itself refuses a second
  container for one run (a start that finds the name taken adopts that container);
  labelled `mlsm.run`, `mlsm.job`, `mlsm.node`, by which a restarted agent finds
  containers whose record it lost. The run folder, the output folder, the dataset
  (read-only) and a model folder (read-only) are bind mounts, each checked to lie
  under the storage root, after symbolic links, before anything is created. GPUs are
  a DeviceRequest for the assigned ids; resources.cpu and resources.memory are
  nano_cpus and mem_limit (with no swap beyond it). An init process (the engine's)
  is PID 1, so SIGTERM reaches a job that sets no handler.
- The output: the job's stdout and stderr are appended to the run folder's log by a
  `/bin/sh` wrapper in the container, the same file the venv runtime writes, so it
  is shipped the same way, and nothing depends on the engine's own log (which a
  restarted agent would have to re-read and skip). The image must have /bin/sh.
- The end: a thread per run waits on the engine and reads the exit code then; 137
  under a memory limit that the agent did not cause is OOMKilled when the engine or
  the kernel's log says so. The container is removed once its output is shipped.
- The built-in trainer: the agent's own `mlsm` package, copied once per version under
  `<storage root>/envs/`, mounted read-only at /opt/mlsm/lib and put on PYTHONPATH;
  the image brings Python and the trainer's packages (docs/agent.md, "The image
  contract").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.models.images import Image
from docker.types import DeviceRequest
from docker.types import Mount as DockerMount
from docker.utils import parse_repository_tag

import mlsm
from mlsm.agent.launching import RUN_DIR, run_dir
from mlsm.agent.limits import size
from mlsm.agent.reconciling import Outcome
from mlsm.agent.records import RunFolder, RunRecord
from mlsm.agent.runtimes import (
    ImagePullFailed,
    Launch,
    Mount,
    StartFailed,
    signal_outcome,
    tail,
)
from mlsm.backoff import Backoff

__all__ = ["DockerRun", "DockerRuntime", "engine_url"]

CODE_DIR = "/opt/mlsm/lib"
LOOK_SECONDS = 10.0
"""How often a running container is looked at without news from the engine."""
WRAPPER = 'exec "$@" >>"$0" 2>&1'
"""Run as `/bin/sh -c WRAPPER LOG COMMAND...`: the job's output into the run's log."""

ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def engine_url(configured: str | None = None) -> str:
    """The engine's API: `configured`, DOCKER_HOST, else the first usual socket there."""
    if configured:
        return configured
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    for socket in (
        "/var/run/docker.sock",
        "/run/podman/podman.sock",
        f"{runtime_dir}/podman/podman.sock",
    ):
        if os.path.exists(socket):
            return f"unix://{socket}"
    return "unix:///var/run/docker.sock"


def _said(exc: BaseException) -> str:
    """The engine's own words for an error, on one line."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        text = str(exc.explanation)
    else:
        text = str(exc) or exc.__class__.__name__
    return " ".join(text.split())[:500]


def _under(root: Path, path: Path) -> bool:
    base, real = root.resolve(), path.resolve()
    return real == base or real.is_relative_to(base)


@dataclass(frozen=True, slots=True)
class Prepared:
    image: Image
    mounts: tuple[Mount, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


class DockerRuntime:
    name = "docker"

    def __init__(
        self,
        storage_root: Path,
        node: str,
        *,
        host: str | None = None,
        pull_timeout: float = 600.0,
    ) -> None:
        self.root = storage_root
        self.node = node
        self.url = engine_url(host)
        self.pull_timeout = pull_timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        self._runs: dict[str, DockerRun] = {}
        """Container name -> its run, for the events watcher to wake."""
        self._watcher: threading.Thread | None = None
        self._code: Path | None = None
        """This agent's mlsm package, copied under the storage root (once a process)."""

    # the engine ----------------------------------------------------------------------

    def client(self) -> docker.DockerClient:
        """A client of the engine (raises when it does not answer)."""
        with self._lock:
            if self._client is None:
                self._client = docker.DockerClient(base_url=self.url, version="auto", timeout=30)
            return self._client

    def watch(self, run: DockerRun) -> None:
        """Wake `run` when its container dies. One stream of the engine's `die`
        events serves all runs: the engine's wait endpoint would do it per container,
        but Podman serves a pending wait by polling, at a whole core's cost."""
        with self._lock:
            self._runs[run.name] = run
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._events, name="engine events", daemon=True
                )
                self._watcher.start()

    def forget(self, run: DockerRun) -> None:
        with self._lock:
            self._runs.pop(run.name, None)

    def _events(self) -> None:
        backoff = Backoff(0.5, 10.0)
        # "die" is Docker's name, "died" Podman's (which ignores "die").
        filters = {"event": ["die", "died"], "label": [f"mlsm.node={self.node}"]}
        while True:
            try:
                client = docker.DockerClient(base_url=self.url, version="auto", timeout=3600)
                stream = client.events(decode=True, filters=filters)
                self._wake_all()  # (re)connected: whatever died meanwhile is looked at
                backoff.reset()
                for event in stream:
                    name = str((event.get("Actor") or {}).get("Attributes", {}).get("name", ""))
                    with self._lock:
                        run = self._runs.get(name)
                    if run is not None:
                        run.wake()
            except ENGINE_ERRORS:
                pass
            time.sleep(backoff.next())

    def _wake_all(self) -> None:
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.wake()

    def problem(self) -> str | None:
        try:
            self.client().ping()
        except ENGINE_ERRORS as exc:
            with self._lock:
                self._client = None
            return (
                f"no container engine answers at {self.url} ({_said(exc)}): start Docker, "
                "or Podman's API (podman system service), or set DOCKER_HOST"
            )
        return None

    def sees(self, mount: Mount) -> str:
        return mount.target

    # starting ------------------------------------------------------------------------

    def prepare(self, launch: Launch) -> Prepared:
        assert launch.image is not None, "a docker run names its image"
        try:
            client = self.client()
        except ENGINE_ERRORS as exc:
            raise StartFailed(
                f"the container engine at {self.url} does not answer: {_said(exc)}"
            ) from None
        image = self._image(client, launch.image)
        if not launch.trainer:
            return Prepared(image)
        if self._code is None:
            self._code = self._mlsm_code()
        code = self._code
        path = os.pathsep.join(
            [
                CODE_DIR,
                *[v.split("=", 1)[1] for v in _image_env(image) if v.startswith("PYTHONPATH=")],
            ]
        )
        return Prepared(image, (Mount(code, CODE_DIR),), {"PYTHONPATH": path})

    def _image(self, client: docker.DockerClient, reference: str) -> Image:
        try:
            return client.images.get(reference)
        except docker.errors.ImageNotFound:
            pass
        except ENGINE_ERRORS as exc:
            raise ImagePullFailed(f"cannot look up image {reference}: {_said(exc)}") from None
        repository, tag = parse_repository_tag(reference)
        result: list[Image | BaseException] = []

        def pull() -> None:
            try:
                result.append(client.images.pull(repository, tag=tag or "latest"))
            except BaseException as exc:  # handed to the caller
                result.append(exc)

        worker = threading.Thread(target=pull, name=f"pull {reference}", daemon=True)
        worker.start()
        worker.join(self.pull_timeout)
        if not result:
            raise ImagePullFailed(
                f"image {reference} is not on this node, and pulling it took "
                f"over {self.pull_timeout:.0f} s: gave up"
            )
        if isinstance(result[0], BaseException):
            said = _said(result[0])
            raise ImagePullFailed(
                f"image {reference} is not on this node and cannot be pulled: {said}"
            )
        return result[0]

    def _mlsm_code(self) -> Path:
        """This agent's mlsm package, copied under the storage root once per version
        (a mount must lie under it, and a run must not see an upgrade mid-way)."""
        package = Path(mlsm.__file__).parent
        digest = hashlib.sha256()
        files = sorted(
            p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
        for path in files:
            digest.update(f"{path.relative_to(package)}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
        target = self.root / "envs" / f"mlsm-{mlsm.__version__}-{digest.hexdigest()[:12]}"
        if not (target / "mlsm").is_dir():
            partial = target.with_name(target.name + f".{os.getpid()}.tmp")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(package, partial / "mlsm", ignore=shutil.ignore_patterns("__pycache__"))
            try:
                partial.rename(target)
            except OSError as exc:  # another start copied it first
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                shutil.rmtree(partial, ignore_errors=True)
        return target

    def environment(self, launch: Launch, prepared: Prepared) -> dict[str, Any]:
        """The image as the job named it, its id, and its registry digest (a local
        build has none: its id is what pins it)."""
        digests = prepared.image.attrs.get("RepoDigests") or []
        return {
            "runtime": "docker",
            "image": launch.image,
            "imageId": prepared.image.id,
            "digest": digests[0] if digests else None,
        }

    def start(self, launch: Launch, prepared: Prepared) -> DockerRun:
        mounts = [*launch.mounts, *prepared.mounts]
        for mount in mounts:  # before anything is created
            if not _under(self.root, mount.source):
                raise StartFailed(
                    f"refused to mount {mount.source} at {mount.target}: it "
                    f"resolves to {mount.source.resolve()}, outside the storage "
                    f"root {self.root}; no container was created"
                )
        config = prepared.image.attrs.get("Config") or {}
        argv = list(launch.argv) or [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        if not argv:
            raise StartFailed(
                f"the job has no command, and image {launch.image} has none either "
                "(set spec.command)"
            )
        name = f"mlsm-{launch.run}"
        log = f"{RUN_DIR}/{launch.folder.log.name}"
        requests_ = []
        if launch.gpus:
            ids = [str(g) for g in launch.gpus]
            requests_.append(DeviceRequest(device_ids=ids, capabilities=[["gpu"]]))
        memory = launch.memory
        options: dict[str, Any] = dict(  # noqa: C408 (the SDK's keyword arguments)
            image=prepared.image.id,
            entrypoint=["/bin/sh", "-c", WRAPPER, log],
            command=argv,
            name=name,
            labels=dict(launch.labels),
            environment={**launch.env, **prepared.env},
            working_dir=RUN_DIR,  # as for venv jobs (an image's WORKDIR is not kept)
            init=True,
            mounts=[
                DockerMount(m.target, str(m.source.resolve()), type="bind", read_only=m.read_only)
                for m in mounts
            ],
            nano_cpus=int(launch.cpu * 1e9),
            device_requests=requests_,
        )
        if memory:
            options.update(mem_limit=memory, memswap_limit=memory)
        if launch.host_network:  # its ranks meet other nodes' at the advertise address
            options.update(network_mode="host")
        parts = [f"cpu {launch.cpu:g} as the container's nano_cpus"]
        parts.append(
            f"memory {size(memory)} as its mem_limit (no swap)"
            if memory
            else "memory: not limited (no resources.memory)"
        )
        if launch.gpus:
            parts.append(f"GPUs {','.join(map(str, launch.gpus))} as a DeviceRequest")
        enforced = "enforced by the container engine: " + "; ".join(parts)
        launch.folder.status.unlink(missing_ok=True)
        try:
            client = self.client()
            try:
                container = client.containers.create(**options)
            except docker.errors.APIError as exc:
                if exc.status_code != 409 and "already in use" not in _said(exc):
                    raise
                container = client.containers.get(name)  # never two: this run's own
            if container.status == "created":
                container.start()
        except docker.errors.APIError as exc:
            with contextlib.suppress(*ENGINE_ERRORS):
                client.containers.get(name).remove(force=True)
            hint = ""
            if "/bin/sh" in _said(exc) or "executable file not found" in _said(exc):
                hint = " (mlsm runs the job through the image's /bin/sh, to keep its output)"
            said = f"the engine could not start the container: {_said(exc)}{hint}"
            raise StartFailed(said) from None
        except ENGINE_ERRORS as exc:
            raise StartFailed(f"the container engine at {self.url} failed: {_said(exc)}") from None
        return DockerRun(self, name, launch.folder, memory=memory, said=enforced)

    # after a restart -----------------------------------------------------------------

    def adopt(self, record: RunRecord) -> DockerRun:
        return DockerRun(
            self, record.container or f"mlsm-{record.run}", record.folder, said=record.enforced
        )

    def strays(self, known: Collection[str]) -> list[RunRecord]:
        """Records for this node's containers that no record names (the agent lost
        them, or stopped between creating a container and recording it): those
        labelled with this node whose run folder lies under this storage root."""
        try:
            found = self.client().containers.list(
                all=True, filters={"label": f"mlsm.node={self.node}"}
            )
        except ENGINE_ERRORS:
            return []
        records = []
        for container in found:
            labels = container.labels
            run = labels.get("mlsm.run", "")
            folder = run_dir(self.root, run)
            if run in known or container.name != f"mlsm-{run}" or not folder.is_dir():
                continue
            records.append(
                RunRecord(
                    run=run,
                    job=labels.get("mlsm.job", "?"),
                    pid=0,
                    pid_start=None,
                    directory=str(folder),
                    assignment={"job": labels.get("mlsm.job", "?")},
                    runtime="docker",
                    container=container.name,
                )
            )
        return records

    def release(self, record: RunRecord) -> None:
        with contextlib.suppress(*ENGINE_ERRORS):
            self.client().containers.get(record.container or f"mlsm-{record.run}").remove(
                force=True
            )


def _image_env(image: Image) -> list[str]:
    return list((image.attrs.get("Config") or {}).get("Env") or [])


class DockerRun:
    """A run's container. A thread waits on the engine for its end (reconnecting with
    backoff while the engine is away) and then reads how it ended."""

    def __init__(
        self,
        runtime: DockerRuntime,
        name: str,
        folder: RunFolder,
        *,
        memory: int | None = None,
        said: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.name = name
        self.folder = folder
        self.memory = memory
        self._said = said
        self.killed = False
        self._outcome: Outcome | None = None
        self._woken = threading.Event()
        runtime.watch(self)
        self._thread = threading.Thread(target=self._wait, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Its container may have ended: look now."""
        self._woken.set()

    @property
    def enforced(self) -> str | None:
        return self._said

    @property
    def cpus(self) -> tuple[int, ...]:
        return ()

    def poll(self) -> Outcome | None:
        return self._outcome

    def facts(self) -> dict[str, Any]:
        return {
            "runtime": "docker",
            "pid": 0,
            "pid_start": None,
            "container": self.name,
            "enforced": self._said,
        }

    def signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL:
            self.killed = True
        with contextlib.suppress(*ENGINE_ERRORS):  # gone, not running, the engine away
            self.runtime.client().containers.get(self.name).kill(signal=sig.name)

    def _wait(self) -> None:
        """Look at the container when the engine says it died, and every
        LOOK_SECONDS anyway (an event lost while the engine was away)."""
        backoff = Backoff(0.5, 10.0)
        while self._outcome is None:
            try:
                container = self.runtime.client().containers.get(self.name)
                if container.status == "created":  # the agent died before it started it
                    container.start()
                    continue
                if container.status in ("exited", "dead", "stopped"):
                    self._outcome = self._ended(container)
                    break
                backoff.reset()
                self._woken.wait(LOOK_SECONDS)
                self._woken.clear()
            except docker.errors.NotFound:
                self._outcome = Outcome(
                    "Failed",
                    "Unknown",
                    f"its container {self.name} is gone "
                    "(removed while the agent was not watching?)",
                )
            except ENGINE_ERRORS:
                time.sleep(backoff.next())
        self.runtime.forget(self)

    def _ended(self, container: Container) -> Outcome:
        state = container.attrs.get("State") or {}
        code = int(state.get("ExitCode", -1))
        limit = self.memory or int((container.attrs.get("HostConfig") or {}).get("Memory") or 0)
        last = tail(self.folder.log, lines=3, limit=1024)
        oom = bool(state.get("OOMKilled")) or (
            code == 137 and limit > 0 and not self.killed and _kernel_oom(container.id or "")
        )
        if oom:
            message = f"killed for memory: over the {size(limit)} it is allowed "
            message += f"(resources.memory, the container's memory limit); last output:\n{last}"
            return Outcome("Failed", "OOMKilled", message.rstrip(), code)
        if code > 128 and code - 128 in signal.valid_signals():
            hint = ""
            if code == 137 and limit and not self.killed:
                hint = f" (under a memory limit of {size(limit)}: out of memory?)"
            return replace(signal_outcome(128 - code, last, memory_hint=hint), exit_code=code)
        return signal_outcome(code, last)


def _kernel_oom(container_id: str) -> bool:
    """Whether the kernel's log says it killed a process of this container for memory
    (Podman does not always say so itself). False where the log cannot be read."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # a record overwritten while read: go on
                    continue
                return False
            if not record:
                return False
            if container_id.encode() in record and b"oom" in record.lower():
                return True
    finally:
        os.close(fd)
