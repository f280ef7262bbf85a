"""What a flood of bad node tokens costs the controller in database reads, and that a
token issued a moment ago still works on its first request, on SQLite and PostgreSQL.

    python bench/bad_tokens.py [--requests 20000] [--concurrency 200]

The agent API (the controller's Starlette app, in process over httpx's ASGI
transport, with the real store) takes heartbeats with random tokens, `concurrency`
at a time: every token distinct (an attacker guessing), then one bad token over and
over (a misconfigured agent). Every SQL statement that reads the tokens table is
counted at the engine. Before the fix of issue 13 an unknown token reloaded the
whole table, at most once a second, and was refused without a read in between;
now each one is looked up, in batches, with misses remembered until the next
reload, so the reads grow with the number of batches, not of requests.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import databases  # noqa: E402

from mlsm.controller.agents import AgentApi  # noqa: E402
from mlsm.controller.api import create_app  # noqa: E402
from mlsm.store import Node, Store, Token  # noqa: E402
from mlsm.store.tokens import token_digest  # noqa: E402

MANIFEST = {"apiVersion": "mlsm/v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}}
BEAT = {"inventory": {"cpus": 8, "memory": 1 << 34, "runtimes": ["venv"], "gpus": []}}


def prepare(url: str) -> Store:
    store = Store.open(url)
    store.migrate()
    with store.write() as session:
        session.add(Node(uid=str(uuid.uuid4()), name="n1", manifest=MANIFEST, spec_hash="x"))
        session.add(Token(role="node", node="n1", digest=token_digest("good"), prefix="good"))
    return store


def count_token_reads(store: Store) -> list[int]:
    reads = [0]

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "tokens" in statement:
            reads[0] += 1

    event.listen(store.engine, "before_cursor_execute", seen)
    return reads


async def flood(client: httpx.AsyncClient, tokens: list[str], concurrency: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    limit = anyio.Semaphore(concurrency)

    async def one(token: str) -> None:
        async with limit:
            response = await client.post(
                "/api/v1/agent/nodes/n1/heartbeat", json=BEAT,
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    async with anyio.create_task_group() as tasks:
        for token in tokens:
            tasks.start_soon(one, token)
    return statuses


async def measure(store: Store, requests: int, concurrency: int) -> None:
    reads = count_token_reads(store)
    agents = AgentApi(store)
    app = create_app(store, agents=agents)
    transport = httpx.ASGITransport(app=app, client=("10.0.0.9", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://c", timeout=60) as client:
        await flood(client, ["good"], 1)  # the table is loaded
        for label, tokens in (
            ("distinct bad tokens", [secrets.token_urlsafe(32) for _ in range(requests)]),
            ("one bad token, repeated", ["wrong"] * requests),
        ):
            before, started = reads[0], time.perf_counter()
            statuses = await flood(client, tokens, concurrency)
            took = time.perf_counter() - started
            print(f"  {label:26} {requests} requests -> {statuses}: {reads[0] - before:4} "
                  f"token reads, {requests / took:6.0f} refusals/s")  # fmt: skip
        with store.write() as session:
            session.add(Token(role="node", node="n1", digest=token_digest("new"), prefix="new"))
        statuses = await flood(client, ["new"], 1)
        print(f"  a token issued just now    first request -> {statuses}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        databases(args.databases.split(","), Path(tmp)) as urls,
    ):
        for kind, url in urls:
            print(f"{kind}: {args.concurrency} requests at a time")
            store = prepare(url)
            try:
                anyio.run(measure, store, args.requests, args.concurrency)
            finally:
                store.dispose()


if __name__ == "__main__":
    main()
