"""The agent's side of the agent API (`/api/v1/agent/nodes/{node}/...`), over httpx.

Errors are values the loop can act on: `Refused` (401/403: a bad or revoked token, a
node with no merged manifest; retrying soon will not help, the message says what
will) and `Unreachable` (the network or the controller is down; retry).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import httpx

from mlsm import __version__
from mlsm.errors import MlsmError
from mlsm.tls import explain

__all__ = ["Complaints", "ControllerClient", "Gone", "Refused", "Unreachable"]

log = logging.getLogger("mlsm.agent")


class Unreachable(MlsmError):
    """The controller did not answer; the loop retries with backoff."""


class Gone(MlsmError):
    """The controller does not know the thing asked about (404)."""


class Refused(MlsmError):
    """The controller refused this agent (status 401 or 403); the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Complaints:
    """Problems logged once per change, not once per retry, by topic."""

    def __init__(self) -> None:
        self._said: dict[str, str] = {}

    def complain(self, topic: str, message: str) -> None:
        if self._said.get(topic) != message:
            self._said[topic] = message
            log.warning("%s", message)

    def recovered(self, topic: str, message: str = "the controller answers again") -> None:
        if self._said.pop(topic, None) is not None:
            log.info("%s: %s", topic, message)


class ControllerClient:
    """The agent API of one controller, or of several on one database: a call that
    cannot reach the current one moves the next call to the next URL."""

    def __init__(
        self,
        urls: str | list[str],
        node: str,
        token: str,
        *,
        timeout: float = 10.0,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.node = node
        self.urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        self._current = 0
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}",
                     "User-Agent": f"mlsm-agent/{__version__}"},
            timeout=timeout,
            verify=verify if verify is not None else True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        """The controller the next call goes to."""
        return self.urls[self._current]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def heartbeat(self, inventory: dict[str, Any], runs: list[str]) -> dict[str, Any]:
        return await self._node_call(
            "POST", "/heartbeat", json={"inventory": inventory, "runs": runs}
        )

    async def assignments(self, revision: int, wait: float) -> dict[str, Any]:
        params = {"revision": revision, "wait": wait}
        return await self._node_call("GET", "/assignments", params=params, timeout=wait + 10)

    async def _node_call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A call about the node itself: a 404 there is no controller at all."""
        try:
            return await self._call(method, path, **kwargs)
        except Gone as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise Unreachable(
                f"{self.url} answered 404{detail} where the controller's agent API would be: "
                "is --controller the mlsm controller's URL?"
            ) from None

    async def report(self, run: str, body: dict[str, Any]) -> bool:
        """Report a run's phase; False when the controller says to stop it (fenced)."""
        response = await self._send("POST", f"/runs/{run}/status", json=body)
        if response.status_code == 409:
            return False
        _raise_for(response)
        return True

    async def output(self, run: str, stream: str, lines: list[tuple[int, str]], end: int) -> int:
        """Ship a batch of a run's log lines or metric records; the offset held."""
        body = await self._call("POST", f"/runs/{run}/output",
                                json={"stream": stream, "lines": lines, "end": end})  # fmt: skip
        return int(body["offset"])

    async def prediction(self, request: str) -> dict[str, Any]:
        """A `mlsmctl predict` request for this node: {id, job, run, topK, images}."""
        return await self._call("GET", f"/predictions/{request}")

    async def answer_prediction(self, request: str, answer: dict[str, Any]) -> None:
        await self._call("POST", f"/predictions/{request}", json=answer)

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._send(method, path, **kwargs)
        _raise_for(response)
        body = response.json()
        if not isinstance(body, dict):
            raise Unreachable(f"{method} {path}: the controller answered {body!r}")
        return body

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.url
        try:
            return await self._http.request(
                method, f"{url}/api/v1/agent/nodes/{self.node}{path}", **kwargs
            )
        except httpx.HTTPError as exc:
            self._next(url)
            said = explain(exc, url)  # TLS: what is wrong with the certificate, or the URL
            if said is not None:
                raise Unreachable(said) from None
            detail = f"{exc.__class__.__name__}: {exc}".rstrip(": ")
            raise Unreachable(f"{url}: {detail}") from None

    def _next(self, failed: str) -> None:
        """After `failed` did not answer: the next call tries the next controller."""
        if len(self.urls) > 1 and self.url == failed:
            self._current = (self._current + 1) % len(self.urls)
            log.warning("%s does not answer: moving to the controller at %s", failed, self.url)


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = str(response.json().get("error", response.text))
    except ValueError:
        message = response.text[:200]
    if response.status_code in (401, 403):
        raise Refused(response.status_code, message)
    if response.status_code == 404:
        raise Gone(message)
    raise Unreachable(f"the controller answered {response.status_code}: {message}")
