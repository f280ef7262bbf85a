"""What a request brings in, read within bounds, and the one error every route raises.

- Numeric query parameters are parsed once: finite, within a range, or a 400 that
  names the range (`seconds`, `whole`).
- A body is read only after the caller is authenticated (each route checks its token
  from the headers first), and never past the route's cap: a `Content-Length` over
  it is refused before a byte is read, and a chunked body is cut off at the cap, with
  413 either way (`read_body`, `read_json`). A large JSON body is parsed in a worker
  thread, so that parsing it never stalls the event loop's heartbeats.
- A long poll ends when its client goes away (`unless_disconnected`): nothing keeps
  reading the database for a caller who has left.

Used by the read API (`api.py`), the agent API (`agents.py`) and the webhook.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from mlsm.errors import HttpError

__all__ = [
    "AGENT_BODY",
    "APPLY_BODY",
    "WEBHOOK_BODY",
    "HttpError",
    "read_body",
    "read_json",
    "seconds",
    "unless_disconnected",
    "whole",
]

MiB = 1 << 20
AGENT_BODY = 8 * MiB
"""An agent's heartbeat, report or output batch: a batch is at most 1 MiB of output,
which JSON escaping can grow to 6 MiB."""
WEBHOOK_BODY = 1 * MiB
"""A forge's push event (GitHub caps its own payloads at 25 MiB, but a push event
with a commit list is a few kB; a larger one is refused, and the poll still syncs)."""
APPLY_BODY = 32 * MiB
"""`mlsmctl apply -f`: the files of a manifests repository (1 MiB each at most)."""
THREAD_PARSE_OVER = 64 * 1024
"""JSON bodies longer than this are parsed in a worker thread."""


def seconds(params: QueryParams, name: str, *, default: float, high: float) -> float:
    """`name` as seconds from 0 to `high` (a longer wait is cut to `high`). NaN,
    infinities, negatives and text are refused with the range named."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise HttpError(
            400, f"query parameter '{name}' must be seconds from 0 to {high:g}, got '{raw}'"
        )
    return min(value, high)


def whole(params: QueryParams, name: str, default: int, *, low: int, high: int) -> int:
    """`name` as a whole number from `low` to `high`, else a 400 naming the range."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if len(raw) <= 20 else None  # no value taken here is longer
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise HttpError(
            400,
            f"query parameter '{name}' must be a whole number from {low} to {high}, "
            f"got '{raw[:40]}'",
        )
    return value


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most `limit` bytes; past it a 413 (before reading anything when
    the declared length already says so)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(request, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(request, limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise HttpError(400, "the client went away before the body was sent") from None
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, at most `limit` bytes; a large one is parsed off the loop."""
    body = await read_body(request, limit)
    try:
        if len(body) > THREAD_PARSE_OVER:
            return await anyio.to_thread.run_sync(json.loads, body)
        return json.loads(body)
    except ValueError:
        raise HttpError(400, "the body is not JSON") from None


def _too_large(request: Request, limit: int) -> HttpError:
    return HttpError(
        413,
        f"the body of {request.method} {request.url.path} is over its limit of {limit // MiB} MiB",
    )


async def unless_disconnected(
    request: Request, poll: Callable[[], Awaitable[Response]]
) -> Response:
    """Run a long poll until it answers or the client disconnects, whichever comes
    first (as Starlette's StreamingResponse listens for a disconnect). A client that
    left gets nothing: the 204 is for the log."""
    answer: Response = Response(status_code=204)

    async def answering(scope: anyio.CancelScope) -> None:
        nonlocal answer
        answer = await poll()
        scope.cancel()

    async def listening(scope: anyio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(answering, tasks.cancel_scope)
        tasks.start_soon(listening, tasks.cancel_scope)
    return answer
