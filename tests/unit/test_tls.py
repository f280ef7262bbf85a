"""When a token may go in clear text, and what a refused one says (`mlsm/tls.py`);
the TLS failures themselves are tested against a real controller in
tests/integration/test_tls.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from mlsm.agent.client import ControllerClient, Unreachable
from mlsm.errors import UserError
from mlsm.tls import is_loopback, refuse_clear_text


@pytest.mark.parametrize(
    ("url", "insecure", "refused"),
    [
        ("http://127.0.0.1:8470", False, False),
        ("http://127.9.9.9:8470", False, False),
        ("http://[::1]:8470", False, False),
        ("http://localhost:8470", False, False),
        ("https://ctl.lab:8470", False, False),
        ("http://ctl.lab:8470", False, True),
        ("http://10.0.0.5:8470", False, True),
        ("http://[2001:db8::1]:8470", False, True),
        ("http://ctl.lab:8470", True, False),
    ],
)
def test_a_token_goes_in_clear_text_only_to_this_machine_or_when_told(
    url: str, insecure: bool, refused: bool
) -> None:
    if refused:
        with pytest.raises(UserError, match="--insecure if this network is trusted"):
            refuse_clear_text(url, insecure=insecure)
    else:
        refuse_clear_text(url, insecure=insecure)


def test_loopback_names() -> None:
    assert is_loopback("localhost")
    assert is_loopback("[::1]")
    assert not is_loopback("localhost.lab.org")


@pytest.fixture
def not_a_controller() -> Iterator[str]:
    """Some other web server, answering 404 to everything."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_agent_pointed_at_another_web_server_is_told_so(not_a_controller: str) -> None:
    async def beat() -> None:
        client = ControllerClient(not_a_controller, "gpu-1", "token")
        try:
            await client.heartbeat({}, [])
        finally:
            await client.aclose()

    with pytest.raises(Unreachable, match="is --controller the mlsm controller's URL"):
        anyio.run(beat)
