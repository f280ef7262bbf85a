"""Who may read: the one rule for the read API and the status site.

Reads need no token from loopback; from elsewhere (or from anywhere, with
`require_token`) a read or admin token, sent as `Authorization: Bearer <token>` (the
CLI) or with HTTP Basic auth, any user name and the token as password (a browser asks
for it; so the site needs no login form and no write route). Paths that check their
own credentials (the agent API, the webhook) or that must answer probes (`/healthz`,
`/readyz`) pass through.

A plain ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and a stream per
request, which the agents' heartbeats feel). Used by the controller's app
(`mlsm.controller.api`) and the standalone site (`mlsm.web.site`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mlsm.store import Store
from mlsm.store.tokens import token_role

__all__ = ["ReadAccess", "Reader", "bearer", "is_loopback", "presented_token"]

Reader = Callable[..., Awaitable[Any]]
"""Runs a blocking read in a worker thread: `await reads(function, *args)`."""

READ_ROLES = ("read", "admin")


def bearer(request: Request) -> str:
    """The request's `Authorization: Bearer` token, or ''."""
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""


def presented_token(request: Request) -> str:
    """The token a request presents: a Bearer token, or the password of HTTP Basic
    auth (the user name is ignored); '' when neither is there or it is malformed."""
    token = bearer(request)
    if token:
        return token
    header = request.headers.get("authorization", "")
    if not header.startswith("Basic "):
        return ""
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2].strip()


def is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReadAccess:
    def __init__(
        self,
        app: ASGIApp,
        *,
        store: Store,
        reads: Reader,
        require_token: bool = False,
        open_paths: Iterable[str] = ("/healthz", "/readyz"),
        open_prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.store = store
        self.reads = reads
        self.require_token = require_token
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        if (
            path in self.open_paths
            or path.startswith(self.open_prefixes)
            or (not self.require_token and is_loopback(request))
        ):
            await self.app(scope, receive, send)
            return
        token = presented_token(request)
        if not token:
            where = "for every read here" if self.require_token else "from outside this machine"
            response = refusal(
                path,
                f"a read token is needed {where}: Authorization: Bearer <token>, or "
                "HTTP Basic auth with the token as password "
                "(mlsm-controller token issue --role read)",
            )
        elif await self.reads(token_role, self.store, token) not in READ_ROLES:
            response = refusal(path, "invalid or revoked token")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def refusal(path: str, message: str) -> Response:
    """A 401: JSON for the API, and for the site plain text with the Basic challenge
    that makes a browser ask for the token."""
    if path.startswith("/api/"):
        return JSONResponse({"error": message, "status": 401}, status_code=401)
    return PlainTextResponse(
        f"401 Unauthorized: {message}\n",
        status_code=401,
        headers={"www-authenticate": 'Basic realm="mlsm", charset="UTF-8"'},
    )
