"""The controller's HTTP server: uvicorn, with what it lacks for a server that faces
a campus network.

- **A read deadline.** uvicorn times out a connection only while it idles between
  requests; one that sends a byte a second, or nothing, holds its socket for as long
  as it likes. Here each request's headers and body must arrive within
  `read_timeout` seconds of its first byte (and a new connection must start a request
  within it), else the connection is closed, with a 408 when no handler has started.
- **Bounded headers.** At most `MAX_HEADER_BYTES` before the headers end (431).
- **A connection limit.** uvicorn's `limit_concurrency`: past it a request gets 503,
  and the process's open-file limit is raised to fit it.
- **Proxy headers off** unless the operator names the proxies: otherwise uvicorn
  trusts `X-Forwarded-For` from loopback (or from anyone, with FORWARDED_ALLOW_IPS=*
  in the environment), and a tunnel on the controller's host would make every remote
  caller a token-free local reader.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlsm.tls import check_server_files

__all__ = ["MAX_HEADER_BYTES", "server_config"]

MAX_HEADER_BYTES = 64 * 1024

log = logging.getLogger("mlsm.controller")


class _BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on reading each request."""

    read_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_body = False
        self._header_bytes = 0
        """Bytes received since the last request's body ended, until headers end."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            self._header_bytes += len(data)
        super().data_received(data)
        if not self._in_body and self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(b"431 Request Header Fields Too Large", b"headers over 64 KiB\n")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_body, self._header_bytes = False, 0
        super().on_message_complete()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # no handler has started
            self._refuse(b"408 Request Timeout", b"the request was not sent in time\n")
        else:  # its handler sees the client disconnect while it reads the body
            self.transport.close()

    def _refuse(self, status: bytes, text: bytes) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text
        )
        self.transport.close()


def _protocol(read_timeout: float) -> type[asyncio.Protocol]:
    return type("BoundedHttp", (_BoundedHttp,), {"read_timeout": read_timeout})


def _fit_open_files(connections: int) -> None:
    """Raise the soft open-file limit so that `connections` sockets fit, with room
    for the database, git and log files; warn when the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning(
                "open files are limited to %d: fewer than --max-connections %d need",
                target,
                connections,
            )


def server_config(
    app: Any,
    *,
    host: str,
    port: int,
    read_timeout: float = 10.0,
    max_connections: int = 1000,
    forwarded_allow_ips: str = "",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> uvicorn.Config:
    """uvicorn's configuration; HTTPS with uvicorn's own TLS when given a certificate
    and its key (checked first: `tls.check_server_files`)."""
    _fit_open_files(max_connections)
    if tls_cert is not None and tls_key is not None:
        check_server_files(tls_cert, tls_key)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_protocol(read_timeout),
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=2,  # long polls end at once rather than in 30 s
        limit_concurrency=max_connections,
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or "127.0.0.1",
        ssl_certfile=str(tls_cert) if tls_cert is not None else None,
        ssl_keyfile=str(tls_key) if tls_key is not None else None,
    )
