"""The store on SQLite and on a real PostgreSQL: migrations, time zones, live-name
uniqueness, and writers that queue instead of colliding."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, StatementError

from mlsm.store import Base, DatabaseError, Event, Node, Store


@pytest.fixture
def store(database_url: str) -> Store:
    store = Store.open(database_url)
    store.migrate()
    yield store
    store.dispose()


def node(name: str, **fields: object) -> Node:
    return Node(uid=str(uuid.uuid4()), name=name, manifest={"kind": "Node"}, spec_hash="x",
                **fields)  # fmt: skip


def test_an_unmigrated_database_is_refused_with_the_fix(database_url: str) -> None:
    store = Store.open(database_url)
    head = store.revisions()[1]
    with pytest.raises(DatabaseError, match=rf"database is empty; this mlsm needs revision {head}"):
        store.check_migrated()
    store.migrate()
    store.check_migrated()
    store.migrate()  # twice is harmless
    store.dispose()


def test_an_older_database_migrates_with_its_rows(database_url: str) -> None:
    store = Store.open(database_url)
    store.migrate("0001")
    with pytest.raises(DatabaseError, match="the database is at revision 0001; this mlsm needs"):
        store.check_migrated()
    with store.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO nodes (uid, name, manifest, spec_hash, generation, labels, source_path,"
            " source_line, commit_sha, commit_author, commit_message, conditions, created_at,"
            " updated_at, version) VALUES ('u', 'gpu-1', '{}', 'h', 1, '{}', 'n.yaml', 1, '', '',"
            " '', '[]', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 1)"
        ))  # fmt: skip
    store.migrate()
    store.check_migrated()
    with store.read() as session:
        row = session.scalars(select(Node)).one()
    assert (row.name, row.inventory, row.assignment_revision) == ("gpu-1", {}, 0)
    store.dispose()


def test_the_migrations_build_exactly_the_models(store: Store) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_times_come_back_aware_and_in_utc(store: Store) -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with store.write() as session:
        session.add(Event(kind="Node", name="n", reason="Created", at=when))
    with store.read() as session:
        [event] = session.scalars(select(Event)).all()
    assert event.at == when
    assert event.at.tzinfo == dt.UTC


def test_a_naive_time_is_refused(store: Store) -> None:
    event = Event(kind="Node", name="n", reason="Created", at=dt.datetime(2026, 1, 1))
    with pytest.raises(StatementError, match="naive datetime"), store.write() as session:
        session.add(event)  # refused when the block commits


def test_names_are_unique_among_live_rows_only(store: Store) -> None:
    now = dt.datetime.now(dt.UTC)
    with store.write() as session:
        session.add_all([node("a", deleted_at=now), node("a", deleted_at=now), node("a")])
    with pytest.raises(IntegrityError), store.write() as session:
        session.add(node("a"))
    with store.read() as session:
        rows = session.scalars(select(Node).where(Node.name == "a")).all()
    assert len(rows) == 3


def test_json_columns_round_trip(store: Store) -> None:
    manifest = {"kind": "Node", "spec": {"capacity": {"gpus": 8}, "runtimes": ["venv"]}}
    with store.write() as session:
        session.add(node("a", labels={"gpu": "a100"}, conditions=[{"type": "Valid"}]))
    with store.write() as session:
        row = session.scalars(select(Node)).one()
        row.manifest = manifest
    with store.read() as session:
        row = session.scalars(select(Node)).one()
    assert (row.manifest, row.labels, row.conditions) == (
        manifest, {"gpu": "a100"}, [{"type": "Valid"}]
    )  # fmt: skip


def test_writers_with_the_same_lock_run_one_after_the_other(store: Store) -> None:
    """Read-modify-write in two threads at once: without serialisation one update
    would be lost."""
    with store.write() as session:
        session.add(node("counter", source_line=0))
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(5):
                with store.write("sync") as session:
                    row = session.scalars(select(Node).where(Node.name == "counter")).one()
                    seen = row.source_line
                    time.sleep(0.01)  # widen the window between read and write
                    row.source_line = seen + 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with store.read() as session:
        assert session.scalars(select(Node.source_line)).one() == 15


def test_a_bad_url_and_an_unreachable_server_say_what_is_wrong() -> None:
    with pytest.raises(DatabaseError, match="is not valid"):
        Store.open("not a url")
    with pytest.raises(DatabaseError, match="'mysql' is not supported"):
        Store.open("mysql://x@localhost/db")
    store = Store.open("postgresql://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    with pytest.raises(DatabaseError, match="cannot connect to the database postgresql"):
        store.check_migrated()
