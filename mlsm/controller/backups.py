"""`mlsm-controller backup PATH` and `restore PATH`: the whole database, while the
controller runs (backup) or once it has stopped (restore).

- **SQLite**: SQLite's online backup API copies the database page by page into a
  new file, consistent as of one moment, while the controller goes on writing; the
  copy is checked (`PRAGMA integrity_check`) before it replaces PATH. Restoring
  copies it back the same way, and refuses while a controller holds the database.
- **PostgreSQL**: `pg_dump --format=custom` (restore: `pg_restore --clean
  --if-exists --no-owner`), as PostgreSQL documents. When the tools are not
  installed, the error gives the command to run where they are.

Either way the copy holds everything: objects and their history, runs, logs,
metrics, events and token digests (never the tokens themselves).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from mlsm.errors import UserError
from mlsm.store import Store

__all__ = ["backup", "restore"]


def backup(store: Store, path: Path) -> str:
    """Write the database to `path`; what was done, in one line."""
    if store.dialect == "sqlite":
        source = _sqlite_file(store)
        _sqlite_copy(source, path)
        size = path.stat().st_size
        return f"backed up {source} to {path} ({size / 1e6:.1f} MB; SQLite's online backup)"
    url = _libpq(store)
    by_hand = f"pg_dump --format=custom --file {path} '{_shown(store)}'"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:  # PATH is replaced only by a whole dump
        _run(["pg_dump", "--format=custom", "--file", str(partial), url], by_hand)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return f"backed up {_shown(store)} to {path} (pg_dump --format=custom)"


def restore(store: Store, path: Path) -> str:
    """Replace the database's contents with the backup at `path`."""
    if not path.is_file():
        raise UserError(f"{path}: no such backup file")
    if store.dialect == "sqlite":
        target = _sqlite_file(store)
        lock = Path(str(target) + ".controller.lock")
        with lock.open("a+") as held:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"a controller runs on {target}: stop it first, then restore"
                ) from None
            _check_sqlite(path)
            store.dispose()
            _sqlite_copy(path, target)
        return f"restored {target} from {path}"
    flags = ["--clean", "--if-exists", "--no-owner"]
    by_hand = f"pg_restore {' '.join(flags)} --dbname '{_shown(store)}' {path}"
    _run(["pg_restore", *flags, "--dbname", _libpq(store), str(path)], by_hand)
    return f"restored {_shown(store)} from {path} (pg_restore)"


def _sqlite_file(store: Store) -> Path:
    database = store.engine.url.database
    if not database or database == ":memory:":
        raise UserError("an in-memory SQLite database has nothing to back up")
    return Path(database)


def _sqlite_copy(source: Path, target: Path) -> None:
    """`source` into `target` by the online backup API, through a checked temporary
    file beside `target`, so that `target` is whole or untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        with (
            sqlite3.connect(f"file:{source}?mode=ro", uri=True) as reading,
            sqlite3.connect(temporary) as writing,
        ):
            reading.backup(writing)
        _check_sqlite(Path(temporary))
        for leftover in (Path(f"{target}-wal"), Path(f"{target}-shm")):
            leftover.unlink(missing_ok=True)  # the copy is whole without them
        os.replace(temporary, target)
    except sqlite3.Error as exc:
        raise UserError(f"cannot copy {source} to {target}: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)


def _check_sqlite(path: Path) -> None:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            (verdict,) = connection.execute("PRAGMA integrity_check").fetchone()
            listed = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {row[0] for row in listed}
    except sqlite3.Error as exc:
        raise UserError(f"{path} is not a SQLite database: {exc}") from None
    if verdict != "ok":
        raise UserError(f"{path} fails SQLite's integrity check: {verdict}")
    if "alembic_version" not in tables:
        raise UserError(f"{path} is a SQLite database, but not an mlsm controller's")


def _libpq(store: Store) -> str:
    return (
        make_url(store.engine.url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


def _shown(store: Store) -> str:
    return (
        make_url(store.engine.url).set(drivername="postgresql").render_as_string(hide_password=True)
    )


def _run(command: list[str], by_hand: str) -> None:
    if shutil.which(command[0]) is None:
        raise UserError(
            f"{command[0]} is not installed here (Debian: apt-get install postgresql-client); "
            f"run where it is: {by_hand}"
        )
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise UserError(f"{command[0]} failed: {said}")
