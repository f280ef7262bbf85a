"""Refresh `requirements.lock`: every package `make test`, `make run` and CI install,
at one exact version, resolved from `pyproject.toml` by pip itself.

    make lock                 # (runs: python3 tools/lock_dependencies.py)

pip resolves `.[dev,training]` plus the build backend (setuptools) as a fresh
install would (`pip install --dry-run --ignore-installed --report`), with this
machine's pip configuration, so torch resolves to the CPU build that lies on disk
here rather than a multi-GB CUDA download. Nothing is installed. The lock is then
installed as it is (`pip install -r requirements.lock`, then mlsm itself with
`--no-deps`), so a new release of anything changes nothing until this runs again.

A local version label (`2.13.0+cpu`) is written without its label (`2.13.0`): the
public release is what is locked, and the build variant is whichever the machine's
package sources hold (pip prefers the labelled local build where both exist).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
EXTRAS = "dev,training"
BUILD = ["setuptools>=68"]  # pyproject.toml's [build-system] requires


def resolve() -> dict[str, str]:
    """name -> version of everything a fresh install of mlsm[EXTRAS] would take."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run",
             "--ignore-installed", "--disable-pip-version-check", "--report", str(report),
             f"{ROOT}[{EXTRAS}]", *BUILD],
            check=True,
        )  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    pins: dict[str, str] = {}
    for item in installs:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name.lower() == "mlsm":
            continue
        pins[name.lower().replace("_", "-")] = version.split("+", 1)[0]
    return dict(sorted(pins.items()))


def main() -> None:
    pins = resolve()
    python = ".".join(platform.python_version_tuple()[:2])
    lines = [
        "# Exact versions that make test, make run and CI install (pip install -r).",
        f"# Resolved from pyproject.toml [{EXTRAS}] + setuptools by tools/lock_dependencies.py",
        f"# for Python {python} on {platform.system()} {platform.machine()}.",
        "# Refresh on purpose with: make lock",
        *(f"{name}=={version}" for name, version in pins.items()),
    ]
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"{LOCK.name}: {len(pins)} packages")


if __name__ == "__main__":
    main()
