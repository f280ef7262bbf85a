"""The controller's API as `mlsmctl` sees it: an httpx client with the server URL and
token, and errors turned into one line that says what to do."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlsm.errors import UserError
from mlsm.tls import client_context, explain, refuse_clear_text

__all__ = ["DEFAULT_SERVER", "Client", "ServerError"]

DEFAULT_SERVER = "http://127.0.0.1:8470"
PLURALS = {"Node": "nodes", "Dataset": "datasets", "TrainingJob": "jobs"}


class ServerError(UserError):
    """The controller could not be reached, or refused the request."""


class Client:
    """The controller's API; `server` may name several controllers on one database,
    comma-separated: a request that cannot reach one goes to the next."""

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        ca_file: Path | None = None,
        insecure: bool = False,
    ) -> None:
        given = server or os.environ.get("MLSM_SERVER") or DEFAULT_SERVER
        self.servers = [s.strip().rstrip("/") for s in given.split(",") if s.strip()]
        self.server = self.servers[0]
        token = token or os.environ.get("MLSM_TOKEN")
        if token:
            for url in self.servers:
                refuse_clear_text(url, insecure=insecure)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        import httpx  # here: 0.1 s to import, which `validate` and `plan --base` never need

        secure = any(url.startswith("https://") for url in self.servers)
        verify = client_context(ca_file) if secure else True
        self._http = httpx.Client(headers=headers, timeout=30, verify=verify)

    def get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params={k: v for k, v in params.items() if v})

    def read(self, path: str, params: dict[str, Any], *, timeout: float = 30) -> Any:
        """GET with the parameters as given (zeros included)."""
        return self._request("GET", path, params=params, timeout=timeout)

    def post(
        self, path: str, body: Any, *, params: dict[str, Any] | None = None, timeout: float = 30
    ) -> Any:
        return self._request("POST", path, json=body, params=params, timeout=timeout)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        failures: list[str] = []
        for url in [self.server, *(u for u in self.servers if u != self.server)]:
            try:
                response = self._http.request(method, f"{url}/api/v1{path}", **kwargs)
            except httpx.TransportError as exc:
                said = explain(exc, url)
                if said is not None and len(self.servers) == 1:
                    raise ServerError(said) from exc
                failures.append(said or f"cannot reach the controller at {url} ({exc})")
                continue
            self.server = url  # the next request starts where this one was answered
            if response.status_code >= 400:
                try:
                    message = response.json()["error"]
                except (ValueError, KeyError, TypeError):
                    message = response.text.strip()[:200] or response.reason_phrase
                raise ServerError(f"{url}: {message}")
            return response.json()
        if len(self.servers) == 1:
            raise ServerError(f"{failures[0]}; is it running? Set --server or MLSM_SERVER")
        raise ServerError("no controller answers: " + "; ".join(failures))

    def objects(self, kind: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every object of a kind, following the pagination."""
        cursor = ""
        while True:
            page = self.get(f"/{PLURALS[kind]}", limit=1000, **{"continue": cursor}, **params)
            yield from page["items"]
            cursor = page.get("continue") or ""
            if not cursor:
                return

    def object(self, kind: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/{PLURALS[kind]}/{name}")
        return result
