"""The status site's Starlette app: read-only pages over the store, their live feed,
`/metrics`, `/healthz` and `/readyz`.

Every route answers GET and HEAD only; any other method gets 405, and no page holds
a form that writes (the filters are GET forms). The controller mounts this app under
`/` beside its API; `mlsm-web` serves it alone against the same database. Every
response carries a Content-Security-Policy that allows no inline script or style,
`nosniff`, `frame-ancestors 'none'` and no referrer. Everything shown is escaped
by Jinja2's autoescape (charts escape their own text).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import anyio
import anyio.to_thread
import jinja2
from sqlalchemy import select, text
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlsm import __version__
from mlsm.errors import HttpError
from mlsm.store import Store, SyncState
from mlsm.web import charts, live, pages
from mlsm.web.access import ReadAccess, Reader
from mlsm.web.live import Feeds
from mlsm.web.telemetry import CONTENT_TYPE, Telemetry, TimedRequests

__all__ = ["SECURITY_HEADERS", "create_site"]

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def _age(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    if value is None:
        return "never"
    seconds = int(((now or dt.datetime.now(dt.UTC)) - value).total_seconds())
    return f"{_duration(max(seconds, 0))} ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 120:
        return f"{whole}s"
    if whole < 600:
        return f"{whole // 60}m {whole % 60}s"
    if whole < 7200:
        return f"{whole // 60}m"
    if whole < 2 * 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mlsm.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        age=_age,
        duration=_duration,
        bytes=_bytes,
        number=_number,
        query=lambda params: urlencode(params),
    )
    env.globals.update(version=__version__)
    return env


class _Headers:
    """Adds the security headers to every response (a plain ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, with_headers)


class Site:
    def __init__(
        self,
        store: Store,
        *,
        reads: Reader,
        feeds: Feeds,
        telemetry: Telemetry,
        ready: Callable[[], bool] | None,
    ) -> None:
        self.store = store
        self.reads = reads
        self.feeds = feeds
        self.telemetry = telemetry
        self.ready = ready
        self.env = _templates()

    async def render(
        self,
        request: Request,
        template: str,
        read: Callable[..., Any],
        *args: Any,
        missing: str = "",
    ) -> Response:
        """A page: `read(session, *args)` in a worker thread, rendered there too, with
        the live feed's state digest as of the same read. When `read` finds nothing
        (None), a 404 saying `missing`."""

        def build() -> str:
            with self.store.read() as session:
                context = read(session, *args)
                if context is None:
                    raise HttpError(404, missing or f"{template.removesuffix('.html')} not found")
                digest, _ = live.read_state(session, context.get("live_key", ""))
                return self.env.get_template(template).render(
                    request=request,
                    path=request.url.path,
                    now=dt.datetime.now(dt.UTC),
                    digest=digest,
                    **context,
                )

        body = await self.reads(build)
        return HTMLResponse(body, headers={"cache-control": "no-cache"})

    async def overview(self, request: Request) -> Response:
        return await self.render(request, "overview.html", pages.overview_page)

    async def jobs(self, request: Request) -> Response:
        query = pages.JobsQuery.parse(request.query_params)
        return await self.render(request, "jobs.html", pages.jobs_page, query)

    async def job(self, request: Request) -> Response:
        name = request.path_params["name"]
        run = request.query_params.get("run", "")[:36]
        parts = request.query_params.get("parts") == "1"

        def read(session: Any) -> dict[str, Any] | None:
            context = pages.job_page(session, name, run, log=not parts)
            if context is None:
                return None
            context["charts"] = charts.metric_charts(context["metric_columns"], context["epochs"])
            context["live_key"] = name
            context["following"] = bool(context["runs"]) and context["run"] is context["runs"][-1]
            return context

        missing = (
            f"no job named '{name[:63]}': if it was merged, the Syncs page says why it was "
            "not created"
        )
        return await self.render(request, "job.html", read, missing=missing)

    async def sweep(self, request: Request) -> Response:
        name = request.path_params["name"]
        missing = f"no sweep named '{name[:63]}': no job is its child"
        return await self.render(request, "sweep.html", pages.sweep_page, name, missing=missing)

    async def nodes(self, request: Request) -> Response:
        return await self.render(request, "nodes.html", pages.nodes_page)

    async def node(self, request: Request) -> Response:
        name = request.path_params["name"]
        missing = f"no node named '{name[:63]}'"
        return await self.render(request, "node.html", pages.node_page, name, missing=missing)

    async def datasets(self, request: Request) -> Response:
        return await self.render(request, "datasets.html", pages.datasets_page)

    async def syncs(self, request: Request) -> Response:
        return await self.render(request, "syncs.html", pages.syncs_page)

    async def events(self, request: Request) -> Response:
        query = pages.EventsQuery.parse(request.query_params)
        return await self.render(request, "events.html", pages.events_page, query)

    async def live(self, request: Request) -> Response:
        if request.method == "HEAD":  # the headers a stream would have, and no stream
            return Response(media_type="text/event-stream")
        key = request.query_params.get("job", "")[:63]
        after = request.headers.get("last-event-id") or request.query_params.get("after", "")
        return StreamingResponse(
            self.feeds.stream(key, after),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def metrics(self, request: Request) -> Response:
        body = await self.reads(self.telemetry.exposition)
        return Response(body, media_type=CONTENT_TYPE)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(self, request: Request) -> Response:
        """Ready: the database answers, and the first sync is done (this controller's,
        or for a site alone, any controller's on this database)."""

        def check() -> str:
            with self.store.read() as session:
                session.execute(text("SELECT 1"))
                if self.ready is not None:
                    return "" if self.ready() else "the first sync has not finished yet"
                synced = session.scalar(
                    select(SyncState.source).where(SyncState.last_attempt_at.is_not(None))
                )
                return "" if synced else "no controller has synced this database yet"

        try:
            with anyio.fail_after(5):
                problem = await anyio.to_thread.run_sync(check)
        except Exception as exc:  # the database is down or hung
            problem = f"the database does not answer: {type(exc).__name__}: {exc}"[:500]
        if problem:
            return PlainTextResponse(f"not ready: {problem}\n", status_code=503)
        return PlainTextResponse("ready\n")

    async def error(self, request: Request, exc: Exception) -> Response:
        """The one error answer: an HttpError raised here, or Starlette's own (no
        route, a method not allowed)."""
        if isinstance(exc, HttpError):
            exc = HTTPException(exc.status, exc.message)
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if request.url.path.startswith("/api/"):  # the API's own shape, under the controller
            detail = (
                f"no route {request.method} {request.url.path}"
                if exc.status_code in (404, 405)
                else exc.detail
            )
            return JSONResponse(
                {"error": detail, "status": exc.status_code},
                status_code=exc.status_code,
                headers=headers,
            )
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no page at {request.url.path[:200]}"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed: the status site is read-only (GET and HEAD)"
        body = self.env.get_template("error.html").render(
            request=request,
            path=request.url.path,
            status=exc.status_code,
            detail=detail,
            now=dt.datetime.now(dt.UTC),
        )
        return HTMLResponse(body, status_code=exc.status_code, headers=headers)


def create_site(
    store: Store,
    *,
    reads: Reader | None = None,
    wake: Callable[[float], Any] | None = None,
    telemetry: Telemetry | None = None,
    ready: Callable[[], bool] | None = None,
    live_interval: float = 1.0,
    access: bool = False,
    require_token: bool = False,
) -> Starlette:
    """The site over `store`. `reads` runs blocking reads (the controller's share of
    worker threads; a limiter of its own otherwise); `wake(seconds)` returns early
    when output or state moved (the controller's signal; a timer otherwise).
    `access`: check read tokens here (a site alone; the controller checks them for
    its whole app)."""
    if reads is None:
        limiter = anyio.CapacityLimiter(2)

        async def reads(function: Callable[..., Any], *args: Any) -> Any:
            return await anyio.to_thread.run_sync(function, *args, limiter=limiter)

    if telemetry is None:
        telemetry = Telemetry()
        telemetry.watch_store(store)
    site = Site(
        store,
        reads=reads,
        feeds=Feeds(store, reads=reads, wake=wake, interval=live_interval),
        telemetry=telemetry,
        ready=ready,
    )
    get = ["GET"]  # HEAD comes with GET
    routes: list[BaseRoute] = [
        Route("/", site.overview, methods=get),
        Route("/jobs", site.jobs, methods=get),
        Route("/jobs/{name}", site.job, methods=get),
        Route("/sweeps/{name}", site.sweep, methods=get),
        Route("/nodes", site.nodes, methods=get),
        Route("/nodes/{name}", site.node, methods=get),
        Route("/datasets", site.datasets, methods=get),
        Route("/syncs", site.syncs, methods=get),
        Route("/events", site.events, methods=get),
        Route("/live", site.live, methods=get),
        Route("/metrics", site.metrics, methods=get),
        Route("/healthz", site.healthz, methods=get),
        Route("/readyz", site.readyz, methods=get),
        Mount("/static", app=StaticFiles(packages=[("mlsm.web", "static")]), name="static"),
    ]
    middleware = [Middleware(_Headers)]
    if access:
        middleware += [
            Middleware(TimedRequests, telemetry=telemetry),
            Middleware(ReadAccess, store=store, reads=reads, require_token=require_token),
        ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: site.error, HttpError: site.error},
    )
