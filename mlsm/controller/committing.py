"""`mlsmctl apply` and `delete` on the controller's side: manifests written into the
controller's own local source, so git stays the one source of truth and the change
is audited like any other commit.

A local git repository gets a commit on the followed branch, made with git's
plumbing and a private index (the user's index is never touched) and moved with a
compare-and-swap `update-ref`, so a concurrent commit is never overwritten. Where
that branch is checked out, its working tree is brought along when it has no local
changes in the way. A plain directory gets its files written in place. A remote
branch is refused: changes there go through a pull request.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mlsm import manifests
from mlsm.controller.sources import DirectorySource, GitSource, ManifestSource
from mlsm.errors import MlsmError
from mlsm.store import OBJECT_MODELS, Store

__all__ = ["Change", "WriteRefused", "plan_writes", "write_changes"]

FOLDERS = {"Node": "nodes", "Dataset": "datasets", "TrainingJob": "jobs"}


class WriteRefused(MlsmError):
    """The change cannot be written (a remote source, invalid manifests, an object that
    shares its file with others); the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    """Relative to the source's root (a repository's root, or the directory)."""
    content: bytes | None
    """None removes the file."""
    objects: tuple[str, ...]
    """'Kind/name' of what the file holds."""


def plan_writes(store: Store, source: ManifestSource, text: bytes, *, delete: bool) -> list[Change]:
    """Which files to write (or remove) so the source holds (or no longer holds) the
    objects in `text`: one file per object, where it already lives or at
    `<path>/<kind folder>/<name>.yaml`."""
    if isinstance(source, GitSource) and source.remote:
        raise WriteRefused(
            f"this controller follows {source.url} (branch {source.branch}): commit your "
            "manifests there and open a pull request; apply and delete write only into a "
            "local source"
        )
    result = manifests.load_bytes(text, "<request>", cross_checks=False)
    if result.problems:
        raise WriteRefused("; ".join(str(p) for p in result.problems))
    if not result.objects:
        raise WriteRefused("no manifests in the request")
    documents = _documents(text)
    prefix = source.path.strip("/") if isinstance(source, GitSource) else ""
    changes: list[Change] = []
    with store.read() as session:
        for located in result.objects:
            model = OBJECT_MODELS[located.kind]
            where = session.scalar(select(model.source_path).where(
                model.name == located.name, model.deleted_at.is_(None)))  # fmt: skip
            if where:
                if _objects_in(session, where) > 1:
                    raise WriteRefused(
                        f"{located.kind}/{located.name} is defined in {where} together with "
                        "other objects; edit that file and commit it yourself"
                    )
                path = where
            elif delete:
                raise WriteRefused(f"{located.kind}/{located.name} does not exist")
            else:
                folder = FOLDERS[located.kind]
                path = "/".join(p for p in (prefix, folder, f"{located.name}.yaml") if p)
            content = None if delete else documents[located.document]
            changes.append(Change(path, content, (f"{located.kind}/{located.name}",)))
    return changes


def _objects_in(session: Session, path: str) -> int:
    return sum(
        session.scalar(
            select(func.count()).select_from(m).where(m.source_path == path, m.deleted_at.is_(None))
        )
        or 0
        for m in OBJECT_MODELS.values()
    )


def _documents(text: bytes) -> list[bytes]:
    """Each YAML document of `text` as its own file's content, indexed as parsing
    indexes them (`Located.document`): split at '---' lines, text before the first
    one counting only when it holds more than comments."""
    pieces: list[list[bytes]] = [[]]
    for line in text.splitlines(keepends=True):
        if line.startswith(b"---") and line[3:4] in (b"", b"\n", b"\r", b" ", b"\t"):
            pieces.append([line[3:].lstrip()] if line[3:].strip() else [])
        else:
            pieces[-1].append(line)
    if len(pieces) > 1 and not _has_content(pieces[0]):
        pieces = pieces[1:]
    out = [b"".join(piece) for piece in pieces]
    return [doc if doc.endswith(b"\n") else doc + b"\n" for doc in out]


def _has_content(lines: list[bytes]) -> bool:
    return any(line.strip() and not line.lstrip().startswith(b"#") for line in lines)


def write_changes(
    source: ManifestSource, changes: list[Change], *, author: str, message: str
) -> str:
    """Write the changes into the source; returns the new commit's sha ('' for a
    directory)."""
    if isinstance(source, DirectorySource):
        root = Path(source.url)
        for change in changes:
            target = root / change.path
            if change.content is None:
                target.unlink(missing_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.mlsm-tmp")
            temporary.write_bytes(change.content)
            os.replace(temporary, target)
        return ""
    assert isinstance(source, GitSource)
    return _commit(source.repository, source.branch, changes, author=author, message=message)


def _commit(repo: str, branch: str, changes: list[Change], *, author: str, message: str) -> str:
    name, _, email = author.partition("<")
    identity = {
        "GIT_AUTHOR_NAME": name.strip() or "mlsm", "GIT_AUTHOR_EMAIL": email.rstrip(">").strip(),
        "GIT_COMMITTER_NAME": "mlsm-controller", "GIT_COMMITTER_EMAIL": "mlsm@localhost",
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, **identity, "GIT_INDEX_FILE": str(Path(scratch) / "index")}

        def git(*args: str, stdin: bytes | None = None) -> str:
            done = subprocess.run(["git", "-C", repo, *args], input=stdin, env=env,
                                  capture_output=True, check=False)  # fmt: skip
            if done.returncode != 0:
                raise WriteRefused(f"git {args[0]} failed in {repo}: "
                                   f"{done.stderr.decode(errors='replace').strip()}")  # fmt: skip
            return done.stdout.decode().strip()

        parent = git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")
        git("read-tree", parent)
        for change in changes:
            if change.content is None:
                git("update-index", "--force-remove", "--", change.path)
            else:
                blob = git("hash-object", "-w", "--stdin", stdin=change.content)
                git("update-index", "--add", "--cacheinfo", f"100644,{blob},{change.path}")
        tree = git("write-tree")
        commit = git("commit-tree", tree, "-p", parent, stdin=message.encode())
        git("update-ref", f"refs/heads/{branch}", commit, parent)  # fails if the branch moved
    _bring_worktree_along(repo, branch, parent, commit)
    return commit


def _bring_worktree_along(repo: str, branch: str, old: str, new: str) -> None:
    """Where `branch` is checked out, move its index and files from `old` to `new`
    (refused by git, harmlessly, where local changes are in the way)."""
    head = subprocess.run(["git", "-C", repo, "symbolic-ref", "-q", "HEAD"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if head.stdout.strip() != f"refs/heads/{branch}":
        return
    bare = subprocess.run(["git", "-C", repo, "rev-parse", "--is-bare-repository"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if bare.stdout.strip() == "true":
        return
    subprocess.run(["git", "-C", repo, "read-tree", "-m", "-u", old, new],
                   capture_output=True, check=False)  # fmt: skip
