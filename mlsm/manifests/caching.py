"""Checked files kept between runs of `mlsmctl plan`.

What checking a file finds (its objects, facts and problems) is a function of its path,
its bytes and mlsm's own code alone. So `load_git_change` keeps the outcome of each
file a change leaves unchanged, by (path, blob id), and the next plan of the same
repository reads those back instead of checking the files again: a pull request's
second push checks only what it touches.

The cache is one file per repository under `$MLSM_CACHE_DIR` (default
`$XDG_CACHE_HOME/mlsm`, else `~/.cache/mlsm`; set it empty to turn caching off),
named by a fingerprint of mlsm's parsing and schema code, the limits and the kinds
kept, so that an upgrade or a change of either never reads an old outcome. It is
read with an unpickler that builds only mlsm's own manifest and schema classes;
anything unreadable, foreign or from another fingerprint counts as no cache. Writes
are atomic (a temporary file, then a rename) and best effort: a full or read-only
disk only means the next plan checks everything again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CheckedFiles", "cache_dir"]

CACHE_ENV = "MLSM_CACHE_DIR"
_ALLOWED_MODULES = ("mlsm.manifests.", "mlsm.schemas.")
_FINGERPRINT: str | None = None
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    ImportError,
    TypeError,
    ValueError,
    IndexError,
    KeyError,
)
"""What a truncated, corrupt or foreign pickle raises while it is read."""


def cache_dir() -> Path | None:
    """Where checked files are kept, or None when caching is off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured) if configured.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlsm"


def _fingerprint() -> str:
    """mlsm's version and the bytes of the code that decides a file's outcome."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        import pydantic

        from mlsm import __version__

        digest = hashlib.sha256(f"{__version__} {sys.version} {pydantic.VERSION}".encode())
        package = Path(__file__).resolve().parents[1]
        for folder in ("manifests", "schemas"):
            for source in sorted((package / folder).glob("*.py")):
                digest.update(source.name.encode() + b"\0" + source.read_bytes())
        _FINGERPRINT = digest.hexdigest()
    return _FINGERPRINT


class _OwnClasses(pickle.Unpickler):
    """Builds mlsm's manifest and schema classes and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if not module.startswith(_ALLOWED_MODULES):
            raise pickle.UnpicklingError(f"{module}.{name} is not mlsm's")
        return super().find_class(module, name)


class CheckedFiles:
    """The checked files of one repository, for one fingerprint."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint

    @classmethod
    def of(cls, repository: str, *settings: object) -> CheckedFiles | None:
        where = cache_dir()
        if where is None:
            return None
        fingerprint = _fingerprint()
        key = hashlib.sha256(
            "\0".join([fingerprint, os.path.realpath(repository), *map(repr, settings)]).encode()
        ).hexdigest()[:32]
        return cls(where / f"checked-{key}.pickle", fingerprint)

    def load(self) -> list[tuple[list[tuple[str, str]], bytes]]:
        """The shards kept: (the (path, blob id) of each file, their outcomes pickled),
        or none where the cache cannot be trusted."""
        try:
            stored = _OwnClasses(io.BytesIO(self.path.read_bytes())).load()
        except (OSError, *_UNREADABLE):
            return []
        if not isinstance(stored, dict) or stored.get("fingerprint") != self.fingerprint:
            return []
        shards = stored.get("shards")
        return shards if isinstance(shards, list) else []

    def read(self, data: bytes) -> list[Any] | None:
        """One shard's outcomes, or None where it cannot be trusted."""
        try:
            found = _OwnClasses(io.BytesIO(data)).load()
        except _UNREADABLE:
            return None
        return found if isinstance(found, list) else None

    def save(self, shards: list[tuple[list[tuple[str, str]], bytes]]) -> None:
        """Keep these shards (and only these): atomically, or not at all."""
        data = pickle.dumps(
            {"fingerprint": self.fingerprint, "shards": shards}, protocol=pickle.HIGHEST_PROTOCOL
        )
        temporary: str | None = None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=self.path.parent, prefix=".checked-", delete=False
            ) as file:
                temporary = file.name
                file.write(data)
            os.replace(temporary, self.path)
        except OSError:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
