"""The controller process: one anyio task group with the sync loop, the file watch,
and the HTTP server (uvicorn serving the Starlette API).

The sync loop syncs, then waits for the poll interval or a wake-up (the webhook,
or a change under a watched path), whichever comes first. A wake-up that arrives
while a sync runs is kept, so the commit it announces is never missed.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import uvicorn
from sqlalchemy import select

from mlsm.controller.agents import AgentApi
from mlsm.controller.api import create_app
from mlsm.controller.capacity import Capacity
from mlsm.controller.leading import Leadership, NotLeader
from mlsm.controller.leasing import LeaseChanges, Leases, check_leases
from mlsm.controller.notifying import bus_for
from mlsm.controller.rewinds import check_mark, save_mark
from mlsm.controller.scheduling import AssignOutcome, assign
from mlsm.controller.serving import server_config
from mlsm.controller.sources import DirectorySource, GitSource, ManifestSource
from mlsm.controller.syncing import Syncer
from mlsm.store import Store, SyncState
from mlsm.store.conflicts import Conflict, retry_on_conflict
from mlsm.web import create_site
from mlsm.web.telemetry import Telemetry

__all__ = ["Controller", "Settings"]

log = logging.getLogger("mlsm.controller")


@dataclass
class Settings:
    repo: str
    branch: str = "main"
    path: str = ""
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8470
    poll_interval: float = 10.0
    webhook_secret: str = field(default="", repr=False)
    state_dir: Path = Path(".mlsm")
    allow_mass_prune: bool = False
    max_prune_share: float = 0.5
    watch: bool = True
    """Watch a local source (a directory, or a local repository's refs) and sync at
    once on a change, instead of waiting for the next poll."""
    node_grace: float = 20.0
    """Seconds without a heartbeat before a node is NotReady."""
    node_lost: float = 300.0
    """Seconds without a heartbeat before a node's runs are Lost and retried elsewhere."""
    schedule_interval: float = 1.0
    """Seconds between scheduling passes (a sync or an agent report also starts one)."""
    recheck_interval: float = 1.0
    """Seconds between database reads of a waiting long poll, assignments or logs (a
    binding or shipped output in this controller wakes it at once; the read sees
    changes made elsewhere)."""
    token_cache: float = 10.0
    """Seconds live node tokens are held in memory: a revoked one works this long."""
    read_timeout: float = 10.0
    """Seconds a request's headers and body may take to arrive."""
    max_connections: int = 1000
    """Open connections served at once; past it a request gets 503."""
    forwarded_allow_ips: str = ""
    """The reverse proxies whose X-Forwarded-For is believed (none by default)."""
    require_token: bool = False
    """Reads need a token from loopback too (a host shared with other users)."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    """A certificate (chain) and its key: the API, agent API and site over HTTPS."""

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"


class Controller:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        source: ManifestSource,
        leadership: Leadership | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.source = source
        self.leadership = leadership or Leadership()
        """Whether this controller runs the sync, scheduling and lease loops now
        (`leading.py`); every controller serves the API, agent API and site."""
        self.syncer = Syncer(
            store,
            source,
            max_prune_share=settings.max_prune_share,
            allow_mass_prune=settings.allow_mass_prune,
            fence=self.leadership.fence,
        )
        self._wake = anyio.Event()
        self._schedule = anyio.Event()
        self.leases = Leases(
            grace=dt.timedelta(seconds=settings.node_grace),
            lost=dt.timedelta(seconds=settings.node_lost),
        )
        self.capacity = Capacity()
        self.agents = AgentApi(
            store,
            capacity=self.capacity,
            request_schedule=self.request_schedule,
            leases=self.leases,
            recheck=settings.recheck_interval,
            token_cache=settings.token_cache,
        )
        self.bus = bus_for(store, self.leadership.identity)
        self.agents.bus = self.bus
        self.telemetry = Telemetry()
        self.telemetry.watch_store(store)
        self.telemetry.leader.set_function(lambda: 1.0 if self.leadership.leading else 0.0)
        self.telemetry.leader_term.set_function(
            lambda: float(self.leadership.term if self.leadership.leading else 0)
        )
        self.synced_once = False
        """The first sync of this process has finished (`/readyz`)."""
        site = create_site(
            store,
            reads=self.capacity.read,
            wake=self.agents.wait_output,
            telemetry=self.telemetry,
            ready=lambda: self.synced_once,
        )
        self.app = create_app(
            store,
            request_sync=self.request_sync,
            webhook_secret=settings.webhook_secret,
            source=source,
            agents=self.agents,
            require_token=settings.require_token,
            site=site,
            telemetry=self.telemetry,
            leadership=self.leadership,
        )

    def request_sync(self) -> None:
        """A sync now: here when this controller leads, else by the leader."""
        if self.leadership.leading:
            self._wake.set()
        else:
            self.bus.publish("sync")

    def request_schedule(self) -> None:
        """A scheduling pass now: here when this controller leads, else by the leader."""
        if self.leadership.leading:
            self._schedule.set()
        else:
            self.bus.publish("schedule")

    def _heard(self) -> dict[str, Callable[[], None]]:
        """What another controller's messages do here (`notifying.py`)."""
        return {
            "assignments": lambda: self.agents.assignments_moved(remote=True),
            "output": lambda: self.agents.output_moved(remote=True),
            "catalog": lambda: self.agents.catalog_changed(remote=True),
            "schedule": lambda: self._schedule.set(),  # (the loops replace these events)
            "sync": lambda: self._wake.set(),
        }

    async def run(self, *, ready: anyio.Event | None = None) -> None:
        config = server_config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            read_timeout=self.settings.read_timeout,
            max_connections=self.settings.max_connections,
            forwarded_allow_ips=self.settings.forwarded_allow_ips,
            tls_cert=self.settings.tls_cert,
            tls_key=self.settings.tls_key,
        )
        server = uvicorn.Server(config)
        await self.capacity.control_plane(
            check_mark, self.store, self.settings.state_dir, self._database
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.leadership.run)
            tasks.start_soon(self.bus.run, self._heard())
            tasks.start_soon(self._sync_loop)
            tasks.start_soon(self._schedule_loop)
            tasks.start_soon(self.agents.flush_heartbeats)
            watched = self._watched()
            if watched is not None:
                tasks.start_soon(self._watch, watched)
            tasks.start_soon(server.serve)
            while not server.started:
                await anyio.sleep(0.02)
            log.info(
                "controller on %s://%s:%d (status site at /), following %s", self.settings.scheme,
                self.settings.host, self.settings.port, _describe(self.source),
            )  # fmt: skip
            # What start-up made (modules, the app, the caches' first fill) lives as long
            # as the process: out of the collector's sight, full collections stay short
            # and do not stall heartbeats.
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            if ready is not None:
                ready.set()

    async def _sync_loop(self) -> None:
        while True:
            if not self.leadership.leading:
                await self._follow()
            self._wake = anyio.Event()
            try:
                started = anyio.current_time()
                outcome = await self.capacity.control_plane(self.syncer.sync)
                if not outcome.skipped:
                    self.telemetry.sync_seconds.observe(anyio.current_time() - started)
                if outcome.error:
                    self.telemetry.sync_errors.inc()
                self.synced_once = True
                if not outcome.skipped:
                    await self.capacity.control_plane(_settle_heap)
                if outcome.changed:
                    await self.capacity.control_plane(self._save_mark)
                if outcome.changed:
                    self.agents.catalog_changed()
                    self.agents.assignments_moved()  # a removed job's run: tell its node now
                    self.request_schedule()
            except NotLeader as exc:
                log.info("sync skipped: %s", exc)
            except Exception:  # a bug or a database outage: log it, keep the loop alive
                log.exception("sync crashed; retrying after the poll interval")
            with anyio.move_on_after(self.settings.poll_interval):
                await self._wake.wait()

    async def _follow(self) -> None:
        """Until this controller leads: ready once the leader has synced (`/readyz`)."""
        while not self.leadership.leading:
            if not self.synced_once:
                self.synced_once = await self.capacity.control_plane(self._leader_synced)
            with anyio.move_on_after(1.0):
                await self.leadership.wait_leading()

    def _leader_synced(self) -> bool:
        with self.store.read() as session:
            return (
                session.scalars(select(SyncState).where(SyncState.status == "Synced")).first()
                is not None
            )

    async def _schedule_loop(self) -> None:
        while True:
            await self.leadership.wait_leading()
            self._schedule = anyio.Event()
            try:
                moved = await self.capacity.control_plane(self._schedule_pass)
                if moved is None:  # lost a race with an agent report: again at once
                    self.request_schedule()
                elif moved:
                    self.agents.assignments_moved()
                    await self.capacity.control_plane(self._save_mark)
            except NotLeader as exc:
                log.info("scheduling pass skipped: %s", exc)
            except Exception:
                log.exception("scheduling pass crashed; retrying")
            with anyio.move_on_after(self.settings.schedule_interval):
                await self._schedule.wait()

    @property
    def _database(self) -> str:
        return self.store.engine.url.render_as_string(hide_password=True)

    def _save_mark(self) -> None:
        """Where the store stands, for the next start to notice a rewind
        (`rewinds.py`); a failure to write it is not worth stopping for."""
        try:
            save_mark(self.store, self.settings.state_dir, self._database)
        except OSError as exc:
            log.warning("cannot write the store mark in %s: %s", self.settings.state_dir, exc)

    def _schedule_pass(self) -> bool | None:
        """Leases then bindings, in one transaction (a worker thread: no anyio here).
        True when agents should look at their assignments; None to run again."""

        def one_pass() -> tuple[LeaseChanges, AssignOutcome]:
            with self.store.write("schedule") as session:
                self.leadership.fence(session)
                return check_leases(session, self.leases), assign(session, grace=self.leases.grace)

        try:
            lapsed, outcome = retry_on_conflict(one_pass, attempts=2)
        except Conflict:  # agent reports keep changing rows under it: again at once
            return None
        if outcome.bound:
            log.info(
                "scheduled %d job(s) onto %s",
                outcome.bound,
                ", ".join(sorted(outcome.nodes_touched)),
            )
        return lapsed.runs or outcome.bound > 0

    def _watched(self) -> Path | None:
        if not self.settings.watch:
            return None
        if isinstance(self.source, DirectorySource):
            return Path(self.source.url)
        if isinstance(self.source, GitSource) and not self.source.remote:
            git_dir = Path(self.source.url) / ".git"
            return git_dir if git_dir.is_dir() else Path(self.source.url)
        return None

    async def _watch(self, path: Path) -> None:
        import watchfiles

        in_git = path.name == ".git"

        def relevant(_change: watchfiles.Change, name: str) -> bool:
            # In a repository only a moved branch matters, not objects or the index.
            return not in_git or "/refs/" in name or name.endswith(("packed-refs", "HEAD"))

        async for _changes in watchfiles.awatch(path, watch_filter=relevant, debounce=50, step=20):
            self.request_sync()


GC_THRESHOLDS = (2_000, 10, 10)
"""The collector's generation thresholds (CPython's are 700, 10, 10). Under heavy
reads a list page's batch (100 rows, a few thousand objects) is alive for a few
milliseconds: a young generation a little larger than the default lets it die
young, so that fewer collections reach the older generations, while each young
collection stays short. (20,000 made every middle collection walk 400,000 objects,
100 ms; the default let full collections come several times a second.) Measured by
bench/read_load.py: heartbeat p99 75 ms on SQLite, 69 ms on PostgreSQL."""


def _settle_heap() -> None:
    """After a sync that loaded a commit: what it keeps until the next one (the
    parsed files, the manifests of 5,000 jobs: some 180,000 objects) goes out of the
    garbage collector's sight. Every full collection walks what is in sight, and
    under heavy reads full collections come several times a second, each pausing
    the event loop, and so the heartbeats, for 100-200 ms. One collection here first
    frees what the last commit's caches left, so that nothing stays frozen for good."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _describe(source: ManifestSource) -> str:
    where = f"{source.url} (branch {source.branch})" if source.branch else source.url
    return where + (f", path {source.path}" if source.path else "")
