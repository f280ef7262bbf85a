"""requirements.lock still satisfies pyproject.toml, and it is what got installed.

When one of these fails, pyproject.toml changed without `make lock`, or an install
took versions from somewhere other than the lock.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = ("dev", "training")


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def unmet(requirements: list[str], pins: dict[str, Version], extras: set[str]) -> list[str]:
    """The requirements (that apply here) the lock lacks or pins outside their range."""
    environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker and not any(requirement.marker.evaluate(e) for e in environments):
            continue
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: the lock has {version}")
    return problems


def test_the_lock_satisfies_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = list(project["project"]["dependencies"])
    for extra in EXTRAS:
        wanted += project["project"]["optional-dependencies"][extra]
    wanted += project["build-system"]["requires"]
    assert unmet(wanted, locked(), set()) == [], "run `make lock`"


def test_every_locked_package_has_what_it_requires_in_the_lock() -> None:
    pins = locked()
    problems = []
    for name in pins:
        distribution = importlib.metadata.distribution(name)
        problems += [f"{name}: {p}" for p in unmet(distribution.requires or [], pins, extras=set())]
    assert problems == [], "run `make lock`"


def test_what_is_installed_is_what_is_locked() -> None:
    installed = {
        name: Version(importlib.metadata.version(name)) for name in locked()
    }  # (a missing package raises PackageNotFoundError: the install skipped the lock)
    different = {
        name: f"installed {installed[name]}, locked {version}"
        for name, version in locked().items()
        if installed[name].public != version.public
    }
    assert different == {}, "install with `make install` (pip install -r requirements.lock)"


def test_unmet_sees_a_missing_and_an_out_of_range_package() -> None:
    pins = {"pydantic": Version("1.10.0")}
    assert unmet(["pydantic>=2,<3", "pyyaml>=6"], pins, set()) == [
        "pydantic<3,>=2: the lock has 1.10.0",
        "pyyaml>=6: not in the lock",
    ]
    assert unmet(['foo; extra == "gpu"', 'bar; python_version < "3"'], pins, set()) == []
    assert unmet(['foo; extra == "gpu"'], pins, {"gpu"}) == ['foo; extra == "gpu": not in the lock']
