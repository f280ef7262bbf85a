"""What a sync should change: the objects at one commit against the stored ones.

Pure: `plan_sync(desired, stored)` reads the whole state and returns actions; the
controller's executor applies them in one transaction. Properties (tested):
`plan_sync(s, s)` is empty, and applying a plan then planning again is empty.

Rules, per (kind, name):
- new and valid: create (generation 1); new and invalid: create a placeholder with
  no spec (generation 0) that carries `Valid=False`, so the error is visible;
- a changed spec: update, generation + 1; the same spec in another file or line:
  relocate (no generation bump);
- invalid now: `Valid=False` with file:line and message, and the last valid spec
  stays in force; valid again with that same spec: `Valid=True`, nothing else;
- gone from git: pruned (a job that has not finished is cancelled first; finished
  jobs stay as history). Objects whose file no longer parses are not pruned: their
  file's error is shown on them instead.
- A plan that prunes every object, or (with 10 or more) more than `max_prune_share`
  of them, is held back as a likely accident (a wrong path, a bad merge) unless
  allowed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlsm.manifests import LoadResult, Located, Problem

__all__ = [
    "ALLOW_MASS_PRUNE",
    "Action",
    "Create",
    "Desired",
    "DesiredState",
    "Invalidate",
    "ManifestMemo",
    "Plan",
    "Prune",
    "Relocate",
    "Revalidate",
    "Stored",
    "Update",
    "desired_state",
    "plan_sync",
    "spec_hash",
]

ALLOW_MASS_PRUNE = "mlsm.io/allow-mass-prune"
"""Annotation (value "true") on any manifest of a commit, or a commit-message trailer
`Allow-Mass-Prune: true`, that lets the commit prune most objects."""

MASS_PRUNE_MIN_OBJECTS = 10
"""Below this many objects only pruning all of them is held: in a small repository,
removing two jobs of three is ordinary."""

Key = tuple[str, str]


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON: equal for manifests that mean the same."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Desired:
    """One object as the commit has it. `manifest` is None when it is invalid there."""

    kind: str
    name: str
    path: str
    line: int
    manifest: dict[str, Any] | None = None
    hash: str = ""
    problems: tuple[str, ...] = ()
    """Each as 'path:line:col: message', when invalid."""

    @property
    def key(self) -> Key:
        return (self.kind, self.name)

    @property
    def error(self) -> str:
        return "; ".join(self.problems)


@dataclass(slots=True)
class DesiredState:
    """Everything one commit declares."""

    objects: dict[Key, Desired] = field(default_factory=dict)
    broken_files: dict[str, str] = field(default_factory=dict)
    """Files with errors that name no object (YAML that does not parse, a document
    without kind or name): path -> first error. Their objects are not pruned."""
    file_problems: list[Problem] = field(default_factory=list)
    """Every problem that names no object, in file and line order."""
    allow_mass_prune: bool = False


@dataclass(frozen=True, slots=True)
class Stored:
    """What the planner needs of a stored, live object."""

    kind: str
    name: str
    uid: str
    hash: str
    """'' when the object never had a valid spec."""
    generation: int
    path: str
    line: int
    valid: bool = True
    error: str = ""
    """The message of its `Valid=False` condition."""
    finished: bool = True
    """False for a job that is still pending or running."""

    @property
    def key(self) -> Key:
        return (self.kind, self.name)


@dataclass(frozen=True, slots=True)
class Create:
    desired: Desired


@dataclass(frozen=True, slots=True)
class Update:
    desired: Desired
    stored: Stored


@dataclass(frozen=True, slots=True)
class Relocate:
    desired: Desired
    stored: Stored


@dataclass(frozen=True, slots=True)
class Invalidate:
    stored: Stored
    error: str
    """The errors, each located as 'path:line:col: message'."""


@dataclass(frozen=True, slots=True)
class Revalidate:
    desired: Desired
    stored: Stored


@dataclass(frozen=True, slots=True)
class Prune:
    stored: Stored
    cancel: bool
    """The job has not finished: cancel it first."""


Action = Create | Update | Relocate | Invalidate | Revalidate | Prune


@dataclass(slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    held: str = ""
    """Why the plan must not be applied (a likely accident), or ''."""
    kept: int = 0
    """Stored objects missing from the commit but kept, invalid, because their file
    has errors that name no object."""

    @property
    def prunes(self) -> list[Prune]:
        return [a for a in self.actions if isinstance(a, Prune)]


ManifestMemo = dict[int, tuple[Located, dict[str, Any], str]]
"""id(located) -> (located, manifest dict, hash): a loader that reuses the `Located`
of unchanged files (a `GitTreeCache`) lets a sync skip re-serialising them."""


def desired_state(
    result: LoadResult, *, commit_message: str = "", memo: ManifestMemo | None = None
) -> DesiredState:
    """The objects of a loaded commit: valid ones with their manifests, invalid ones
    (any problem naming them, or defined twice) with their errors."""
    state = DesiredState()
    fresh: ManifestMemo = {}
    problems: dict[Key, list[Problem]] = {}
    for problem in result.problems:
        if problem.kind and problem.name:
            problems.setdefault((problem.kind, problem.name), []).append(problem)
        else:
            state.broken_files.setdefault(problem.path, _located(problem))
            state.file_problems.append(problem)
    seen: dict[Key, list[Located]] = {}
    for located in result.objects:
        seen.setdefault((located.kind, located.name), []).append(located)
    for key, places in seen.items():
        if len(places) > 1:  # every copy is refused: which one is meant is unknowable
            where = ", ".join(f"{p.path}:{p.position.line}" for p in places)
            for place in places:
                problems.setdefault(key, []).append(Problem(
                    path=place.path, line=place.position.line, column=place.position.column,
                    message=f"defined {len(places)} times ({where}); a name must be unique "
                    "per kind, so rename or remove all but one", kind=key[0], name=key[1],
                ))  # fmt: skip
    for located in result.objects:
        key = (located.kind, located.name)
        if key in problems:
            continue
        known = memo.get(id(located)) if memo is not None else None
        if known is not None and known[0] is located:
            manifest, digest = known[1], known[2]
        else:
            manifest = located.manifest.to_manifest_dict()
            digest = spec_hash(manifest)
        if memo is not None:
            fresh[id(located)] = (located, manifest, digest)
        annotations = located.manifest.metadata.annotations
        if annotations.get(ALLOW_MASS_PRUNE, "").lower() == "true":
            state.allow_mass_prune = True
        state.objects[key] = Desired(
            kind=located.kind,
            name=located.name,
            path=located.path,
            line=located.position.line,
            manifest=manifest,
            hash=digest,
        )
    for key, found in problems.items():
        first = min(found, key=Problem.sort_key)
        state.objects[key] = Desired(
            kind=key[0],
            name=key[1],
            path=first.path,
            line=first.line,
            problems=tuple(_located(p) for p in sorted(found, key=Problem.sort_key)),
        )
    if memo is not None:  # keep only what this commit still has
        memo.clear()
        memo.update(fresh)
    if _trailer_allows(commit_message):
        state.allow_mass_prune = True
    return state


def _located(problem: Problem) -> str:
    return f"{problem.path}:{problem.line}:{problem.column}: {problem.describe()}"


def _trailer_allows(message: str) -> bool:
    for line in message.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "allow-mass-prune" and value.strip().lower() == "true":
            return True
    return False


def plan_sync(
    desired: DesiredState,
    stored: Iterable[Stored],
    *,
    max_prune_share: float = 0.5,
    allow_mass_prune: bool = False,
    rewritten: bool = False,
) -> Plan:
    """The actions that bring the stored objects to the commit's. `rewritten`: the
    commit does not descend from the one applied (a force-push), so any prune at
    all is held, whatever the count."""
    plan = Plan()
    live = {s.key: s for s in stored}
    for key, want in sorted(desired.objects.items()):
        have = live.get(key)
        action = _plan_object(want, have)
        if action is not None:
            plan.actions.append(action)
    for key, have in sorted(live.items()):
        if key in desired.objects:
            continue
        if have.path in desired.broken_files:
            plan.kept += 1
            error = f"{have.path} has errors, so this object keeps its last valid spec: "
            error += desired.broken_files[have.path]
            if have.valid or have.error != error:
                plan.actions.append(Invalidate(have, error))
            continue
        plan.actions.append(Prune(have, cancel=not have.finished))
    plan.held = _held(
        len(plan.prunes),
        len(live),
        max_prune_share,
        allow_mass_prune or desired.allow_mass_prune,
        rewritten=rewritten,
    )
    return plan


def _plan_object(want: Desired, have: Stored | None) -> Action | None:
    if have is None:
        return Create(want)
    if want.manifest is None:  # invalid at this commit: the stored spec stays
        if have.valid or have.error != want.error:
            return Invalidate(have, want.error)
        return None
    if want.hash != have.hash:
        return Update(want, have)
    if not have.valid:
        return Revalidate(want, have)
    if (want.path, want.line) != (have.path, have.line):
        return Relocate(want, have)
    return None


def _held(prunes: int, live: int, share: float, allowed: bool, *, rewritten: bool) -> str:
    if allowed or prunes == 0:
        return ""
    if rewritten:
        what = f"{prunes} of {live} objects after a rewrite of the branch's history (the "
        what += "commit applied last is not in it: a force-push?)"
    elif prunes == live:
        what = f"all {live} objects" if live > 1 else "the only object"
    elif live >= MASS_PRUNE_MIN_OBJECTS and prunes > share * live:
        what = f"{prunes} of {live} objects (over {share:.0%})"
    else:
        return ""
    return (
        f"this commit would prune {what}: a wrong path or a bad merge? Not applied. "
        f"If it is meant, sync with --allow-mass-prune, add the annotation "
        f'{ALLOW_MASS_PRUNE}: "true" to a manifest, or end the commit message with '
        "'Allow-Mass-Prune: true'"
    )
