"""`POST /api/v1/jobs/{name}/predict` relayed to the node's agent over the ASGI app, on
SQLite and PostgreSQL: the request reaches the node's long poll at once, only that
node may take or answer it, the answer comes back to the caller and the row goes; a
node that is down, a job with no checkpoint, a command job, a bad body, an agent
that never answers and an agent's error are each said plainly."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import func, select

from mlsm.controller.agents import AgentApi
from mlsm.controller.api import create_app
from mlsm.store import Job, Node, Prediction, Run, Store, Token
from mlsm.store.tokens import token_digest
from mlsm.store.types import utcnow

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()
BODY = {"images": [{"name": "seven.png", "data": PNG}, {"name": "one.png", "data": PNG}],
        "topK": 2}  # fmt: skip


def _object(model: type[Any], name: str, spec: dict[str, Any]) -> Any:
    manifest = {"apiVersion": "mlsm/v1", "kind": model.kind, "metadata": {"name": name},
                "spec": spec}  # fmt: skip
    return model(uid=str(uuid.uuid4()), name=name, manifest=manifest, spec_hash=name)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.open(database_url)
    store.migrate()
    now = utcnow()
    with store.write() as session:
        for name in ("n1", "n2"):
            node = _object(Node, name, {})
            node.last_heartbeat_at = now
            session.add(node)
            session.add(Token(role="node", node=name, digest=token_digest(f"{name}-token"),
                              prefix=name))  # fmt: skip
        trainer = {"trainer": {"model": "builtin:resnet-tiny"}, "dataset": "digits"}
        for name, spec in (("digits-job", trainer), ("fresh-job", trainer),
                           ("command-job", {"command": ["python", "train.py"]})):  # fmt: skip
            session.add(_object(Job, name, spec))
        session.flush()
        job = session.scalars(select(Job).where(Job.name == "digits-job")).one()
        session.add(Run(id="run-old", job_id=job.id, attempt=1, node="n2",
                        output_dir="/srv/mlsm/jobs/digits-job/output"))  # fmt: skip
        session.add(Run(id="run-new", job_id=job.id, attempt=2, node="n1",
                        output_dir="/srv/mlsm/jobs/digits-job/output"))  # fmt: skip
    yield store
    store.dispose()


async def _client(app: Any, token: str | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=transport, base_url="http://c", headers=headers)


def test_a_prediction_goes_to_the_node_holding_the_checkpoint_and_back(store: Store) -> None:
    agents = AgentApi(store, recheck=0.05)
    app = create_app(store, agents=agents)
    seen: dict[str, Any] = {}

    async def agent() -> None:
        async with await _client(app, "n1-token") as n1, await _client(app, "n2-token") as n2:
            first = (await n1.get("/api/v1/agent/nodes/n1/assignments",
                                  params={"revision": -1, "wait": 0})).json()  # fmt: skip
            revision = first["assignmentRevision"]
            while True:  # the long poll answers as soon as the request is queued
                polled = await n1.get(
                    "/api/v1/agent/nodes/n1/assignments", params={"revision": revision, "wait": 10}
                )
                answer = polled.json()
                revision = answer["assignmentRevision"]
                if answer["predictions"]:
                    break
            [entry] = answer["predictions"]
            assert entry["job"] == "digits-job"
            path = f"/api/v1/agent/nodes/n1/predictions/{entry['id']}"
            stolen = await n2.get(f"/api/v1/agent/nodes/n2/predictions/{entry['id']}")
            seen["stolen"] = (stolen.status_code, stolen.json()["error"])
            seen["wrong token"] = (await n2.get(path)).status_code
            taken = (await n1.get(path)).json()
            seen["taken"] = taken
            labels = [[["7", 0.9], ["1", 0.05]], [["1", 0.8], ["7", 0.1]]]
            bad = await n1.post(path, json={"labels": labels[:1]})
            seen["short answer"] = (bad.status_code, bad.json()["error"])
            done = await n1.post(path, json={"checkpoint": "best", "labels": labels})
            assert done.status_code == 200, done.text

    async def caller() -> httpx.Response:
        async with await _client(app) as client:
            return await client.post("/api/v1/jobs/digits-job/predict", json=BODY, timeout=30)

    async def both() -> httpx.Response:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(agent)
            with anyio.fail_after(20):
                response = await caller()
        return response

    response = anyio.run(both)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "job": "digits-job",
        "run": "run-new",  # the latest attempt's, on n1 (not attempt 1's on n2)
        "node": "n1",
        "checkpoint": "best",
        "predictions": [
            {"image": "seven.png", "labels": [["7", 0.9], ["1", 0.05]]},
            {"image": "one.png", "labels": [["1", 0.8], ["7", 0.1]]},
        ],
    }
    assert seen["stolen"] == (404, f"no prediction request {seen['taken']['id']} for node n2")
    assert seen["wrong token"] == 403
    assert seen["taken"]["job"] == "digits-job"
    assert seen["taken"]["topK"] == 2
    assert [i["name"] for i in seen["taken"]["images"]] == ["seven.png", "one.png"]
    assert seen["short answer"] == (400, "labels must be 2 lists of [label, probability] pairs")
    with store.read() as session:  # the caller had its answer: the images are gone
        assert session.scalar(select(func.count()).select_from(Prediction)) == 0


def _predict(store: Store, job: str, body: Any, **params: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with await _client(create_app(store, agents=AgentApi(store, recheck=0.05))) as c:
            return await c.post(f"/api/v1/jobs/{job}/predict", json=body, params=params)

    return anyio.run(go)


def test_a_node_that_is_down_is_said_at_once_with_what_to_do(store: Store) -> None:
    with store.write() as session:
        node = session.scalars(select(Node).where(Node.name == "n1")).one()
        node.last_heartbeat_at = utcnow() - dt.timedelta(minutes=7)
    response = _predict(store, "digits-job", BODY)
    assert response.status_code == 503
    assert response.json()["error"] == (
        "job digits-job's checkpoints are on node n1, whose agent is not answering (its "
        "last heartbeat was 7 min ago). Start mlsm-agent on n1, or copy "
        "n1:/srv/mlsm/jobs/digits-job/output/checkpoints/best to this machine and run "
        "mlsmctl predict job digits-job --checkpoint DIR IMAGE..."
    )
    with store.read() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 0


@pytest.mark.parametrize(
    ("job", "body", "status", "message"),
    [
        pytest.param("nope", BODY, 404, "no job nope", id="no-job"),
        pytest.param("fresh-job", BODY, 409, "job fresh-job has no run that wrote checkpoints "
                     "yet (phase Pending); the trainer saves one after its first epoch",
                     id="no-run"),
        pytest.param("command-job", BODY, 409, "job command-job runs its own code (no "
                     "spec.trainer)", id="command-job"),
        pytest.param("digits-job", {"images": []}, 400, "the body must be JSON: ", id="no-images"),
        pytest.param("digits-job", {"images": [{"name": "x", "data": "%%%"}]}, 400,
                     "images[0] (x): data is not base64", id="not-base64"),
        pytest.param("digits-job", {**BODY, "topK": 0}, 400,
                     "topK must be a whole number from 1 to 100", id="top-k"),
        pytest.param("digits-job", {"images": [{"name": "x", "data": PNG}] * 65}, 400,
                     "65 images in one request; at most 64", id="too-many"),
    ],
)  # fmt: skip
def test_refusals_name_what_is_wrong(
    store: Store, job: str, body: Any, status: int, message: str
) -> None:
    response = _predict(store, job, body)
    assert response.status_code == status
    assert response.json()["error"].startswith(message)


def test_an_agent_that_never_answers_and_one_that_fails_are_said(store: Store) -> None:
    late = _predict(store, "digits-job", BODY, wait=0.3)
    assert late.status_code == 504
    assert late.json()["error"].startswith("node n1's agent did not take the request in 0.3 s")

    agents = AgentApi(store, recheck=0.05)
    app = create_app(store, agents=agents)

    async def failing_agent() -> None:
        async with await _client(app, "n1-token") as n1:
            while True:
                with store.read() as session:
                    queued = session.scalars(select(Prediction.id)).first()
                if queued:
                    break
                await anyio.sleep(0.02)
            said = {"error": "one.png: cannot read the image", "status": 400}
            await n1.post(f"/api/v1/agent/nodes/n1/predictions/{queued}", json=said)

    async def both() -> httpx.Response:
        async with anyio.create_task_group() as tasks, await _client(app) as client:
            tasks.start_soon(failing_agent)
            return await client.post("/api/v1/jobs/digits-job/predict", json=BODY, timeout=30)

    failed = anyio.run(both)
    assert (failed.status_code, failed.json()["error"]) == (
        400,
        "node n1: one.png: cannot read the image",
    )


def test_the_caller_and_the_agent_may_use_different_controllers(store: Store) -> None:
    # two controllers on one database: the request is a row, and each polls it
    asked = create_app(store, agents=AgentApi(store, recheck=0.05))
    polled = create_app(store, agents=AgentApi(store, recheck=0.05))

    async def agent() -> None:
        async with await _client(polled, "n1-token") as n1:
            path = "/api/v1/agent/nodes/n1/assignments"
            revision = (await n1.get(path, params={"revision": -1, "wait": 0})).json()
            revision = revision["assignmentRevision"]
            while True:
                answer = (await n1.get(path, params={"revision": revision, "wait": 10})).json()
                revision = answer["assignmentRevision"]
                if answer["predictions"]:
                    break
            queued = answer["predictions"][0]["id"]
            await n1.get(f"/api/v1/agent/nodes/n1/predictions/{queued}")
            labels = {"labels": [[["7", 1.0]], [["1", 1.0]]]}
            await n1.post(f"/api/v1/agent/nodes/n1/predictions/{queued}", json=labels)

    async def both() -> httpx.Response:
        async with anyio.create_task_group() as tasks, await _client(asked) as client:
            tasks.start_soon(agent)
            with anyio.fail_after(20):
                return await client.post("/api/v1/jobs/digits-job/predict", json=BODY)

    response = anyio.run(both)
    assert response.status_code == 200, response.text
    assert [p["labels"][0][0] for p in response.json()["predictions"]] == ["7", "1"]
