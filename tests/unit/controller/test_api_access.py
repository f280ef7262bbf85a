"""Who may read the API: anyone from loopback, a read or admin token from elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from mlsm.controller.api import create_app
from mlsm.store import Store, Token
from mlsm.store.tokens import token_digest
from mlsm.store.types import utcnow


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'db'}")
    store.migrate()
    with store.write() as session:
        for role, secret in (("read", "r-token"), ("node", "n-token"), ("admin", "a-token")):
            session.add(Token(role=role, digest=token_digest(secret), prefix=secret[:12]))
        session.add(Token(role="read", digest=token_digest("old"), prefix="old",
                          revoked_at=utcnow()))  # fmt: skip
    yield store
    store.dispose()


def status(store: Store, address: str, token: str | None) -> int:
    async def call() -> int:
        transport = httpx.ASGITransport(app=create_app(store), client=(address, 40000))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            return (await client.get("/api/v1/jobs", headers=headers)).status_code

    return anyio.run(call)


@pytest.mark.parametrize(
    ("address", "token", "expected"),
    [
        pytest.param("127.0.0.1", None, 200, id="loopback-needs-nothing"),
        pytest.param("::1", None, 200, id="ipv6-loopback"),
        pytest.param("10.0.0.7", None, 401, id="remote-without-token"),
        pytest.param("10.0.0.7", "wrong", 401, id="remote-bad-token"),
        pytest.param("10.0.0.7", "old", 401, id="remote-revoked-token"),
        pytest.param("10.0.0.7", "n-token", 401, id="remote-node-token-cannot-read"),
        pytest.param("10.0.0.7", "r-token", 200, id="remote-read-token"),
        pytest.param("10.0.0.7", "a-token", 200, id="remote-admin-token"),
    ],
)
def test_read_access(store: Store, address: str, token: str | None, expected: int) -> None:
    assert status(store, address, token) == expected


def test_tokens_are_stored_as_digests_only(store: Store) -> None:
    with store.read() as session:
        digests = [t.digest for t in session.query(Token)]
    assert token_digest("r-token") in digests
    assert all("token" not in d for d in digests)


def post_plan(store: Store, address: str, token: str | None, body: object) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(store), client=(address, 40000))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            return await client.post("/api/v1/plan", json=body, headers=headers)

    return anyio.run(call)


JOB = {
    "apiVersion": "mlsm/v1",
    "kind": "TrainingJob",
    "metadata": {"name": "j"},
    "spec": {"runtime": {"venv": {"python": "3.11"}}, "command": ["true"]},
}


@pytest.mark.parametrize(
    ("body", "said"),
    [
        pytest.param([], "the body must be JSON: {\"jobs\"", id="not-an-object"),
        pytest.param({"jobs": "x"}, "the body must be JSON", id="jobs-not-a-list"),
        pytest.param({"jobs": [], "removed": [1]}, "the body must be JSON", id="removed-not-names"),
        pytest.param({"jobs": [{"owner": "a"}]}, "jobs[0] is not a valid", id="no-manifest"),
        pytest.param({"jobs": [{"manifest": {"kind": 1}}]}, "jobs[0] is not a valid", id="bad-job"),
    ],
)  # fmt: skip
def test_a_plan_with_a_bad_body_is_a_400_that_says_what_it_wants(
    store: Store, body: object, said: str
) -> None:
    answer = post_plan(store, "127.0.0.1", None, body)
    assert answer.status_code == 400
    assert said in answer.json()["error"]


def test_a_plan_is_a_read_a_read_token_may_ask_from_afar(store: Store) -> None:
    assert post_plan(store, "10.0.0.7", None, {"jobs": [{"manifest": JOB}]}).status_code == 401
    answer = post_plan(store, "10.0.0.7", "r-token", {"jobs": [{"manifest": JOB}]})
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["waiting"] == {"j": "0/0 nodes available"}
    assert (found["queue"], found["queued"]) == ({"j": 1}, 1)
