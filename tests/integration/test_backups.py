"""`mlsm-controller backup` while a controller runs, and `restore` once it has
stopped, end to end on SQLite (its online backup API) and PostgreSQL (pg_dump and
pg_restore): the restored database holds what was there at the backup, and a
controller starts on it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import select

from mlsm.store import Job, Store, Token
from tests.integration.conftest import GitRepo, controller_bin, job, node, wait_for


def controller(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*controller_bin(), *args], capture_output=True, text=True, timeout=120)


def jobs_in(database_url: str) -> list[str]:
    store = Store.open(database_url)
    try:
        with store.read() as session:
            return sorted(session.scalars(select(Job.name).where(Job.deleted_at.is_(None))))
    finally:
        store.dispose()


def test_a_backup_taken_while_running_restores_to_what_it_held(
    start: Callable[..., httpx.Client], repo: GitRepo, tmp_path: Path, database_url: str
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1"))
    repo.write("jobs/first.yaml", job("first"))
    first = repo.commit("The first job")
    client = start(str(repo.root), "--poll-interval", "0.2")

    def synced(sha: str) -> bool:
        return bool(client.get("/api/v1/sync").json()["items"][0]["commit"]["sha"] == sha)

    wait_for(lambda: synced(first))
    token = controller("token", "issue", "--role", "read", "--database-url", database_url)
    assert token.returncode == 0, token.stderr
    copy = tmp_path / "backups" / "mlsm.backup"
    taken = controller("backup", str(copy), "--database-url", database_url)
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.startswith("backed up "), taken.stdout
    assert copy.is_file()

    repo.write("jobs/later.yaml", job("later"))
    later = repo.commit("A job after the backup")
    wait_for(lambda: synced(later))
    assert jobs_in(database_url) == ["first", "later"]
    if database_url.startswith("sqlite"):  # a running controller holds the file
        refused = controller("restore", str(copy), "--database-url", database_url)
        assert refused.returncode == 1
        assert "a controller runs on" in refused.stderr
        assert "stop it first" in refused.stderr
    client.process.terminate()  # type: ignore[attr-defined]
    client.process.wait(10)  # type: ignore[attr-defined]

    restored = controller("restore", str(copy), "--database-url", database_url)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith("restored "), restored.stdout
    assert jobs_in(database_url) == ["first"]  # as it was at the backup
    store = Store.open(database_url)
    with store.read() as session:
        assert session.scalars(select(Token).where(Token.role == "read")).first() is not None
    store.dispose()
    again = start(str(repo.root), "--poll-interval", "0.2")
    wait_for(lambda: again.get("/api/v1/jobs/later").status_code == 200)  # git moves it on


def test_a_restore_of_something_else_is_refused_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mlsm.db'}"
    assert controller("migrate", "--database-url", url).returncode == 0
    (tmp_path / "notes.txt").write_text("not a database\n")
    for given, said in (("notes.txt", "is not a SQLite database"), ("absent", "no such backup")):
        done = controller("restore", str(tmp_path / given), "--database-url", url)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert said in done.stderr
