"""Dataset inventory: what this node really holds of each Dataset the catalog places
here. A scan counts files and bytes, lists the classes of an ImageFolder (the folders
under train/), and computes a checksum of the whole tree: sha256 over the sorted
(relative path, file sha256) pairs. File digests are cached by (path, size, mtime), and
the cache is kept in the agent's state dir, so rescanning an unchanged tree reads only
directory entries.

Symbolic links are not followed: a dataset must lie under the storage root.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DatasetScanner", "ScanResult", "resolve_under"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ScanResult:
    path: str
    files: int
    bytes: int
    checksum: str
    classes: tuple[str, ...] | None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"path": self.path, "files": self.files, "bytes": self.bytes,
                                "checksum": self.checksum}  # fmt: skip
        if self.classes is not None:
            body["classes"] = list(self.classes)
        return body


def resolve_under(root: Path, relative: str) -> Path | None:
    """`root/relative`, or None when it would leave the root (`..`, an absolute path, a
    symbolic link pointing out)."""
    if not relative or relative.startswith(("/", "~")) or "\\" in relative:
        return None
    base = root.resolve()
    target = (base / relative).resolve()
    return target if target == base or target.is_relative_to(base) else None


class DatasetScanner:
    def __init__(self, root: Path, cache_file: Path | None = None) -> None:
        self.root = root
        self.cache_file = cache_file
        self._cache: dict[str, tuple[int, int, str]] = {}
        self._dirty = False
        self.hashed_bytes = 0
        """Bytes read to hash files since start (a cache hit reads none)."""
        if cache_file is not None and cache_file.is_file():
            try:
                raw = json.loads(cache_file.read_text())
                self._cache = {k: (int(v[0]), int(v[1]), str(v[2])) for k, v in raw.items()}
            except (ValueError, TypeError, IndexError, AttributeError):
                self._cache = {}  # a damaged cache costs one rescan, nothing else

    def scan(self, relative: str, format: str) -> ScanResult | None:
        """The dataset at `relative` under the root, or None when it is not there."""
        base = resolve_under(self.root, relative)
        if base is None or not base.is_dir():
            return None
        pairs: list[tuple[str, str]] = []
        total = 0
        for directory, subdirs, names in os.walk(base, followlinks=False):
            subdirs.sort()
            for name in names:
                path = os.path.join(directory, name)
                try:
                    stat = os.lstat(path)
                except OSError:
                    continue
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                total += stat.st_size
                pairs.append((os.path.relpath(path, base), self._digest(path, stat)))
        pairs.sort()
        tree = hashlib.sha256()
        for name, digest in pairs:
            tree.update(f"{name}\0{digest}\n".encode("utf-8", "surrogateescape"))
        classes = None
        if format == "imagefolder" and (base / "train").is_dir():
            classes = tuple(sorted(p.name for p in (base / "train").iterdir() if p.is_dir()))
        return ScanResult(relative, len(pairs), total, f"sha256:{tree.hexdigest()}", classes)

    def _digest(self, path: str, stat: os.stat_result) -> str:
        known = self._cache.get(path)
        if known is not None and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
            return known[2]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        self.hashed_bytes += stat.st_size
        self._cache[path] = (stat.st_size, stat.st_mtime_ns, digest.hexdigest())
        self._dirty = True
        return digest.hexdigest()

    def save(self) -> None:
        """Write the digest cache (atomically) when it changed."""
        if self.cache_file is None or not self._dirty:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache_file.with_suffix(".tmp")
        partial.write_text(json.dumps({k: list(v) for k, v in self._cache.items()}))
        partial.replace(self.cache_file)
        self._dirty = False
