"""A database that went back in time (restored from an older copy, or its last writes
lost) is noticed at start, said once, and its nodes' assignment revisions moved past
every one handed out, so that no agent's long poll matches a stale revision."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from mlsm.controller.events import record
from mlsm.controller.rewinds import check_mark, read_mark, save_mark
from mlsm.store import Event, Node, Store


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.open(database_url)
    store.migrate()
    with store.write() as session:
        session.add(Node(uid=str(uuid.uuid4()), name="n1", spec_hash="x", assignment_revision=9,
                         manifest={"kind": "Node", "metadata": {"name": "n1"}}))  # fmt: skip
        for number in range(5):
            record(session, None, "Test", f"event {number}", kind="Store", name="t")
    yield store
    store.dispose()


def test_a_store_behind_its_mark_is_said_and_revisions_move_on(
    store: Store, tmp_path: Path
) -> None:
    url = "sqlite:///lab.db"
    assert check_mark(store, tmp_path, url) == ""  # no mark yet: a first start
    save_mark(store, tmp_path, url)
    assert check_mark(store, tmp_path, url) == ""  # where it was

    with store.write() as session:  # what a restore from an older copy looks like
        newest = session.scalar(select(Event.id).order_by(Event.id.desc()).limit(1))
        session.execute(delete(Event).where(Event.id > newest - 3))
        session.scalars(select(Node)).one().assignment_revision = 5
    message = check_mark(store, tmp_path, url)
    assert message.startswith("the database is behind what this controller last saw")
    assert "assignment revisions up to 5, were 9" in message
    with store.read() as session:
        assert session.scalars(select(Node)).one().assignment_revision == 5 + 9 + 1
        [event] = session.scalars(select(Event).where(Event.reason == "StoreRewound"))
    assert (event.type, event.message) == ("Warning", message)

    save_mark(store, tmp_path, url)
    assert check_mark(store, tmp_path, url) == ""  # said once
    assert check_mark(store, tmp_path, "postgresql://other/db") == ""  # marks are per database
    assert read_mark(store).revision == 15
