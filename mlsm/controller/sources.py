"""Where manifests come from: a git branch (a local repository or a clone URL), or a
plain local directory.

A sync asks the source for its newest `Commit` and then loads exactly that commit.
A git source never reads a working tree: a local repository is read at its
branch's head; a URL is fetched into a bare mirror under the controller's state
directory with a forced refspec, so a force-push moves the mirror too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mlsm import manifests
from mlsm.controller.events import Commit
from mlsm.errors import MlsmError

__all__ = ["DirectorySource", "GitSource", "ManifestSource", "SourceError", "open_source"]


class SourceError(MlsmError):
    """The source cannot be read now (unreachable remote, missing branch, empty
    repository); the last good state stays in force and the error is recorded."""


class ManifestSource(Protocol):
    """What the syncer reads."""

    key: str
    """A short stable name for the source (its row in the sync state)."""
    url: str
    branch: str
    path: str

    def head(self) -> Commit:
        """The newest commit, fetching first where the source is remote."""
        ...

    def load(self, commit: Commit) -> manifests.LoadResult:
        """Every manifest at `commit`, each checked on its own: what only the whole set
        can tell (a selector no Node matches, an undeclared dataset) is the scheduler's
        to explain as a reason to wait, not a reason to refuse the object."""
        ...

    def rewritten(self, applied: str, commit: Commit) -> bool:
        """Whether `commit` does not descend from `applied` (a force-push rewrote the
        branch), so that a prune it brings is held for a person to confirm."""
        ...


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


_URL = re.compile(r"^[a-z][a-z0-9+.-]*://|^[^/]+@[^/]+:")  # scheme://... or user@host:path


@dataclass
class GitSource:
    """A branch of a git repository: a local path, or a URL mirrored under `state_dir`."""

    url: str
    branch: str = "main"
    path: str = ""
    state_dir: Path = Path(".mlsm")
    key: str = ""
    cache: manifests.GitTreeCache = field(default_factory=manifests.GitTreeCache)

    def __post_init__(self) -> None:
        self.path = self.path.strip("/")
        self.key = self.key or _key("git", self.url, self.branch, self.path)
        self.remote = bool(_URL.match(self.url))
        if not self.remote:
            self.url = os.path.abspath(self.url)

    @property
    def repository(self) -> str:
        if not self.remote:
            return self.url
        return str(self.state_dir / "sources" / _key(self.url))

    def head(self) -> Commit:
        import git

        if self.remote:
            self._fetch()
        try:
            repo = git.Repo(self.repository)
        except (git.exc.InvalidGitRepositoryError, git.exc.NoSuchPathError) as exc:
            raise SourceError(f"{self.url}: not a git repository") from exc
        try:
            commit = repo.commit(f"refs/heads/{self.branch}")
        except (git.exc.BadName, ValueError) as exc:
            raise SourceError(
                f"{self.url}: there is no branch '{self.branch}' (is the repository empty?)"
            ) from exc
        finally:
            repo.close()
        author = f"{commit.author.name} <{commit.author.email}>" if commit.author else ""
        message = commit.message if isinstance(commit.message, str) else commit.message.decode()
        return Commit(sha=commit.hexsha, author=author, message=message)

    def rewritten(self, applied: str, commit: Commit) -> bool:
        import git

        try:
            with git.Repo(self.repository) as repo:
                return not repo.is_ancestor(repo.commit(applied), repo.commit(commit.sha))
        except (git.exc.GitCommandError, git.exc.BadName, ValueError):
            return True  # the applied commit is gone from the branch's history

    def _fetch(self) -> None:
        import git

        mirror = Path(self.repository)
        try:
            if not (mirror / "HEAD").exists():
                mirror.parent.mkdir(parents=True, exist_ok=True)
                git.Repo.init(mirror, bare=True).close()
            with git.Repo(mirror) as repo:
                repo.git.fetch(
                    "--prune", "--no-tags", self.url,
                    f"+refs/heads/{self.branch}:refs/heads/{self.branch}",
                )  # fmt: skip
        except git.exc.GitCommandError as exc:
            raise SourceError(
                f"cannot fetch branch '{self.branch}' from {self.url}: {git_reason(exc)}"
            ) from exc

    def load(self, commit: Commit) -> manifests.LoadResult:
        try:
            return manifests.load_git_tree(
                self.repository, commit.sha, self.path, cache=self.cache, cross_checks=False
            )
        except manifests.SourceError as exc:
            raise SourceError(str(exc)) from exc


@dataclass
class DirectorySource:
    """A plain directory (not a git repository): its files as they are now. The
    'commit' is a digest of every manifest file's name and bytes."""

    url: str
    branch: str = ""
    path: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        self.url = os.path.abspath(self.url)
        self.key = self.key or _key("dir", self.url)

    def head(self) -> Commit:
        if not Path(self.url).is_dir():
            raise SourceError(f"{self.url}: no such directory")
        digest = hashlib.sha256()
        links: list[str] = []
        for name in manifests.discover([self.url], links=links):
            digest.update(name.encode() + b"\0")
            try:
                digest.update(Path(name).read_bytes())
            except OSError:
                continue  # gone or unreadable: loading reports it
        for link in links:  # not read, but a new link is a change (a problem to show)
            digest.update(b"link:" + link.encode() + b"\0")
        return Commit(sha=f"dir-{digest.hexdigest()[:32]}", author="", message="")

    def rewritten(self, applied: str, commit: Commit) -> bool:
        return False  # a directory has no history to rewrite

    def load(self, commit: Commit) -> manifests.LoadResult:
        try:
            result = manifests.load_paths([self.url], cross_checks=False, follow_links=False)
        except manifests.SourceError as exc:
            raise SourceError(str(exc)) from exc
        root = self.url.rstrip("/") + "/"  # paths as in a repository: relative
        result.problems = [
            dataclasses.replace(p, path=p.path.removeprefix(root)) for p in result.problems
        ]
        result.objects = [
            dataclasses.replace(o, path=o.path.removeprefix(root)) for o in result.objects
        ]
        return result


def git_reason(exc: Exception) -> str:
    """What git said, on one line: its `fatal:` and `error:` lines (the cause), else
    all it said. The last line alone is often only "and the repository exists."."""
    said = str(getattr(exc, "stderr", "") or "").strip().removeprefix("stderr:").strip(" '\n")
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    causes = [line for line in lines if line.lower().startswith(("fatal:", "error:", "ssh:"))]
    reason = " ".join(causes or lines) or str(exc)
    return reason if len(reason) <= 500 else reason[:497] + "..."


def open_source(
    url: str, *, branch: str = "main", path: str = "", state_dir: Path
) -> ManifestSource:
    """A git source for a URL or a local git repository, a directory source for a
    plain local directory."""
    if _URL.match(url):
        return GitSource(url, branch, path, state_dir)
    local = Path(url)
    if not local.exists():
        raise SourceError(f"{url}: no such repository or directory")
    if (local / ".git").exists() or (local / "HEAD").is_file():
        return GitSource(url, branch, path, state_dir)
    return DirectorySource(str(local / path) if path else url)
