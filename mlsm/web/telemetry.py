"""`/metrics` in Prometheus's text format (prometheus-client), and the timings that
feed it.

At each scrape the store is read for what it holds now: jobs by phase, nodes ready
and not, GPUs allocated and free, sources whose last sync failed. The process
itself times its HTTP requests by route (the agents' heartbeats apart from the rest)
and its syncs. A registry of its own per process, not the library's global one.

Used by the controller (which also observes its syncs) and the standalone site.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlsm.store import Node, Store, SyncState
from mlsm.web import pages

__all__ = ["CONTENT_TYPE", "Telemetry", "TimedRequests"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0)


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "mlsm_http_request_duration_seconds",
            "HTTP requests served, by route: heartbeat (agents' heartbeats), "
            "assignments (agents' long polls), agent (reports, output), api, site",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sync_seconds = Histogram(
            "mlsm_sync_duration_seconds",
            "Syncs of the git source, fetch to commit",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=self.registry,
        )
        self.sync_errors = Counter(
            "mlsm_sync_errors_total", "Syncs that failed or were held", registry=self.registry
        )
        self.leader = Gauge(
            "mlsm_leader",
            "1 while this controller leads (runs the sync, scheduling and lease loops), "
            "else 0; with several controllers on one database, exactly one should be 1",
            registry=self.registry,
        )
        self.leader_term = Gauge(
            "mlsm_leader_term",
            "The leadership term this controller holds (0: none)",
            registry=self.registry,
        )

    def watch_store(self, store: Store) -> None:
        self.registry.register(_StoreCollector(store))

    def exposition(self) -> bytes:
        """The text a scrape gets (reads the store: call it in a worker thread)."""
        return generate_latest(self.registry)


class _StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        return []  # read at each scrape; nothing to read at registration

    def collect(self) -> Iterator[Metric]:
        with self.store.read() as session:
            phases = pages.jobs_by_phase(session)
            nodes = list(session.scalars(select(Node).where(Node.deleted_at.is_(None))))
            ready = sum(1 for n in nodes if pages.is_ready(n))
            total = sum(pages.gpu_count(n) for n in nodes)
            allocated = pages.gpus_in_use(session)
            syncs = session.execute(select(SyncState.source, SyncState.status)).all()
        jobs = GaugeMetricFamily("mlsm_jobs", "Jobs by phase", labels=["phase"])
        for phase, count in phases.items():
            jobs.add_metric([phase], count)
        yield jobs
        node_family = GaugeMetricFamily("mlsm_nodes", "Nodes by readiness", labels=["ready"])
        node_family.add_metric(["true"], ready)
        node_family.add_metric(["false"], len(nodes) - ready)
        yield node_family
        gpus = GaugeMetricFamily("mlsm_gpus", "GPUs by state", labels=["state"])
        gpus.add_metric(["allocated"], allocated)
        gpus.add_metric(["free"], max(total - allocated, 0))
        yield gpus
        failing = GaugeMetricFamily(
            "mlsm_sync_failing", "1 while a source's last sync failed", labels=["source"]
        )
        for source, status in syncs:
            failing.add_metric([source], 1 if status == "Failed" else 0)
        yield failing


def route_of(path: str) -> str | None:
    """The label a request is timed under; None for the live streams (they last)."""
    if path.startswith("/api/v1/agent/"):
        if path.endswith("/heartbeat"):
            return "heartbeat"
        return "assignments" if path.endswith("/assignments") else "agent"
    if path.startswith("/api/"):
        return "api"
    if path == "/live" or path == "/metrics":
        return None
    return "site"


class TimedRequests:
    """ASGI middleware: each request's time to its last byte, by `route_of`."""

    def __init__(self, app: ASGIApp, *, telemetry: Telemetry) -> None:
        self.app = app
        self.histogram = telemetry.request_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.histogram.labels(route).observe(time.perf_counter() - start)

        await self.app(scope, receive, timed)
