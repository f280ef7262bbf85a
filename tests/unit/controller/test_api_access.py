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
