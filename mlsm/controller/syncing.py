"""One sync: read the source's newest commit, plan against the store, apply.

Slow work (fetching, loading and validating the commit) happens with no
transaction open; the plan is made and applied inside one write transaction that
holds the sync lock, so two syncs at once (two controllers on one PostgreSQL, a
webhook during a poll) run one after the other and the second finds nothing to do.
A sync that fails (source unreachable, a held mass prune) changes no object: the
last good state stays, and the sync state records the error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from mlsm import planning
from mlsm.controller.applying import apply_plan, stored_objects
from mlsm.controller.events import Commit, record
from mlsm.controller.sources import ManifestSource, SourceError
from mlsm.manifests import Problem
from mlsm.manifests.parsing import paused_gc
from mlsm.store import Store, SyncState
from mlsm.store.conflicts import retry_on_conflict
from mlsm.store.types import utcnow

__all__ = ["SyncOutcome", "Syncer"]

log = logging.getLogger("mlsm.controller.sync")

MAX_SYNC_PROBLEMS = 200
"""Problems of broken files kept with the sync state (each file holds at most 101)."""
MAX_FILE_EVENTS = 20
"""Files that broke (or read again) recorded one event each per sync; then one more."""


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    ok: bool
    commit: str
    changed: int = 0
    objects: int = 0
    invalid: int = 0
    broken_files: int = 0
    """Files with problems that name no object (their objects keep their last spec)."""
    error: str = ""
    skipped: bool = False
    """The commit was already applied: nothing was loaded."""
    seconds: float = 0.0

    def __str__(self) -> str:
        if not self.ok:
            return f"sync failed: {self.error}"
        if self.skipped:
            return f"up to date at {self.commit[:10]}"
        return (
            f"synced {self.commit[:10]}: {self.changed} changed, {self.objects} objects, "
            f"{self.invalid} invalid, {self.broken_files} broken files ({self.seconds:.2f} s)"
        )


def _record_broken_files(
    session: Session, state: SyncState, problems: list[Problem], commit: Commit
) -> int:
    """Keep the problems that name no object with the sync state (the first
    MAX_SYNC_PROBLEMS), and record an event for each file that broke or reads again
    at this commit (at most MAX_FILE_EVENTS of each). Answers how many files are
    broken."""
    was = {str(p.get("path")) for p in state.problems or []}
    now = {p.path: p for p in reversed(problems)}  # each file's first problem
    broke = [now[path] for path in sorted(now) if path not in was]
    for problem in broke[:MAX_FILE_EVENTS]:
        record(
            session,
            None,
            "InvalidFile",
            f"{problem.path}:{problem.line}:{problem.column}: {problem.describe()}; "
            "objects defined there keep their last valid spec",
            kind="Sync",
            name=state.source,
            warning=True,
            commit=commit,
        )
    if len(broke) > MAX_FILE_EVENTS:
        record(
            session,
            None,
            "InvalidFile",
            f"and {len(broke) - MAX_FILE_EVENTS} more files with problems (GET /api/v1/sync)",
            kind="Sync",
            name=state.source,
            warning=True,
            commit=commit,
        )
    for path in sorted(was - set(now))[:MAX_FILE_EVENTS]:
        record(
            session,
            None,
            "FileValid",
            f"{path} reads again",
            kind="Sync",
            name=state.source,
            commit=commit,
        )
    state.problems = [
        {"path": p.path, "line": p.line, "column": p.column, "message": p.describe()}
        for p in problems[:MAX_SYNC_PROBLEMS]
    ]
    return len(now)


class Syncer:
    """Syncs one source into one store."""

    def __init__(
        self,
        store: Store,
        source: ManifestSource,
        *,
        max_prune_share: float = 0.5,
        allow_mass_prune: bool = False,
        fence: Callable[[Session], None] = lambda session: None,
    ) -> None:
        self.store = store
        self.source = source
        self.max_prune_share = max_prune_share
        self.allow_mass_prune = allow_mass_prune
        self.fence = fence
        """Called first in each write transaction: raises when this controller no
        longer leads (`leading.py`), so that a deposed leader writes nothing."""
        self._memo: planning.syncing.ManifestMemo = {}

    def sync(self, *, force: bool = False) -> SyncOutcome:
        """Bring the store to the source's newest commit. Never raises for a source
        or manifest problem: the outcome (and the sync state) says what went wrong."""
        # A sync makes many small acyclic objects; collections over a big heap cost
        # more than the sync itself. An agent report or the scheduler may change a
        # row under it: it reads again.
        with paused_gc():
            return retry_on_conflict(lambda: self._sync(force=force), attempts=3, pause=0)

    def _sync(self, *, force: bool) -> SyncOutcome:
        started = time.perf_counter()
        try:
            commit = self.source.head()
            if not force and commit.sha == self._applied():
                return SyncOutcome(ok=True, commit=commit.sha, skipped=True)
            desired = planning.desired_state(
                self.source.load(commit), commit_message=commit.message, memo=self._memo
            )
        except SourceError as exc:
            return self._failed(str(exc), started)
        with self.store.write(f"sync:{self.source.key}") as session:
            self.fence(session)
            state = self._state(session)
            applied = state.commit_sha if state.last_success_at is not None else ""
            rewritten = bool(applied) and applied != commit.sha
            rewritten = rewritten and self.source.rewritten(applied, commit)
            plan = planning.plan_sync(
                desired,
                stored_objects(session),
                max_prune_share=self.max_prune_share,
                allow_mass_prune=self.allow_mass_prune,
                rewritten=rewritten,
            )
            state.last_attempt_at = utcnow()
            if plan.held:
                error = f"commit {commit.short}: {plan.held}"
                if state.error != error:  # record a held commit once, not every poll
                    record(session, None, "SyncHeld", error, kind="Sync", name=self.source.key,
                           warning=True, commit=commit)  # fmt: skip
                state.status, state.error = "Failed", error
                log.warning("%s", error)
                return SyncOutcome(ok=False, commit=commit.sha, error=error,
                                   seconds=time.perf_counter() - started)  # fmt: skip
            changed = apply_plan(session, plan, commit)
            # invalid: objects of this commit that are, and objects kept from broken files
            invalid = sum(1 for d in desired.objects.values() if d.manifest is None) + plan.kept
            broken = _record_broken_files(session, state, desired.file_problems, commit)
            state.status, state.error = "Synced", ""
            state.commit_sha, state.commit_author = commit.sha, commit.author
            state.commit_message = commit.message
            state.objects, state.invalid = len(desired.objects) + plan.kept, invalid
            state.last_success_at = state.last_attempt_at
        outcome = SyncOutcome(ok=True, commit=commit.sha, changed=changed,
                              objects=len(desired.objects) + plan.kept, invalid=invalid,
                              broken_files=broken,
                              seconds=time.perf_counter() - started)  # fmt: skip
        log.info("%s", outcome)
        return outcome

    def _applied(self) -> str:
        with self.store.read() as session:
            state = session.get(SyncState, self.source.key)
            return state.commit_sha if state is not None and state.status == "Synced" else ""

    def _state(self, session: Session) -> SyncState:
        state = session.get(SyncState, self.source.key)
        if state is None:
            state = SyncState(source=self.source.key, url=self.source.url,
                              branch=self.source.branch, path=self.source.path)  # fmt: skip
            session.add(state)
        return state

    def _failed(self, error: str, started: float) -> SyncOutcome:
        log.warning("sync failed: %s; the last good state stays in force", error)
        with self.store.write(f"sync:{self.source.key}") as session:
            self.fence(session)
            state = self._state(session)
            state.last_attempt_at = utcnow()
            if state.error != error:
                record(session, None, "SyncFailed", error, kind="Sync", name=self.source.key,
                       warning=True)  # fmt: skip
            state.status, state.error = "Failed", error
        return SyncOutcome(ok=False, commit="", error=error,
                           seconds=time.perf_counter() - started)  # fmt: skip
