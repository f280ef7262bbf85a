"""`make engine`: a real Docker Engine API on this machine for the docker runtime's
tests and for `make run`, served by Podman (no Docker daemon runs on these machines),
with the test images made offline.

    make engine            # prints the DOCKER_HOST to use; writes .mlsm/engine.env

1. Podman, runc, busybox-static and debootstrap from Debian's packages when missing
   (as root; without root it says the one command to run, and fails).
2. Podman with this repository's `tools/engine/containers.conf` (runc, no default
   ulimits: see ../shared/notes/machine-facts.md), set through CONTAINERS_CONF so
   that the machine's own configuration is left alone.
3. The API on `unix:///run/podman/podman.sock` (the rootful Podman socket that the
   agent looks for), started in the background unless something already answers
   there.
4. Two images, each built once per recipe (its tag is the hash of what made it):
   `localhost/mlsm-test/busybox` (a busybox root filesystem) and
   `localhost/mlsm-test/python` (Debian's Python from debootstrap, with the
   built-in trainer's packages copied from this project's .venv at the locked
   versions, and without mlsm: the agent brings its own, as it does for a lab's
   image).

The variables the tests read (DOCKER_HOST, MLSM_TEST_BUSYBOX_IMAGE,
MLSM_TEST_PYTHON_IMAGE, CONTAINERS_CONF) are written to `.mlsm/engine.env`. The
busybox image is also tagged `localhost/mlsm/busybox:latest`, which the example
container job names.

    python tools/engine.py --for-run   # `make run`: the engine and busybox only, and
                                       # a machine that cannot have them is no error
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "tools" / "engine" / "containers.conf"
ENV_FILE = ROOT / ".mlsm" / "engine.env"
SOCKET = Path("/run/podman/podman.sock")
PACKAGES = ["podman", "runc", "busybox-static", "debootstrap"]
BUSYBOX_TOOLS = ["sh", "echo", "cat", "sleep", "ls", "env", "true", "false", "yes", "head"]
BUSYBOX_TOOLS += ["tail", "seq", "dd", "tr", "wc", "kill", "ps", "id"]
TRAINER_PACKAGES = [
    "torch",
    "transformers",
    "safetensors",
    "pillow",
    "pydantic",
    "pyyaml",
    "yaml-rs",
]
PYTHON_SITE = "usr/local/lib/python3.11/dist-packages"
# Debian's packages in the Python image: python3-venv and git are what deploy/Dockerfile
# needs of a base (tests/integration/test_images.py builds mlsm's images on it).
PYTHON_DEBS = ["python3", "python3-venv", "git"]


def say(message: str) -> None:
    print(f"engine: {message}", flush=True)


class Unavailable(Exception):
    """This machine cannot have the engine now; the message says what to do."""


def fail(message: str) -> None:
    raise Unavailable(message)


def podman(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(CONF)}
    return subprocess.run(["podman", *args], env=env, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def install() -> None:
    missing = [p for p in ("podman", "runc", "busybox", "debootstrap") if not shutil.which(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        fail(f"{', '.join(missing)} missing and this is not root: run `sudo make engine`")
    say(f"installing {' '.join(PACKAGES)} (Debian packages)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return b" 200 " in sock.recv(256)
    except OSError:
        return False


def serve() -> None:
    if answers(SOCKET):
        return
    if os.geteuid() != 0:
        fail(f"nothing answers on {SOCKET} and this is not root: run `sudo make engine`")
    SOCKET.parent.mkdir(parents=True, exist_ok=True)
    SOCKET.unlink(missing_ok=True)
    log = SOCKET.parent / "mlsm-podman-service.log"
    with log.open("ab") as out:
        subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{SOCKET}"],
            env={**os.environ, "CONTAINERS_CONF": str(CONF)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 20
    while not answers(SOCKET):
        if time.monotonic() > deadline:
            fail(f"podman system service did not answer on {SOCKET} within 20 s (see {log})")
        time.sleep(0.1)
    say(f"started the Docker Engine API on {SOCKET} (Podman; log: {log})")


RECIPE = 1
"""Bump when a recipe below changes in a way its inputs do not show."""


def recipe(*parts: object) -> str:
    """An image's tag: the hash of what makes it."""
    digest = hashlib.sha256(str(RECIPE).encode())
    for part in parts:
        digest.update(repr(part).encode())
    return digest.hexdigest()[:12]


def exists(image: str) -> bool:
    return podman("image", "exists", image).returncode == 0


def import_rootfs(rootfs: Path, image: str) -> None:
    started = time.monotonic()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    done = podman("import", "-q", "-", image, stdin=tar.stdout)
    tar.wait()
    if done.returncode != 0 or tar.returncode != 0:
        fail(f"podman import {image} failed: {done.stderr.strip()}")
    say(f"built {image} in {time.monotonic() - started:.0f} s")


def busybox_image() -> str:
    image = f"localhost/mlsm-test/busybox:{recipe(BUSYBOX_TOOLS)}"
    if exists(image):
        return image
    with tempfile.TemporaryDirectory() as scratch:
        rootfs = Path(scratch)
        for folder in ("bin", "tmp", "etc"):
            (rootfs / folder).mkdir()
        (rootfs / "tmp").chmod(0o1777)
        shutil.copy2(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")
        for tool in BUSYBOX_TOOLS:
            (rootfs / "bin" / tool).symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        import_rootfs(rootfs, image)
    return image


def trainer_distributions() -> list[metadata.Distribution]:
    """The trainer's packages and everything they require, as installed in .venv."""
    return distributions(TRAINER_PACKAGES)


def distributions(packages: list[str]) -> list[metadata.Distribution]:
    """These requirements and everything they require, with the extras they name
    (psycopg[binary]), as installed here: the lock's versions."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted, seen, found = [Requirement(p) for p in packages], set(), {}
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        for extra in ["", *sorted(requirement.extras)]:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue  # an optional requirement that is not installed
            found[name] = dist
            for text in dist.requires or []:
                needed = Requirement(text)
                marker = needed.marker
                if marker.evaluate({"extra": extra}) if marker else not extra:
                    wanted.append(needed)
    return sorted(found.values(), key=lambda d: d.metadata["Name"].lower())


def wheelhouse(target: Path) -> None:
    """mlsm's own dependencies (no extras: no torch) and its build backend as wheels
    in TARGET, at the versions installed here (the lock's), for this machine's Python
    and platform (Debian bookworm's, as the test base's): what deploy/Dockerfile
    installs offline with PIP_OPTIONS="--no-index --find-links=/src/wheels"."""
    pins = [f"{d.metadata['Name']}=={d.version}" for d in distributions(["mlsm", "setuptools"])
            if d.metadata["Name"] != "mlsm"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", f"--dest={target}", *pins],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        fail(f"pip download of mlsm's wheels failed:\n{done.stderr[-3000:]}")
    say(f"{len(pins)} wheels for deploy/Dockerfile in {target}")


def mirror() -> str:
    for source in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        match = re.search(r"^URIs:\s*(\S+debian)\s*$", source.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def python_tag(dists: list[metadata.Distribution]) -> str:
    made_of = ["bookworm", "minbase", PYTHON_DEBS, PYTHON_SITE, TRAINER_PACKAGES, "bytecode"]
    made_of.append([(d.metadata["Name"], d.version) for d in dists])
    return f"localhost/mlsm-test/python:{recipe(made_of)}"


BUILDER_LOG = ROOT / ".mlsm" / "engine-python.log"
BUILDER_PID = ROOT / ".mlsm" / "engine-python.pid"


def python_image_in_background() -> str:
    """The Python image's tag; when it is not built yet, a build started in the
    background (about 100 s), so that `make test` lints and runs the first tests
    meanwhile. The one test that needs it waits for it (tests/engine.py)."""
    image = python_tag(trainer_distributions())
    if exists(image):
        return image
    if os.geteuid() != 0:
        fail(f"{image} is not built and building it needs root: run `sudo make engine`")
    if BUILDER_PID.is_file() and Path(f"/proc/{BUILDER_PID.read_text().strip()}").is_dir():
        say(f"{image} is being built (log: {BUILDER_LOG})")
        return image
    with BUILDER_LOG.open("wb") as log:
        builder = subprocess.Popen(
            [sys.executable, __file__, "--python-image"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    BUILDER_PID.write_text(str(builder.pid))
    say(f"building {image} in the background (log: {BUILDER_LOG})")
    return image


def python_image() -> str:
    dists = trainer_distributions()
    image = python_tag(dists)
    if exists(image):
        return image
    if os.geteuid() != 0:
        fail(f"{image} is not built and building it needs root: run `sudo make engine`")
    with tempfile.TemporaryDirectory(dir=ROOT / ".mlsm") as scratch:
        rootfs = Path(scratch) / "rootfs"
        started = time.monotonic()
        say(f"debootstrap: Debian bookworm with {', '.join(PYTHON_DEBS)} (about a minute)")
        done = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PYTHON_DEBS)}",
                "bookworm",
                str(rootfs),
                mirror(),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            fail(f"debootstrap failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        say(f"debootstrap took {time.monotonic() - started:.0f} s")
        site = rootfs / PYTHON_SITE
        for dist in dists:
            for file in dist.files or []:
                source = Path(str(dist.locate_file(file)))
                if ".." in file.parts or not source.is_file():
                    continue  # scripts outside site-packages
                # Bytecode too (same mtimes, so still valid): without it, each run
                # compiles torch and transformers again, some 12 s on these cores.
                target = site / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        shutil.rmtree(rootfs / "var" / "cache" / "apt", ignore_errors=True)
        import_rootfs(rootfs, image)
    return image


EXAMPLE_BUSYBOX = "localhost/mlsm/busybox:latest"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    without = "without them, say why and exit 0 (make run goes on without docker)"
    parser.add_argument(
        "--for-run", action="store_true", help=f"engine and busybox only; {without}"
    )
    parser.add_argument("--python-image", action="store_true", help="build the Python image now")
    parser.add_argument("--wheels", type=Path, metavar="DIR", help="mlsm's wheels into DIR")
    args = parser.parse_args()
    if args.wheels:
        try:
            wheelhouse(args.wheels)
        except Unavailable as exc:
            print(f"engine: error: {exc}", flush=True)
            sys.exit(1)
        return
    if args.python_image:
        try:
            python_image()
        except Unavailable as exc:
            print(f"engine: error: {exc}", flush=True)
            sys.exit(1)
        return
    try:
        install()
        serve()
        (ROOT / ".mlsm").mkdir(exist_ok=True)
        busybox = busybox_image()
        if podman("tag", busybox, EXAMPLE_BUSYBOX).returncode != 0:
            fail(f"podman tag {busybox} {EXAMPLE_BUSYBOX} failed")
        if args.for_run:
            say(f"DOCKER_HOST=unix://{SOCKET}; example image {EXAMPLE_BUSYBOX}")
            return
        python = python_image_in_background()
        images = {"MLSM_TEST_BUSYBOX_IMAGE": busybox, "MLSM_TEST_PYTHON_IMAGE": python}
    except Unavailable as exc:
        if args.for_run:
            say(f"no container engine here ({exc}); docker jobs will wait for a node with one")
            return
        print(f"engine: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    values = {"DOCKER_HOST": f"unix://{SOCKET}", "CONTAINERS_CONF": str(CONF), **images}
    ENV_FILE.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    say(f"DOCKER_HOST=unix://{SOCKET} ({ENV_FILE} has the test images)")


if __name__ == "__main__":
    main()
