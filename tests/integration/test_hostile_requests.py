"""Hostile and careless clients against the real server (uvicorn on loopback, with
`serving.server_config`): slow or silent connections, huge headers and bodies,
bodies from callers with no token, long polls whose client left, forwarded
addresses, and a host where every read needs a token."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from mlsm.controller.agents import AgentApi
from mlsm.controller.api import create_app
from mlsm.controller.scheduling import assign
from mlsm.controller.serving import server_config
from mlsm.controller.sources import open_source
from mlsm.controller.syncing import Syncer
from mlsm.store import Run, Store, Token
from mlsm.store.tokens import token_digest
from tests.databases import sqlite_only
from tests.integration.conftest import GitRepo, free_port, job, node

pytestmark = sqlite_only  # the HTTP layer is tested here, not the database

SECRET = "hook-secret"


class Served:
    """A real uvicorn server for one app, in a thread of this process (so that a
    test can see the server's own request tasks)."""

    def __init__(self, server: uvicorn.Server, port: int) -> None:
        self.server, self.port = server, port
        self.url = f"http://127.0.0.1:{port}"

    def tasks(self) -> int:
        return len(self.server.server_state.tasks)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@pytest.fixture
def store(database_url: str, repo: GitRepo, tmp_path: Path) -> Iterator[Store]:
    store = Store.open(database_url)
    store.migrate()
    repo.write("nodes/n1.yaml", node("n1"))
    repo.write("jobs/train.yaml", job("train"))
    repo.commit()
    assert Syncer(store, open_source(str(repo.root), state_dir=tmp_path)).sync().ok
    with store.write() as session:
        session.add(Token(role="node", node="n1", digest=token_digest("n1-token"), prefix="n1"))
        session.add(Token(role="read", digest=token_digest("reader"), prefix="reader"))
    yield store
    store.dispose()


@pytest.fixture
def serve(store: Store) -> Iterator[Callable[..., Served]]:
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def _serve(**options: Any) -> Served:
        port = free_port()
        require_token = options.pop("require_token", False)
        app = create_app(
            store, agents=AgentApi(store, recheck=0.05), webhook_secret=SECRET,
            require_token=require_token,
        )  # fmt: skip
        server = uvicorn.Server(server_config(app, host="127.0.0.1", port=port, **options))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        running.append((server, thread))
        return Served(server, port)

    yield _serve
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


def _answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sends until it closes the connection (or the timeout)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def test_a_client_sending_a_byte_a_second_is_cut_off_at_the_read_timeout(
    serve: Callable[..., Served],
) -> None:
    served = serve(read_timeout=1.0)
    with served.connect() as sock:
        started = time.monotonic()
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 0.9 < time.monotonic() - started < 3.0


def test_a_connection_that_sends_nothing_is_closed(serve: Callable[..., Served]) -> None:
    served = serve(read_timeout=0.5)
    with served.connect() as sock:
        started = time.monotonic()
        assert _answer(sock).startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 2.0


def test_headers_past_64_kib_are_refused(serve: Callable[..., Served]) -> None:
    served = serve()
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(200):
                sock.sendall(b"X-Pad: " + b"p" * 1000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _answer(sock).startswith(b"HTTP/1.1 431 ")


def test_a_body_without_a_token_is_refused_before_it_is_read(
    serve: Callable[..., Served],
) -> None:
    # The body is declared 20 MB and never sent: an answer at all means it was not awaited.
    served = serve()
    for path in ("/api/v1/agent/nodes/n1/heartbeat", "/api/v1/agent/nodes/n1/runs/r/status",
                 "/api/v1/agent/nodes/n1/runs/r/output", "/api/v1/hooks/git"):  # fmt: skip
        with served.connect() as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {20 << 20}\r\n\r\n{{".encode()
            )
            answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 401 "), (path, answer[:200])
        assert b"connection: close" in answer.lower()


def test_bodies_past_their_route_cap_get_413(serve: Callable[..., Served]) -> None:
    served = serve()
    auth = {"Authorization": "Bearer n1-token"}
    with httpx.Client(base_url=served.url, timeout=10) as client:
        declared = client.post(
            "/api/v1/agent/nodes/n1/heartbeat",
            content=b"{" + b" " * (9 << 20) + b"}", headers=auth,
        )  # fmt: skip
        assert declared.status_code == 413
        assert "over its limit of 8 MiB" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while read
            yield b'{"inventory": {"pad": "'
            for _ in range(10):
                yield b"x" * (1 << 20)
            yield b'"}}'

        chunked = client.post("/api/v1/agent/nodes/n1/heartbeat", content=chunks(), headers=auth)
        assert chunked.status_code == 413

        body = b'{"ref": "refs/heads/main", "pad": "' + b"x" * (2 << 20) + b'"}'
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        hook = client.post("/api/v1/hooks/git", content=body,
                           headers={"X-Hub-Signature-256": signature})  # fmt: skip
        assert hook.status_code == 413
        assert "over its limit of 1 MiB" in hook.json()["error"]

        fine = client.post("/api/v1/agent/nodes/n1/heartbeat", json={"inventory": {}},
                           headers=auth)  # fmt: skip
        assert fine.status_code == 200


def test_a_log_long_poll_ends_when_its_client_leaves(
    serve: Callable[..., Served], store: Store
) -> None:
    served = serve()
    inventory = {
        "cpus": 8,
        "memory": 32 << 30,
        "runtimes": ["venv"],
        "gpus": [{"index": 0, "uuid": "GPU-0"}],
    }
    beat = httpx.post(
        served.url + "/api/v1/agent/nodes/n1/heartbeat",
        json={"inventory": inventory},
        headers={"Authorization": "Bearer n1-token"},
    )
    assert beat.status_code == 200
    with store.write() as session:
        assert assign(session, grace=dt.timedelta(days=1)).bound == 1
    with store.read() as session:
        run_id = session.scalars(select(Run.id)).one()
    for path in (f"/api/v1/runs/{run_id}/logs?after=100&wait=30",
                 "/api/v1/agent/nodes/n1/assignments?revision=1&wait=60"):  # fmt: skip
        with served.connect() as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer n1-token\r\n\r\n".encode()
            )
            deadline = time.monotonic() + 5
            while served.tasks() == 0:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(0.3)
            assert served.tasks() == 1, path  # still waiting for lines to come
        left = time.monotonic()  # the socket is closed: its poll must end now
        while served.tasks():
            assert time.monotonic() - left < 1.0, f"{path} kept polling after its client left"
            time.sleep(0.01)


def test_a_forwarded_address_is_believed_only_from_a_named_proxy(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # uvicorn's own switch: ignored here
    remote = {"X-Forwarded-For": "203.0.113.7"}
    plain = serve()
    assert httpx.get(plain.url + "/api/v1/jobs", headers=remote).status_code == 200  # socket
    proxied = serve(forwarded_allow_ips="127.0.0.1")
    assert httpx.get(proxied.url + "/api/v1/jobs", headers=remote).status_code == 401
    assert httpx.get(proxied.url + "/api/v1/jobs").status_code == 200


def test_with_require_token_a_read_from_this_machine_needs_one(
    serve: Callable[..., Served],
) -> None:
    served = serve(require_token=True)
    refused = httpx.get(served.url + "/api/v1/jobs")
    assert refused.status_code == 401
    assert "a read token is needed for every read here" in refused.json()["error"]
    read = httpx.get(served.url + "/api/v1/jobs", headers={"Authorization": "Bearer reader"})
    assert read.status_code == 200
    assert httpx.get(served.url + "/healthz").status_code == 200
