"""The live feeds: every client gets every new line once, in order; a client that
reconnects with its cursor (to this process or to a new one) gets exactly what it
missed; a phase change is announced; clients on one job share one reader."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from mlsm.store import Event, Job, Run, Store
from mlsm.store.outputs import read_log
from mlsm.web.live import Cursor, Feeds, read_state
from tests import sitedata

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'db'}")
    store.migrate()
    sitedata.populate(store)
    yield store
    store.dispose()


def run_of(store: Store) -> tuple[str, int]:
    with store.read() as session:
        run = session.query(Run).join(Job).filter(Job.name == "resnet-digits").one()
        return run.id, run.log_offset


def add(store: Store, texts: list[str]) -> None:
    run, offset = run_of(store)
    with store.write() as session:
        sitedata.add_lines(session, run, texts, start=offset)


class Client:
    """One browser's stream, parsed into (event, id, data) messages."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self.stream = stream
        self.buffer = ""

    async def next(self, timeout: float = 5.0) -> tuple[str, str, Any]:
        with anyio.fail_after(timeout):
            while "\n\n" not in self.buffer:
                self.buffer += (await self.stream.__anext__()).decode()
        block, self.buffer = self.buffer.split("\n\n", 1)
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" not in fields:  # retry: or a ping
            return await self.next(timeout)
        return fields["event"], fields.get("id", ""), json.loads(fields["data"])

    async def lines(self, count: int) -> tuple[list[str], str]:
        texts: list[str] = []
        cursor = ""
        while len(texts) < count:
            event, cursor, data = await self.next()
            if event == "log":
                texts += [text for _, text in data["lines"]]
        return texts, cursor


def cursor_now(store: Store) -> str:
    """The cursor of a page rendered now."""
    run, _ = run_of(store)
    with store.read() as session:
        digest, _ = read_state(session, "resnet-digits")
        ((last, _),) = read_log(session, run, tail=1)
    return str(Cursor(run, last, digest))


async def test_clients_get_each_new_line_once_and_share_one_reader(store: Store) -> None:
    reads = 0

    async def counted(function: Any, *args: Any) -> Any:
        nonlocal reads
        reads += 1
        return await anyio.to_thread.run_sync(function, *args)

    feeds = Feeds(store, reads=counted, interval=0.05)
    after = cursor_now(store)
    clients = [Client(feeds.stream("resnet-digits", after)) for _ in range(20)]
    async with anyio.create_task_group() as tasks:
        results: list[list[str]] = []

        async def follow(client: Client) -> None:
            texts, _ = await client.lines(30)
            results.append(texts)

        for client in clients:
            tasks.start_soon(follow, client)
        await anyio.sleep(0.2)
        before = reads
        for batch in range(3):
            add(store, [f"new {batch}-{i}" for i in range(10)])
            await anyio.sleep(0.15)
    expected = [f"new {b}-{i}" for b in range(3) for i in range(10)]
    assert results == [expected] * 20
    # one reader for all 20: some ticks of 0.05 s in 0.45 s, not 20 readers' worth
    assert reads - before < 40
    for client in clients:
        await client.stream.aclose()  # type: ignore[attr-defined]


async def test_a_client_resumes_from_its_cursor_even_after_a_restart(store: Store) -> None:
    feeds = Feeds(store, reads=_thread, interval=0.05)
    client = Client(feeds.stream("resnet-digits", cursor_now(store)))
    add(store, ["one", "two"])
    texts, cursor = await client.lines(2)
    assert texts == ["one", "two"]
    await client.stream.aclose()  # type: ignore[attr-defined]
    add(store, ["three", "four", sitedata.XSS])  # written while the browser is away
    restarted = Feeds(store, reads=_thread, interval=0.05)  # a new controller process
    again = Client(restarted.stream("resnet-digits", cursor))
    texts, _ = await again.lines(3)
    assert texts == ["three", "four", sitedata.XSS]
    add(store, ["five"])
    assert (await again.lines(1))[0] == ["five"]
    await again.stream.aclose()  # type: ignore[attr-defined]


async def test_a_phase_change_is_announced(store: Store) -> None:
    feeds = Feeds(store, reads=_thread, interval=0.05)
    client = Client(feeds.stream("resnet-digits", cursor_now(store)))
    await anyio.sleep(0.1)
    with store.write() as session:
        job = session.query(Job).filter_by(name="resnet-digits").one()
        job.phase = "Succeeded"
    event, cursor, data = await client.next()
    assert event == "changed"
    assert cursor
    assert data["run"] == run_of(store)[0]
    await client.stream.aclose()  # type: ignore[attr-defined]


async def test_the_site_feed_announces_new_events(store: Store) -> None:
    feeds = Feeds(store, reads=_thread, interval=0.05)
    with store.read() as session:
        digest, _ = read_state(session, "")
    client = Client(feeds.stream("", f".-1.{digest}"))
    await anyio.sleep(0.1)
    with store.write() as session:
        session.add(Event(kind="Node", name="gpu-2", reason="Ready", message="back"))
    event, _, _ = await client.next()
    assert event == "changed"
    await client.stream.aclose()  # type: ignore[attr-defined]


async def _thread(function: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(function, *args)
