"""The real Docker Engine API the docker runtime's tests use: the one `make engine`
starts (Podman's, see tools/engine.py) with the images it builds, named in
`.mlsm/engine.env` or in the environment. Without it the tests fail, saying what to
run; they never skip."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Engine", "NoEngine"]

ENV_FILE = Path(__file__).resolve().parents[1] / ".mlsm" / "engine.env"
KEYS = ("DOCKER_HOST", "MLSM_TEST_BUSYBOX_IMAGE", "MLSM_TEST_PYTHON_IMAGE")


class NoEngine(Exception):
    pass


@dataclass(frozen=True)
class Engine:
    host: str
    busybox: str
    python: str

    @classmethod
    def find(cls) -> Engine:
        values = {k: os.environ[k] for k in KEYS if os.environ.get(k)}
        if len(values) < len(KEYS) and ENV_FILE.is_file():
            for line in ENV_FILE.read_text().splitlines():
                key, _, value = line.partition("=")
                values.setdefault(key, value)
        if any(k not in values for k in KEYS):
            raise NoEngine("no container engine for the docker runtime's tests: run "
                           "`make engine` (as root, or `sudo make engine`)")  # fmt: skip
        import docker

        try:
            docker.DockerClient(base_url=values["DOCKER_HOST"], version="auto").ping()
        except Exception as exc:
            raise NoEngine(f"the engine at {values['DOCKER_HOST']} does not answer ({exc}): "
                           "run `make engine` to start it") from None  # fmt: skip
        return cls(values["DOCKER_HOST"], values["MLSM_TEST_BUSYBOX_IMAGE"],
                   values["MLSM_TEST_PYTHON_IMAGE"])  # fmt: skip

    def python_ready(self, timeout: float = 900) -> str:
        """The Python image, once `make engine`'s background build of it is done."""
        import docker.errors

        root = ENV_FILE.parent
        pid_file, log = root / "engine-python.pid", root / "engine-python.log"
        deadline = time.monotonic() + timeout
        while pid_file.is_file() and _alive(pid_file) and time.monotonic() < deadline:
            time.sleep(1)
        try:
            self.client().images.get(self.python)
        except docker.errors.ImageNotFound:
            said = log.read_text(errors="replace")[-2000:] if log.is_file() else "(no log)"
            raise NoEngine(f"{self.python} was not built; {log}:\n{said}") from None
        return self.python

    def client(self):  # type: ignore[no-untyped-def]
        import docker

        return docker.DockerClient(base_url=self.host, version="auto", timeout=30)


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    try:  # a zombie (its parent, make, has not reaped it) is done
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
