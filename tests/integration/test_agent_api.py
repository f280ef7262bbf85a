"""The agent API over the ASGI app on SQLite and PostgreSQL: node tokens, heartbeats,
long-polled assignments, status reports, and fencing of stale runs."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import select

from mlsm.controller import heartbeats
from mlsm.controller.agents import FLUSH_SECONDS, AgentApi
from mlsm.controller.api import create_app
from mlsm.controller.capacity import Capacity
from mlsm.controller.heartbeats import Identities
from mlsm.controller.scheduling import assign
from mlsm.controller.sources import open_source
from mlsm.controller.syncing import Syncer
from mlsm.store import Job, Node, Run, Store, Token
from mlsm.store.tokens import token_digest
from tests.integration.conftest import GitRepo
from tests.integration.test_scheduling import manifest_job, manifest_node

INVENTORY = {"cpus": 8, "memory": 32 << 30, "runtimes": ["venv"],
             "gpus": [{"index": 0, "uuid": "GPU-0"}, {"index": 1, "uuid": "GPU-1"}]}  # fmt: skip


@pytest.fixture
def store(database_url: str, repo: GitRepo, tmp_path: Path) -> Iterator[Store]:
    store = Store.open(database_url)
    store.migrate()
    repo.write("nodes/n1.yaml", manifest_node("n1", "a100"))
    repo.write("jobs/train.yaml", manifest_job("train", 1))
    repo.commit()
    assert Syncer(store, open_source(str(repo.root), state_dir=tmp_path)).sync().ok
    with store.write() as session:
        for node, secret in (("n1", "n1-token"), ("ghost", "ghost-token"), ("n2", "n2-token")):
            session.add(Token(role="node", node=node, digest=token_digest(secret), prefix=node))
        session.add(Token(role="read", digest=token_digest("reader"), prefix="reader"))
    yield store
    store.dispose()


def call(store: Store, agents: AgentApi | None, method: str, path: str, token: str | None,
         **kwargs: Any) -> httpx.Response:  # fmt: skip
    async def go() -> httpx.Response:
        app = create_app(store, agents=agents)
        transport = httpx.ASGITransport(app=app, client=("10.0.0.9", 5000))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            return await client.request(method, f"/api/v1/agent/nodes{path}", headers=headers,
                                        **kwargs)  # fmt: skip

    return anyio.run(go)


@pytest.mark.parametrize(
    ("path", "token", "status", "fragment"),
    [
        pytest.param("/n1/heartbeat", None, 401, "needs its node token", id="missing-token"),
        pytest.param("/n1/heartbeat", "nope", 401, "invalid or revoked", id="wrong-token"),
        pytest.param("/n1/heartbeat", "reader", 401, "invalid or revoked", id="read-token"),
        pytest.param("/n1/heartbeat", "n2-token", 403, "node n2's; it cannot act for n1",
                     id="another-nodes-token"),
        pytest.param("/ghost/heartbeat", "ghost-token", 403,
                     "node ghost has no merged Node manifest: add nodes/ghost.yaml",
                     id="no-manifest"),
    ],
)  # fmt: skip
def test_refusals(store: Store, path: str, token: str | None, status: int, fragment: str) -> None:
    response = call(store, None, "POST", path, token, json={"inventory": INVENTORY})
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_heartbeat_assignments_reports_and_fencing(store: Store) -> None:
    beat = call(store, None, "POST", "/n1/heartbeat", "n1-token", json={"inventory": INVENTORY})
    assert beat.status_code == 200
    assert beat.json() == {"assignmentRevision": 0, "stop": [], "datasets": {}}
    with store.read() as session:
        node = session.scalars(select(Node).where(Node.name == "n1")).one()
    assert node.inventory == INVENTORY
    assert node.last_heartbeat_at is not None

    started = time.monotonic()  # nothing assigned yet: the long poll waits out `wait`
    idle = call(store, None, "GET", "/n1/assignments", "n1-token",
                params={"revision": 0, "wait": 0.5})  # fmt: skip
    assert time.monotonic() - started >= 0.4
    assert idle.json()["runs"] == []

    with store.write() as session:
        assert assign(session, grace=dt.timedelta(seconds=20)).bound == 1
    got = call(store, None, "GET", "/n1/assignments", "n1-token", params={"revision": 0})
    [run] = got.json()["runs"]
    assert (got.json()["assignmentRevision"], run["job"], run["gpus"]) == (1, "train", [0])
    assert run["spec"]["command"] == ["python", "-c", "print(1)"]

    path = f"/n1/runs/{run['id']}/status"
    assert call(store, None, "POST", path, "n1-token", json={"phase": "Running"}).status_code == 200
    assert call(store, None, "POST", path, "n2-token", json={"phase": "Failed"}).status_code == 403
    done = call(store, None, "POST", path, "n1-token", json={"phase": "Succeeded", "exitCode": 0})
    assert done.json() == {"stop": False}
    with store.read() as session:
        job = session.scalars(select(Job).where(Job.name == "train")).one()
        stored = session.get(Run, run["id"])
    assert job.phase == "Succeeded"
    assert stored is not None
    assert (stored.phase, stored.exit_code) == ("Succeeded", 0)
    assert stored.started_at is not None

    late = call(store, None, "POST", path, "n1-token", json={"phase": "Running"})
    assert (late.status_code, late.json()) == (409, {"stop": True})  # fenced
    stale = call(store, None, "POST", "/n1/heartbeat", "n1-token",
                 json={"inventory": INVENTORY, "runs": [run["id"], "unknown-run"]})  # fmt: skip
    assert stale.json()["stop"] == sorted([run["id"], "unknown-run"])


def test_node_rank_0_says_where_the_ranks_meet_and_its_siblings_hear_it(
    store: Store, repo: GitRepo, tmp_path: Path
) -> None:
    repo.write("nodes/n2.yaml", manifest_node("n2", "a100"))
    repo.write("jobs/train.yaml", manifest_job("train", 1) + "      nodes: 2\n")
    repo.commit("train on two nodes")
    assert Syncer(store, open_source(str(repo.root), state_dir=tmp_path)).sync().ok
    for node in ("n1", "n2"):
        call(
            store,
            None,
            "POST",
            f"/{node}/heartbeat",
            f"{node}-token",
            json={"inventory": INVENTORY},
        )
    with store.write() as session:
        assert assign(session, grace=dt.timedelta(seconds=20)).bound == 1
    seen = {n: call(store, None, "GET", f"/{n}/assignments", f"{n}-token",
                    params={"revision": 0}).json() for n in ("n1", "n2")}  # fmt: skip
    [zero], [one] = seen["n1"]["runs"], seen["n2"]["runs"]
    assert (zero["rank"], one["rank"], zero["nodes"], one["rendezvous"]) == (0, 1, 2, "")

    def report(node: str, run: str, rendezvous: str) -> httpx.Response:
        return call(store, None, "POST", f"/{node}/runs/{run}/status", f"{node}-token",
                    json={"phase": "Starting", "rendezvous": rendezvous})  # fmt: skip

    for bad in ("10.0.0.1:29400; rm -rf /", "10.0.0.1:²", "10.0.0.1:0", ":29400"):
        refused = report("n1", zero["id"], bad)
        assert refused.status_code == 400, bad
        assert "host:port" in refused.json()["error"]
    assert report("n2", one["id"], "10.0.0.2:1234").status_code == 200  # not rank 0: ignored
    assert report("n1", zero["id"], "10.0.0.1:29400").status_code == 200
    moved = call(store, None, "GET", "/n2/assignments", "n2-token",
                 params={"revision": seen["n2"]["assignmentRevision"], "wait": 0})  # fmt: skip
    [told] = moved.json()["runs"]
    assert told["rendezvous"] == "10.0.0.1:29400", "the sibling's node learns at once"
    assert report("n1", zero["id"], "10.0.0.1:29999").status_code == 200
    with store.read() as session:
        stored = session.get(Run, zero["id"])
        assert stored is not None
        assert stored.rendezvous == "10.0.0.1:29400", "the first endpoint stays"


def test_each_process_s_lines_are_read_apart_by_rank(store: Store) -> None:
    call(store, None, "POST", "/n1/heartbeat", "n1-token", json={"inventory": INVENTORY})
    with store.write() as session:
        assign(session, grace=dt.timedelta(seconds=20))
    with store.read() as session:
        run_id = session.scalars(select(Run.id)).one()
    lines = [[0, "launching 2 processes"], [22, "[rank0]: epoch 1"], [39, "[rank1]: epoch 1"],
             [56, "[rank12]: not a line of rank 1"]]  # fmt: skip
    shipped = call(store, None, "POST", f"/n1/runs/{run_id}/output", "n1-token",
                   json={"stream": "log", "lines": lines, "end": 90})  # fmt: skip
    assert shipped.status_code == 200

    async def read(params: dict[str, Any]) -> list[str]:
        transport = httpx.ASGITransport(app=create_app(store), client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            page = await client.get(f"/api/v1/runs/{run_id}/logs", params=params)
            return [line["text"] for line in page.json()["lines"]]

    assert anyio.run(read, {"rank": 1}) == ["launching 2 processes", "[rank1]: epoch 1"]
    assert len(anyio.run(read, {})) == 4, "without --rank: the whole log"
    with store.read() as session:
        stored = session.get(Run, run_id)
        assert stored is not None
        assert stored.ranks == [0, 1, 12], "the processes this node hosts"


def test_a_binding_wakes_a_waiting_long_poll(store: Store) -> None:
    call(store, None, "POST", "/n1/heartbeat", "n1-token", json={"inventory": INVENTORY})

    async def scenario() -> float:
        agents = AgentApi(store, recheck=30.0)  # only the wake-up can answer in time
        app = create_app(store, agents=agents)
        transport = httpx.ASGITransport(app=app, client=("10.0.0.9", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            result: dict[str, Any] = {}

            async def poll() -> None:
                response = await client.get(
                    "/api/v1/agent/nodes/n1/assignments",
                    params={"revision": 0, "wait": 20},
                    headers={"Authorization": "Bearer n1-token"},
                )
                result["runs"] = response.json()["runs"]
                result["at"] = time.monotonic()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(poll)
                await anyio.sleep(0.3)
                bound_at = time.monotonic()

                def bind() -> None:
                    with store.write() as session:
                        assign(session, grace=dt.timedelta(seconds=20))

                await anyio.to_thread.run_sync(bind)
                agents.assignments_moved()
            assert len(result["runs"]) == 1
            return float(result["at"] - bound_at)

    assert anyio.run(scenario) < 0.5


def test_shipped_output_wakes_a_reader_following_the_logs(store: Store) -> None:
    call(store, None, "POST", "/n1/heartbeat", "n1-token", json={"inventory": INVENTORY})
    with store.write() as session:
        assign(session, grace=dt.timedelta(seconds=20))
    with store.read() as session:
        run_id = session.scalars(select(Run.id)).one()

    async def scenario() -> float:
        agents = AgentApi(store, recheck=30.0)  # only the wake-up can answer in time
        transport = httpx.ASGITransport(app=create_app(store, agents=agents),
                                        client=("127.0.0.1", 5000))  # fmt: skip
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            result: dict[str, Any] = {}

            async def follow() -> None:
                response = await client.get(f"/api/v1/runs/{run_id}/logs",
                                            params={"after": -1, "wait": 20})  # fmt: skip
                result["lines"] = [line["text"] for line in response.json()["lines"]]
                result["at"] = time.monotonic()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(follow)
                await anyio.sleep(0.3)
                shipped_at = time.monotonic()
                response = await client.post(
                    f"/api/v1/agent/nodes/n1/runs/{run_id}/output",
                    json={"stream": "log", "lines": [[0, "epoch 1"]], "end": 8},
                    headers={"Authorization": "Bearer n1-token"},
                )  # fmt: skip
                assert response.status_code == 200, response.text
            assert result["lines"] == ["epoch 1"]
            return float(result["at"] - shipped_at)

    assert anyio.run(scenario) < 0.5


def test_a_long_poll_with_a_wait_that_is_not_finite_seconds_is_refused(store: Store) -> None:
    # (min(nan, 30) is nan: such a request used to poll the database forever)
    answer = call(store, None, "GET", "/n1/assignments", "n1-token", params={"wait": "nan"})
    assert answer.status_code == 400
    assert (
        answer.json()["error"] == "query parameter 'wait' must be seconds from 0 to 60, got 'nan'"
    )

    async def logs() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(store), client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            return await client.get("/api/v1/runs/any/logs", params={"after": 1, "wait": "inf"})

    answer = anyio.run(logs)
    assert answer.status_code == 400
    assert "'wait' must be seconds from 0 to 30, got 'inf'" in answer.json()["error"]


def test_a_revoked_token_is_refused_once_the_token_table_reloads(store: Store) -> None:
    agents = AgentApi(store)
    beat = {"json": {"inventory": INVENTORY}}
    assert call(store, agents, "POST", "/n1/heartbeat", "n1-token", **beat).status_code == 200
    with store.write() as session:
        row = session.scalars(select(Token).where(Token.node == "n1")).one()
        row.revoked_at = dt.datetime.now(dt.UTC)
    # Within TOKEN_SECONDS the cached table still admits it; past them, it is refused.
    assert call(store, agents, "POST", "/n1/heartbeat", "n1-token", **beat).status_code == 200
    agents.identities.reload_after = 0.0
    refused = call(store, agents, "POST", "/n1/heartbeat", "n1-token", **beat)
    assert refused.status_code == 401
    assert "invalid or revoked" in refused.json()["error"]


def test_a_token_issued_after_the_table_loaded_works_on_its_first_request(
    store: Store,
) -> None:
    agents = AgentApi(store)
    beat = {"json": {"inventory": INVENTORY}}
    assert call(store, agents, "POST", "/n1/heartbeat", "n1-token", **beat).status_code == 200
    for number in range(20):  # the table is loaded and young: each new token is looked up
        with store.write() as session:
            session.add(Token(role="node", node="n1", digest=token_digest(f"new-{number}"),
                              prefix=f"new-{number}"))  # fmt: skip
        answer = call(store, agents, "POST", "/n1/heartbeat", f"new-{number}", **beat)
        assert answer.status_code == 200, answer.text


def test_a_flood_of_bad_tokens_costs_a_bounded_number_of_reads(store: Store) -> None:
    identities = Identities(store)

    async def flood(digests: list[str], identities: Identities = identities) -> list[object]:
        found: list[object] = []

        async def one(digest: str) -> None:
            found.append(await identities.lookup(digest))

        async with anyio.create_task_group() as tasks:
            for digest in digests:
                tasks.start_soon(one, digest)
        return found

    assert anyio.run(flood, [token_digest("n1-token")]) == [("node", "n1")]
    before = identities.reads
    distinct = [token_digest(f"bad-{n}") for n in range(2000)]
    assert anyio.run(flood, distinct) == [None] * 2000
    # all 2,000 wait on one lookup at a time: a few batched queries, not 2,000
    assert identities.reads - before <= 2 * (2000 // heartbeats.LOOKUP_BATCH + 1)
    before = identities.reads
    assert anyio.run(flood, distinct[:10] * 300) == [None] * 3000  # misses are remembered
    assert identities.reads == before
    small = Identities(store, absent=100)  # and only so many of them
    anyio.run(flood, distinct[:500], small)
    assert len(small._absent) == 100


def test_heartbeats_written_behind_land_in_one_flush(store: Store) -> None:
    agents = AgentApi(store)

    async def go() -> None:
        app = create_app(store, agents=agents)
        transport = httpx.ASGITransport(app=app, client=("10.0.0.9", 5000))
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(agents.flush_heartbeats)
            await anyio.sleep(0)
            async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
                response = await client.post(
                    "/api/v1/agent/nodes/n1/heartbeat", json={"inventory": INVENTORY},
                    headers={"Authorization": "Bearer n1-token"},
                )  # fmt: skip
                assert response.status_code == 200
            with store.read() as session:  # not yet: buffered
                assert session.scalars(select(Node).where(Node.name == "n1")).one().inventory == {}
            await anyio.sleep(FLUSH_SECONDS * 3)
            tasks.cancel_scope.cancel()
        with store.read() as session:
            node = session.scalars(select(Node).where(Node.name == "n1")).one()
            assert node.inventory == INVENTORY
            assert node.last_heartbeat_at is not None

    anyio.run(go)


def test_reads_that_fill_their_share_never_hold_up_heartbeats_or_healthz(store: Store) -> None:
    # 200 listings once filled the one shared thread pool, and a heartbeating node went
    # NotReady behind them. Reads have their own share now: with every read thread
    # busy, a heartbeat (and its write) and /healthz still answer at once.
    async def scenario() -> tuple[float, float, bool]:
        capacity = Capacity()
        agents = AgentApi(store, capacity=capacity)
        transport = httpx.ASGITransport(app=create_app(store, agents=agents),
                                        client=("127.0.0.1", 5000))  # fmt: skip
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            held = [object() for _ in range(int(capacity.reads.total_tokens))]
            for borrower in held:  # every read thread busy
                await capacity.reads.acquire_on_behalf_of(borrower)
            listed: list[int] = []

            async def listing() -> None:
                listed.append((await client.get("/api/v1/jobs")).status_code)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(listing)
                started = time.monotonic()
                beat = await client.post(
                    "/api/v1/agent/nodes/n1/heartbeat", json={"inventory": INVENTORY},
                    headers={"Authorization": "Bearer n1-token"},
                )  # fmt: skip
                beat_took = time.monotonic() - started
                assert beat.status_code == 200, beat.text
                started = time.monotonic()
                health = await client.get("/healthz")
                health_took = time.monotonic() - started
                assert health.status_code == 200
                waiting = listed == []  # the listing waits for its share
                for borrower in held:
                    capacity.reads.release_on_behalf_of(borrower)
            assert listed == [200]
            return beat_took, health_took, waiting

    beat_took, health_took, waiting = anyio.run(scenario)
    assert waiting
    assert beat_took < 1.0
    assert health_took < 1.0
    with store.read() as session:
        node = session.scalars(select(Node).where(Node.name == "n1")).one()
    assert node.last_heartbeat_at is not None  # written, not queued behind the reads


@pytest.mark.parametrize("limit", [99, 100, 101, 250, 1000])
def test_list_pages_read_in_batches_are_whole_and_exact(
    store: Store, repo: GitRepo, tmp_path: Path, limit: int
) -> None:
    for i in range(249):  # with the fixture's job: 250
        repo.write(f"jobs/j{i:03}.yaml", manifest_job(f"j{i:03}", 1))
    repo.commit("many")
    assert Syncer(store, open_source(str(repo.root), state_dir=tmp_path)).sync().ok

    async def pages() -> list[list[str]]:
        transport = httpx.ASGITransport(app=create_app(store), client=("127.0.0.1", 5000))
        out: list[list[str]] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            cursor = ""
            while True:
                params = {"limit": limit, "continue": cursor}
                page = (await client.get("/api/v1/jobs", params=params)).json()
                out.append([item["metadata"]["name"] for item in page["items"]])
                cursor = page["continue"]
                if cursor is None:
                    return out

    found = anyio.run(pages)
    names = [name for page in found for name in page]
    assert sorted(names) == sorted({*(f"j{i:03}" for i in range(249)), "train"})
    assert len(names) == 250  # none twice
    assert [len(p) for p in found[:-1]] == [limit] * (len(found) - 1)
    assert 0 < len(found[-1]) <= limit
