"""Loading manifests from files, directory trees, bytes, or a git tree at a commit.

Reading and YAML parsing of many files is spread over worker processes (forked, so
they share the parent's imports); validation, which yields the model objects, stays
in the parent so that nothing but plain data crosses a process boundary.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple

from mlsm import schemas
from mlsm.errors import UserError
from mlsm.manifests.caching import CheckedFiles
from mlsm.manifests.crosschecking import Facts, cross_check, facts_of
from mlsm.manifests.parsing import (
    DEFAULT_LIMITS,
    Limits,
    parse_bytes,
    paused_gc,
    too_large,
)
from mlsm.manifests.problems import ManifestError, Problem
from mlsm.manifests.validating import Budget, Located, Locator, expand_sweep, validate_document

__all__ = [
    "MANIFEST_SUFFIXES",
    "LoadResult",
    "SourceError",
    "SweepSummary",
    "check_paths",
    "discover",
    "load_bytes",
    "load_git_tree",
    "load_paths",
]

MANIFEST_SUFFIXES = (".yaml", ".yml")
PARALLEL_MIN_FILES = 256
"""Below this many files, starting worker processes costs more than it saves."""


class SourceError(UserError):
    """A path, repository or commit that cannot be read at all."""


class SweepSummary(NamedTuple):
    """A job with a sweep, where it is written, and its children's names and values."""

    path: str
    line: int
    column: int
    name: str
    parallelism: int | None
    children: list[tuple[str, str]]
    """(name, 'field=value ...') of each child."""

    @classmethod
    def of(cls, job: Located, children: list[Located]) -> SweepSummary:
        manifest = job.manifest
        assert isinstance(manifest, schemas.TrainingJob)
        assert manifest.spec.sweep is not None
        swept = list(manifest.spec.sweep.parameters)
        said = [
            (c.name, " ".join(f"{f}={c.manifest.metadata.labels.get(f, '')}" for f in swept))
            for c in children
        ]
        at, sweep = job.position, manifest.spec.sweep
        return cls(job.path, at.line, at.column, manifest.metadata.name, sweep.parallelism, said)


@dataclass
class LoadResult:
    """Every valid object, and every problem, of one load."""

    objects: list[Located] = field(default_factory=list)
    """The valid objects (empty from `check_paths`, which only counts them)."""
    problems: list[Problem] = field(default_factory=list)
    files: int = 0
    checked: int = 0
    """How many valid objects were found."""
    sweeps: list[SweepSummary] = field(default_factory=list)
    """Each job with a sweep, and its children (which `objects` and `checked` hold)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise `ManifestError` with every problem, if there are any."""
        if self.problems:
            raise ManifestError(self.problems)


def discover(
    paths: Iterable[str | os.PathLike[str]], *, links: list[str] | None = None
) -> list[str]:
    """The manifest files under `paths`: files as given, directories walked in order.

    Hidden files and folders (.git, .github) are skipped inside directories. With a
    `links` list, symbolic links inside directories (to files or folders) are not
    followed but put in it: a source must never read outside itself.
    """
    found: dict[str, None] = {}
    for given in paths:
        path = os.fspath(given)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                if links is not None:
                    linked = [d for d in dirs if os.path.islink(os.path.join(root, d))]
                    links.extend(os.path.join(root, d) for d in linked)
                    dirs[:] = [d for d in dirs if d not in linked]
                for name in sorted(files):
                    if name.endswith(MANIFEST_SUFFIXES) and not name.startswith("."):
                        if links is not None and os.path.islink(os.path.join(root, name)):
                            links.append(os.path.join(root, name))
                            continue
                        found[os.path.join(root, name)] = None
        elif os.path.exists(path):
            found[path] = None
        else:
            raise SourceError(f"{path}: no such file or directory")
    return list(found)


def _read_file(path: str, limits: Limits) -> bytes | Problem:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limits.max_bytes:
                return too_large(path, size, limits)
            return handle.read()
    except OSError as exc:
        return Problem(path=path, line=1, column=1, message=f"cannot read: {exc.strerror or exc}")


class _FileOutcome(NamedTuple):
    """One file, read, parsed and validated (plain tuples: cheap between processes)."""

    path: str
    objects: list[Located]
    facts: list[Facts]
    problems: list[Problem]
    broken: list[tuple[str, str]]
    sweeps: list[SweepSummary]


Keep = bool | frozenset[str]
"""Which objects a check returns: all, none (facts and problems only: cheap between
processes), or those of these kinds."""


def _check_bytes(data: bytes, path: str, limits: Limits, *, keep: Keep) -> _FileOutcome:
    parsed = parse_bytes(data, path, limits)
    outcome = _FileOutcome(path, [], [], parsed.problems, [], [])
    locator = Locator(lambda _: data)
    budget = Budget(max(limits.max_problems - len(parsed.problems), 0))
    for document in parsed.documents:
        result = validate_document(document, path=path, locator=locator, budget=budget)
        expanded = expand_sweep(result, locator=locator) if isinstance(result, Located) else []
        objects = [x for x in expanded if isinstance(x, Located)]
        if objects and isinstance(result, Located) and objects[0] is not result:
            outcome.sweeps.append(SweepSummary.of(result, objects))
        if objects:
            for located in objects:
                outcome.facts.append(facts_of(located))
                if keep is True or (keep and located.kind in keep):
                    outcome.objects.append(located)
        else:
            problems = [x for x in expanded if isinstance(x, Problem)]
            outcome.problems.extend(problems if isinstance(result, Located) else result)
            outcome.broken.append(_identity(document.data))
    summary = budget.summary(path, limits.max_problems)
    if summary is not None:
        outcome.problems.append(summary)
    return outcome


def _check_files(paths: Sequence[str], limits: Limits, keep: bool) -> list[_FileOutcome]:
    out = []
    with paused_gc():
        for path in paths:
            data = _read_file(path, limits)
            if isinstance(data, Problem):
                out.append(_FileOutcome(path, [], [], [data], [], []))
            else:
                out.append(_check_bytes(data, path, limits, keep=keep))
    return out


def _check_texts(
    items: Sequence[tuple[str, bytes]], limits: Limits, keep: Keep
) -> list[_FileOutcome]:
    with paused_gc():
        return [_check_bytes(data, path, limits, keep=keep) for path, data in items]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _check_in_workers(
    paths: Sequence[str], limits: Limits, workers: int | None
) -> Iterator[_FileOutcome]:
    """Outcomes of every file, from forked workers when there are enough files."""
    workers = _cpu_count() if workers is None else workers
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    if workers <= 1 or len(paths) < PARALLEL_MIN_FILES or not can_fork:
        yield from _check_files(paths, limits, False)
        return
    size = max(64, len(paths) // (workers * 4))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    done = 0
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for outcomes in pool.map(_check_files, chunks, repeat(limits), repeat(False)):
                yield from outcomes
                done += 1
    except (BrokenProcessPool, OSError):  # a worker died (memory?): finish here
        for chunk in chunks[done:]:
            yield from _check_files(chunk, limits, False)


def _check_texts_pickled(items: Sequence[tuple[str, bytes]], limits: Limits, keep: Keep) -> bytes:
    """`_check_texts`, its outcomes pickled: what a worker sends back, and what the
    checked-files cache keeps as it is (one pickling, not two)."""
    return pickle.dumps(_check_texts(items, limits, keep), protocol=pickle.HIGHEST_PROTOCOL)


def _check_texts_in_workers(
    items: Sequence[tuple[str, bytes]], limits: Limits, keep: Keep, workers: int | None
) -> list[tuple[list[str], bytes]]:
    """Outcomes of files already read, as shards: (the paths, their outcomes pickled
    by `_check_texts_pickled`), from forked workers when there are enough."""
    workers = _cpu_count() if workers is None else workers
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    if not items:
        return []
    if workers <= 1 or len(items) < PARALLEL_MIN_FILES or not can_fork:
        return [([p for p, _ in items], _check_texts_pickled(items, limits, keep))]
    size = max(64, len(items) // (workers * 4))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    paths = [[p for p, _ in chunk] for chunk in chunks]
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            found = pool.map(_check_texts_pickled, chunks, repeat(limits), repeat(keep))
            return list(zip(paths, found, strict=True))
    except (BrokenProcessPool, OSError):  # a worker died (memory?): finish here
        return [([p for p, _ in items], _check_texts_pickled(items, limits, keep))]


def _finish(
    outcomes: Iterable[_FileOutcome], locator: Locator, *, cross_checks: bool
) -> LoadResult:
    result = LoadResult()
    facts: list[Facts] = []
    broken: set[tuple[str, str]] = set()
    with paused_gc():
        for outcome in outcomes:
            result.files += 1
            result.checked += len(outcome.facts)
            result.objects.extend(outcome.objects)
            result.sweeps.extend(outcome.sweeps)
            result.problems.extend(outcome.problems)
            facts.extend(outcome.facts)
            broken.update(outcome.broken)
        if cross_checks:
            result.problems.extend(cross_check(facts, locator, broken=broken))
    result.problems.sort(key=Problem.sort_key)
    return result


def _identity(data: Any) -> tuple[str, str]:
    if not isinstance(data, dict):
        return ("", "")
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return (str(data.get("kind")), str(name))


def _read_whole(path: str) -> bytes:
    return Path(path).read_bytes()


def load_paths(
    paths: Iterable[str | os.PathLike[str]],
    *,
    limits: Limits = DEFAULT_LIMITS,
    cross_checks: bool = True,
    follow_links: bool = True,
) -> LoadResult:
    """Load and validate every manifest under `paths` (files and directories).

    Raises `SourceError` for a path that does not exist; everything wrong inside
    the files is returned as problems, all of them, never raised. With
    `follow_links=False` a symbolic link inside a directory is not read: it is a
    problem of its own (as in a git source, where a link is never followed).
    """
    links: list[str] | None = None if follow_links else []
    files = discover(paths, links=links)
    outcomes = _check_files(files, limits, True)
    outcomes += [_FileOutcome(link, [], [], [_link_problem(link)], [], []) for link in links or ()]
    return _finish(outcomes, Locator(_read_whole), cross_checks=cross_checks)


def _link_problem(path: str) -> Problem:
    return Problem(
        path=path,
        line=1,
        column=1,
        message="a symbolic link, not followed: a source reads only what is inside it; "
        "put the file itself here",
    )


def check_paths(
    paths: Iterable[str | os.PathLike[str]],
    *,
    limits: Limits = DEFAULT_LIMITS,
    cross_checks: bool = True,
    workers: int | None = None,
) -> LoadResult:
    """Like `load_paths`, for checking only: the result has problems and counts but no
    objects, which lets large trees be validated in `workers` processes (default:
    one per CPU core when there are enough files)."""
    files = discover(paths)
    outcomes = _check_in_workers(files, limits, workers)
    return _finish(outcomes, Locator(_read_whole), cross_checks=cross_checks)


def load_bytes(
    data: bytes | str,
    path: str = "<stdin>",
    *,
    limits: Limits = DEFAULT_LIMITS,
    cross_checks: bool = True,
) -> LoadResult:
    """Load and validate the manifests in one file's content."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    with paused_gc():
        outcome = _check_bytes(raw, path, limits, keep=True)
    return _finish([outcome], Locator(lambda _: raw), cross_checks=cross_checks)


class GitTreeCache:
    """What `load_git_tree` learnt of each file, by path and blob id: a later load of
    a commit that shares most files with the last one reads and checks only the
    changed ones. Holds the files of the last load only."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], _FileOutcome] = {}
        self.texts: dict[str, bytes] = {}


def load_git_tree(
    repository: str | os.PathLike[str],
    commit: str = "HEAD",
    subdir: str = "",
    *,
    limits: Limits = DEFAULT_LIMITS,
    cross_checks: bool = True,
    cache: GitTreeCache | None = None,
) -> LoadResult:
    """Load the manifests of a git repository at one commit (never the working tree).

    Paths in problems are relative to the repository root. Symbolic links and
    submodules are skipped: only what the commit itself holds counts.
    """
    repo = os.fspath(repository)
    entries = _git_entries(repo, commit, subdir.strip("/"))
    previous = cache or GitTreeCache()
    outcomes: dict[tuple[str, str], _FileOutcome] = {}
    texts: dict[str, bytes] = {}
    with paused_gc():
        unread = [
            blob
            for path, blob, size in entries
            if size <= limits.max_bytes
            and not ((path, blob) in previous.outcomes and path in previous.texts)
        ]
        read = _read_blobs(repo, unread)
        for path, blob, size in entries:
            known = previous.outcomes.get((path, blob))
            if known is not None and path in previous.texts:
                outcomes[path, blob] = known
                texts[path] = previous.texts[path]
            elif size > limits.max_bytes:
                outcomes[path, blob] = _FileOutcome(
                    path, [], [], [too_large(path, size, limits)], [], []
                )
            else:
                texts[path] = read[blob]
                outcomes[path, blob] = _check_bytes(texts[path], path, limits, keep=True)
    if cache is not None:
        cache.outcomes, cache.texts = outcomes, texts
    return _finish(outcomes.values(), Locator(texts.__getitem__), cross_checks=cross_checks)


def _git(repository: str, *args: str, stdin: bytes | None = None) -> bytes:
    """A git command's output, or SourceError with git's own words. Plain `git`
    processes: GitPython costs 0.15 s to import and a process per call anyway."""
    try:
        done = subprocess.run(
            ["git", "-C", repository, *args], input=stdin, capture_output=True, check=False
        )
    except OSError as exc:
        raise SourceError(f"{repository}: cannot run git: {exc}") from exc
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()
        if "not a git repository" in said or "cannot change to" in said:
            raise SourceError(f"{repository}: not a git repository")
        raise SourceError(f"{repository}: git {args[0]} failed: {said[-500:]}")
    return done.stdout


def _read_blobs(repository: str, blobs: Sequence[str]) -> dict[str, bytes]:
    """The contents of these blobs, from one `git cat-file --batch`: a process per
    repository, not a lookup per file (10,000 files: 0.1 s instead of 1.8 s)."""
    if not blobs:
        return {}
    wanted = sorted(set(blobs))
    data = _git(repository, "cat-file", "--batch", stdin="\n".join(wanted).encode() + b"\n")
    out, at = {}, 0
    for blob in wanted:
        end = data.index(b"\n", at)
        header = data[at:end].split()
        if len(header) != 3 or header[1] != b"blob":
            raise SourceError(f"git cat-file: unexpected answer for {blob}: {data[at:end]!r}")
        size = int(header[2])
        out[blob] = data[end + 1 : end + 1 + size]
        at = end + 1 + size + 1
    return out


def load_git_change(
    repository: str | os.PathLike[str],
    base: str,
    head: str,
    subdir: str = "",
    *,
    limits: Limits = DEFAULT_LIMITS,
    keep_kinds: frozenset[str] = frozenset({"Node", "Dataset"}),
    workers: int | None = None,
    cache: bool = True,
) -> tuple[LoadResult, LoadResult]:
    """Two commits of one change, for a plan, both checked alike (cross-checks on).

    Each result holds every file's facts and problems, but the objects only of the
    files the change touches, and of `keep_kinds` everywhere: an unchanged file's
    jobs cannot change. A file both commits hold unchanged is read and checked once,
    in worker processes when there are many; the rest in this one. With `cache`,
    unchanged files checked by an earlier plan of this repository are not checked
    again (`caching.py`).
    """
    repo = os.fspath(repository)
    new = _git_entries(repo, head, subdir.strip("/"))
    try:
        old = _git_entries(repo, base, subdir.strip("/"))
    except SourceError as exc:  # a change that adds the folder: nothing before it
        if not subdir or "no folder" not in str(exc):
            raise
        old = []
    fits = [e for e in {*old, *new} if e[2] <= limits.max_bytes]
    read = _read_blobs(repo, [blob for _, blob, _ in fits])
    shared = set(old) & set(new)
    outcomes: dict[tuple[str, str], _FileOutcome] = {}
    for path, blob, size in {*old, *new}:
        if size > limits.max_bytes:
            outcomes[path, blob] = _FileOutcome(
                path, [], [], [too_large(path, size, limits)], [], []
            )
    checked = CheckedFiles.of(repo, limits, sorted(keep_kinds)) if cache else None
    blobs = {p: b for p, b, _ in shared}
    kept: list[tuple[list[tuple[str, str]], bytes]] = []
    for keys, data in checked.load() if checked is not None else []:
        # A shard of an earlier plan is used whole while every file in it is unchanged.
        if not all(blobs.get(path) == blob and (path, blob) not in outcomes for path, blob in keys):
            continue
        assert checked is not None
        found = checked.read(data)
        if found is None or [o.path for o in found] != [path for path, _ in keys]:
            continue
        outcomes.update(((o.path, blobs[o.path]), o) for o in found)
        kept.append((keys, data))
    unchanged = sorted((p, read[b]) for p, b, s in shared if (p, b) not in outcomes)
    fresh = [
        ([(path, blobs[path]) for path in paths], data)
        for paths, data in _check_texts_in_workers(unchanged, limits, keep_kinds, workers)
    ]
    for _, data in fresh:
        for outcome in pickle.loads(data):
            outcomes[outcome.path, blobs[outcome.path]] = outcome
    if checked is not None and fresh:
        checked.save([*kept, *fresh])
    with paused_gc():
        for path, blob, _ in sorted({*old, *new} - shared):
            if (path, blob) not in outcomes:
                outcomes[path, blob] = _check_bytes(read[blob], path, limits, keep=True)

    def finish(entries: list[tuple[str, str, int]]) -> LoadResult:
        texts = {path: read.get(blob, b"") for path, blob, _ in entries}
        found = [outcomes[path, blob] for path, blob, _ in entries]
        return _finish(found, Locator(texts.__getitem__), cross_checks=True)

    return finish(old), finish(new)


def _git_entries(repository: str, commit: str, subdir: str) -> list[tuple[str, str, int]]:
    """(path, blob id, size) of each manifest file at `commit` under `subdir`, sorted,
    from one `git ls-tree` (fast: git walks the tree, not Python)."""
    if commit.startswith("-"):
        raise SourceError(f"{repository}: no commit '{commit}' (is the branch empty?)")
    try:
        listing = _git(repository, "ls-tree", "-r", "-l", "-z", "--full-tree",
                       f"{commit}^{{commit}}", "--", subdir or ".")  # fmt: skip
    except SourceError as exc:
        if "not a valid object name" not in str(exc).lower():
            raise
        raise SourceError(f"{repository}: no commit '{commit}' (is the branch empty?)") from exc
    out: list[tuple[str, str, int]] = []
    found_folder = not subdir
    for entry in listing.decode("utf-8", "surrogateescape").split("\0"):
        if not entry:
            continue
        meta, _, path = entry.partition("\t")
        if path == subdir:
            raise SourceError(f"{repository}: '{subdir}' at commit {commit} is not a folder")
        found_folder = True
        mode, kind, blob, size = meta.split()
        if kind != "blob" or mode == "120000":  # submodules and symbolic links
            continue
        parts = path.split("/")
        if not parts[-1].endswith(MANIFEST_SUFFIXES) or any(p.startswith(".") for p in parts):
            continue
        out.append((path, blob, int(size)))
    if not found_folder:
        raise SourceError(f"{repository}: no folder '{subdir}' at commit {commit}")
    out.sort()
    return out
