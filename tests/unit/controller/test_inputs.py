"""What a request brings in, read within bounds: finite query parameters, bodies
capped before and while they are read, long polls that end with their client."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message

from mlsm.controller.inputs import (
    HttpError,
    read_body,
    read_json,
    seconds,
    unless_disconnected,
    whole,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("", 5.0, id="absent-is-the-default"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("2.5", 2.5, id="fraction"),
        pytest.param("1e9", 30.0, id="longer-is-cut-to-the-bound"),
    ],
)
def test_a_wait_within_range(raw: str, expected: float) -> None:
    assert seconds(QueryParams({"wait": raw}), "wait", default=5.0, high=30.0) == expected


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "-1", "soon", "1e400"])
def test_a_wait_that_is_not_finite_seconds_is_refused_naming_the_range(raw: str) -> None:
    with pytest.raises(HttpError, match=rf"'wait' must be seconds from 0 to 30, got '{raw}'"):
        seconds(QueryParams({"wait": raw}), "wait", default=5.0, high=30.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", 7), ("1", 1), ("1000", 1000), ("-1", None), ("1001", None), ("1.5", None),
     ("nan", None), ("9" * 5000, None)],
)  # fmt: skip
def test_a_whole_number_within_range(raw: str, expected: int | None) -> None:
    query = QueryParams({"limit": raw})
    if expected is not None:
        assert whole(query, "limit", 7, low=0, high=1000) == expected
        return
    with pytest.raises(HttpError, match="'limit' must be a whole number from 0 to 1000") as info:
        whole(query, "limit", 7, low=0, high=1000)
    assert info.value.status == 400
    assert len(info.value.message) < 120  # a huge value is not echoed whole


def _request(chunks: list[bytes], headers: dict[str, str] | None = None) -> Request:
    messages: list[Message] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    read: list[int] = []

    async def receive() -> Message:
        if not messages:
            await anyio.sleep_forever()
        read.append(1)
        return messages.pop(0)

    scope = {
        "type": "http", "method": "POST", "path": "/api/v1/x", "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }  # fmt: skip
    request = Request(scope, receive)
    request.state.read = read
    return request


def test_a_body_within_its_cap_is_read_whole() -> None:
    request = _request([b'{"a": ', b"1}"])
    assert anyio.run(read_json, request, 100) == {"a": 1}


def test_a_declared_length_over_the_cap_is_refused_before_a_byte_is_read() -> None:
    request = _request([b"x" * 10], {"content-length": str(20 << 20)})
    with pytest.raises(HttpError, match=r"POST /api/v1/x is over its limit of 8 MiB") as info:
        anyio.run(read_body, request, 8 << 20)
    assert info.value.status == 413
    assert request.state.read == []


def test_a_chunked_body_is_cut_off_at_the_cap() -> None:
    request = _request([b"x" * 1024] * 100)
    with pytest.raises(HttpError) as info:
        anyio.run(read_body, request, 4096)
    assert info.value.status == 413
    assert len(request.state.read) == 5  # the fifth chunk passes the cap; no more is read


def test_a_large_json_body_is_parsed_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[Any] = []
    real = anyio.to_thread.run_sync

    async def spy(function: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(function)
        return await real(function, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", spy)
    small, large = json.dumps({"a": 1}).encode(), json.dumps({"a": "x" * 100_000}).encode()
    assert anyio.run(read_json, _request([small]), 1 << 20) == {"a": 1}
    assert threads == []
    assert anyio.run(read_json, _request([large]), 1 << 20)["a"] == "x" * 100_000
    assert threads == [json.loads]


def test_a_body_that_is_not_json_is_a_400() -> None:
    with pytest.raises(HttpError, match="not JSON") as info:
        anyio.run(read_json, _request([b"{nope"]), 100)
    assert info.value.status == 400


def test_a_long_poll_ends_when_its_client_disconnects() -> None:
    polled: list[float] = []

    async def poll() -> Response:
        while True:
            polled.append(anyio.current_time())
            await anyio.sleep(0.01)

    async def go() -> tuple[Response, int]:
        messages: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]
        gone = anyio.Event()

        async def receive() -> Message:
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        request = Request({"type": "http", "method": "GET", "headers": []}, receive)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: _disconnect_after(gone, 0.1))
            with anyio.fail_after(5):
                answer = await unless_disconnected(request, poll)
        count = len(polled)
        await anyio.sleep(0.1)
        assert len(polled) == count  # nothing polls after the client left
        return answer, count

    answer, count = anyio.run(go)
    assert answer.status_code == 204
    assert 3 <= count <= 30


async def _disconnect_after(gone: anyio.Event, delay: float) -> None:
    await anyio.sleep(delay)
    gone.set()


def test_a_long_poll_that_answers_returns_its_answer() -> None:
    async def poll() -> Response:
        return JSONResponse({"ok": True})

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    request = Request({"type": "http", "method": "GET", "headers": []}, receive)
    answer = anyio.run(unless_disconnected, request, poll)
    assert answer.body == b'{"ok":true}'
