"""The agent process: its loops in one anyio task group.

- heartbeat: every `heartbeat_interval`, the inventory and the runs held here; the
  answer names runs to stop (fenced, cancelled, past maxDuration) and the datasets
  the catalog places on this node, which the next inventory scans;
- assignments: a long poll that returns as soon as the node's assignment revision
  moves, so a bound run reaches the node in well under a second;
- reconcile: `reconciling.plan_runs(desired, observed)` and the actions it returns,
  every half second or at once when something changes;
- shipping: every run's output (`shipping.Shipper`);
- predict: the `mlsmctl predict` requests the assignments answers name
  (`predicting.Predictor`).

The loop knows runtimes only through their port (`mlsm.agent.runtimes`): a run is
launched (`launching.launch_for`), prepared and started in a worker thread, so the
loops go on meanwhile; after a restart the runs are adopted (`adopting.adopt`). No
error ends the process: the controller being away or refusing the agent is logged
once (with what to do) and retried with backoff.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from mlsm.agent import reconciling
from mlsm.agent.adopting import adopt
from mlsm.agent.client import Complaints, ControllerClient, Refused, Unreachable
from mlsm.agent.datasets import DatasetScanner, ScanResult
from mlsm.agent.gpus import Gpu, discover_gpus
from mlsm.agent.inventory import host_inventory
from mlsm.agent.launching import launch_for, output_dir, runtime_of
from mlsm.agent.predicting import Predictor
from mlsm.agent.provenance import check_dataset, run_provenance, write_provenance
from mlsm.agent.reconciling import Outcome
from mlsm.agent.records import LocalRun, RunFolder, RunRecord, safe_name
from mlsm.agent.rendezvous import (
    Meeting,
    RendezvousTimeout,
    advertise_address,
    failed_to_meet,
    reserve_port,
)
from mlsm.agent.runtimes import Runtime, StartError
from mlsm.agent.settings import AgentSettings
from mlsm.agent.shipping import Shipper
from mlsm.backoff import Backoff

__all__ = ["Agent", "default_runtimes"]

log = logging.getLogger("mlsm.agent")

RECONCILE_SECONDS = 0.5
DONE_KEPT = 10_000
RUNTIME_CHECK_SECONDS = 30.0


def default_runtimes(settings: AgentSettings) -> dict[str, Runtime]:
    """The runtimes the settings allow (the docker SDK is imported only for docker)."""
    runtimes: dict[str, Runtime] = {}
    if "venv" in settings.runtimes:
        from mlsm.agent.runtimes.venv import VenvRuntime

        runtimes["venv"] = VenvRuntime(settings.storage_root, pip_args=settings.pip_args)
    if "docker" in settings.runtimes:
        from mlsm.agent.runtimes.docker import DockerRuntime

        runtimes["docker"] = DockerRuntime(
            settings.storage_root,
            settings.node,
            host=settings.docker_host,
            pull_timeout=settings.image_pull_timeout,
        )
    return runtimes


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        client: ControllerClient,
        *,
        runtimes: Mapping[str, Runtime] | None = None,
        gpus: list[Gpu] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client
        self.root = settings.storage_root
        self.runtimes = dict(runtimes) if runtimes is not None else default_runtimes(settings)
        self.offered: dict[str, str | None] = {}
        """Runtime name -> None when it can run jobs now, else why not."""
        self.gpus = gpus
        self.clock = clock
        self.scanner = DatasetScanner(self.root, settings.state / "dataset-digests.json")
        self.desired: dict[str, dict[str, Any]] | None = None
        self.revision = -1
        self.runs: dict[str, LocalRun] = {}
        self.done: dict[str, None] = {}  # insertion-ordered set, oldest dropped first
        self.stop: set[str] = set()
        self.catalog: dict[str, dict[str, str]] = {}
        self.address = settings.advertise_address or ""
        """Where other nodes reach this one (a multi-node job's rendezvous)."""
        self._scanned: dict[str, ScanResult] = {}
        self._scanned_catalog: dict[str, dict[str, str]] | None = None
        self._scanned_at = 0.0
        self._checked_at = -RUNTIME_CHECK_SECONDS
        self._wake = anyio.Event()
        self.complaints = Complaints()
        self._tasks: anyio.abc.TaskGroup | None = None
        self.shipper = Shipper(client, settings.state, self.complaints, self._release)
        self.predictor = Predictor(client, self.root, settings.state, self.complaints)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings.state.mkdir(parents=True, exist_ok=True)
        if not self.address:
            self.address = await anyio.to_thread.run_sync(
                advertise_address, self.settings.controllers[0]
            )
        log.info("node %s: advertise address %s", self.settings.node, self.address)
        if self.gpus is None:
            gpus, source = await anyio.to_thread.run_sync(discover_gpus, self.settings.gpus_file)
            log.info("node %s: %d GPU(s) (%s)", self.settings.node, len(gpus), source)
            self.gpus = gpus
        await anyio.to_thread.run_sync(self.check_runtimes)
        adopted = await anyio.to_thread.run_sync(
            adopt, self.settings.state, self.root / "runs", self.runtimes
        )
        for record in adopted.shipping:
            self.shipper.add(record)
        self.done.update(dict.fromkeys(adopted.done))
        self.runs.update((run.id, run) for run in adopted.runs)
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            tasks.start_soon(self._signals, tasks.cancel_scope)
            tasks.start_soon(self.shipper.loop)
            tasks.start_soon(self._heartbeat_loop)
            tasks.start_soon(self._assignment_loop)
            tasks.start_soon(self._reconcile_loop)
            tasks.start_soon(self.predictor.loop)

    def check_runtimes(self) -> None:
        """Which runtimes can run jobs now (blocking: asks the container engine).
        A change is logged, with why a runtime is not offered."""
        for name, runtime in self.runtimes.items():
            problem = runtime.problem()
            if name in self.offered and problem == self.offered[name]:
                continue
            if problem is None:
                log.info("runtime %s: offered", name)
            else:
                log.warning("runtime %s: not offered: %s", name, problem)
            self.offered[name] = problem
        self._checked_at = self.clock()

    async def _signals(self, scope: anyio.CancelScope) -> None:
        """SIGTERM or SIGINT ends the agent. Its runs go on (a restarted agent adopts
        them), unless `stop_runs_on_exit` (as under `mlsmctl up`, where Ctrl-C stops
        everything): then they get SIGTERM, and SIGKILL after the grace period."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for received in signals:
                log.info("%s: the agent stops", signal.Signals(received).name)
                if self.settings.stop_runs_on_exit:
                    await self._stop_all()
                scope.cancel()
                return

    async def _stop_all(self) -> None:
        live = [r for r in self.runs.values() if r.handle is not None and r.handle.poll() is None]
        if not live:
            return
        log.info("stopping %d run(s); they are retried when an agent is back", len(live))
        for run in live:
            await self._signal(run, signal.SIGTERM)
        with anyio.move_on_after(self.settings.stop_grace):
            while any(r.handle is not None and r.handle.poll() is None for r in live):
                await anyio.sleep(0.05)
        for run in live:
            if run.handle is not None and run.handle.poll() is None:
                await self._signal(run, signal.SIGKILL)

    async def _signal(self, run: LocalRun, sig: signal.Signals) -> None:
        if run.handle is not None:
            await anyio.to_thread.run_sync(run.handle.signal, sig)

    # talking to the controller -------------------------------------------------------

    def _refused(self, topic: str, exc: Refused) -> float:
        self.complaints.complain(
            topic,
            f"the controller refused node {self.settings.node} "
            f"({exc.status}): {exc}; retrying every 10s",
        )
        return 10.0

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff(1.0, self.settings.heartbeat_interval)
        while True:
            inventory = await anyio.to_thread.run_sync(self.inventory)
            try:
                answer = await self.client.heartbeat(inventory, sorted(self.runs))
            except Refused as exc:
                await anyio.sleep(self._refused("heartbeat", exc))
                continue
            except Unreachable as exc:
                delay = backoff.next()
                self.complaints.complain(
                    "heartbeat", f"heartbeat failed: {exc}; retrying in {delay:.0f}s"
                )
                await anyio.sleep(delay)
                continue
            backoff.reset()
            self.complaints.recovered("heartbeat")
            stop = {str(r) for r in answer.get("stop", [])} & set(self.runs)
            if stop - self.stop:
                self.stop |= stop
                self.wake()
            catalog = answer.get("datasets")
            if isinstance(catalog, dict) and catalog != self.catalog:
                self.catalog = catalog
                continue  # scan the datasets the catalog names now, and say so at once
            await anyio.sleep(self.settings.heartbeat_interval)

    def inventory(self) -> dict[str, Any]:
        """The heartbeat's inventory (blocking: dataset scans read the disk, and the
        container engine is asked whether it answers). Datasets are rescanned when
        the catalog changes and every `dataset_rescan` seconds, not on every
        heartbeat: walking a million-file tree every 5 s would cost more than the
        digests the cache saves."""
        now = self.clock()
        if now - self._checked_at >= RUNTIME_CHECK_SECONDS:
            self.check_runtimes()
        if self.catalog != self._scanned_catalog or now - self._scanned_at >= (
            self.settings.dataset_rescan
        ):
            scanned: dict[str, ScanResult] = {}
            for name, where in sorted(self.catalog.items()):
                path, format = str(where.get("path", "")), str(where.get("format", ""))
                result = self.scanner.scan(path, format)
                if result is not None:
                    scanned[name] = result
            self.scanner.save()
            self._scanned, self._scanned_catalog, self._scanned_at = scanned, self.catalog, now
        offered = [name for name, problem in self.offered.items() if problem is None]
        missing = {name: problem for name, problem in self.offered.items() if problem is not None}
        found = host_inventory(
            self.root,
            gpus=self.gpus or [],
            runtimes=offered,
            datasets=self._scanned,
            missing=missing,
        )
        return {**found, "address": self.address}

    async def _assignment_loop(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                body = await self.client.assignments(self.revision, self.settings.long_poll)
            except Refused as exc:
                await anyio.sleep(self._refused("assignments", exc))
                continue
            except Unreachable as exc:
                self.complaints.complain(
                    "assignments", f"cannot reach the controller: {exc}; retrying"
                )
                await anyio.sleep(backoff.next())
                continue
            backoff.reset()
            self.complaints.recovered("assignments")
            self.revision = int(body.get("assignmentRevision", -1))
            self.desired = {}
            for entry in body.get("runs", []):
                if safe_name(entry.get("id")) and safe_name(entry.get("job")):
                    self.desired[str(entry["id"])] = entry
                else:  # they name folders under the storage root: never a path
                    names = f"{entry.get('id')!r}, {entry.get('job')!r}"
                    self.complaints.complain(
                        "assignments",
                        f"ignoring an assignment with an unsafe run id or job name: {names}",
                    )
            self.predictor.take(body.get("predictions"))
            self.wake()

    # reconciling ---------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            await self.reconcile_once()
            with anyio.move_on_after(RECONCILE_SECONDS):
                await self._wake.wait()

    async def reconcile_once(self) -> None:
        self._poll_runs()
        actions = reconciling.plan_runs(
            None if self.desired is None else self.desired.keys(),
            {run.id: run.observed for run in self.runs.values()},
            done=self.done.keys(),
            stop=self.stop,
            now=self.clock(),
            grace=self.settings.stop_grace,
        )
        for action in actions:
            await self._apply(action)

    def _poll_runs(self) -> None:
        for run in self.runs.values():
            if run.handle is None or run.observed.state != "running":
                continue
            outcome = run.handle.poll()
            if outcome is not None and outcome.phase == "Failed" and run.nodes > 1:
                outcome = self._met_or_not(run, outcome)
            if outcome is not None:
                run.observed = replace(run.observed, state="exited", outcome=outcome)
                log.info(
                    "run %s of job %s ended: %s %s",
                    run.id[:8],
                    run.job,
                    outcome.reason,
                    "" if outcome.exit_code is None else outcome.exit_code,
                )
                if run.record is not None:
                    run.record.ended, run.record.outcome = True, asdict(outcome)
                    run.record.save(self.settings.state)

    async def _apply(self, action: reconciling.Action) -> None:
        match action:
            case reconciling.Start(run=run_id):
                assert self.desired is not None
                assert self._tasks is not None
                assignment = self.desired[run_id]
                run = LocalRun(run_id, assignment, runtime=runtime_of(assignment))
                if run.nodes > 1 and run.rank == 0:  # this node hosts the rendezvous
                    run.rendezvous = str(assignment.get("rendezvous") or "") or (
                        f"{self.address}:{reserve_port(self.address)}"
                    )
                self.runs[run_id] = run
                log.info("run %s of job %s: starting (%s)", run_id[:8], run.job, run.runtime)
                self._tasks.start_soon(self._launch, run)
            case reconciling.Terminate(run=run_id):
                run = self.runs[run_id]
                run.cancelled = True
                run.observed = replace(run.observed, stopping_since=self.clock())
                if run.handle is not None:
                    log.info("run %s of job %s: stopping (SIGTERM)", run_id[:8], run.job)
                    await self._signal(run, signal.SIGTERM)
            case reconciling.Kill(run=run_id):
                run = self.runs[run_id]
                log.warning(
                    "run %s of job %s did not stop within %.0fs: SIGKILL",
                    run_id[:8],
                    run.job,
                    self.settings.stop_grace,
                )
                run.observed = replace(run.observed, killed=True)
                await self._signal(run, signal.SIGKILL)
            case reconciling.Report(run=run_id, phase=phase, outcome=outcome):
                await self._report(self.runs[run_id], phase, outcome)
            case reconciling.Forget(run=run_id):
                run = self.runs.pop(run_id)
                self.stop.discard(run_id)
                self.done[run_id] = None
                while len(self.done) > DONE_KEPT:
                    del self.done[next(iter(self.done))]
                if run.record is not None:  # the shipper removes it once all is shipped
                    run.record.forgotten = True
                    run.record.save(self.settings.state)

    async def _report(self, run: LocalRun, phase: str, outcome: Outcome | None) -> None:
        body: dict[str, Any] = {"phase": phase}
        if run.rendezvous and phase in ("Starting", "Running"):
            body["rendezvous"] = run.rendezvous  # the controller tells the siblings
        if phase == "Running":
            body["outputDir"] = str(output_dir(self.root, run.job))
            enforced = run.handle.enforced if run.handle is not None else None
            if enforced:
                body["message"] = enforced
        if outcome is not None:
            body.update(reason=outcome.reason, message=outcome.message, exitCode=outcome.exit_code)
        try:
            accepted = await self.client.report(run.id, body)
        except (Refused, Unreachable) as exc:
            self.complaints.complain(
                "report", f"cannot report run {run.id[:8]} {phase}: {exc}; retrying"
            )
            return
        self.complaints.recovered("report")
        if accepted:
            run.observed = replace(run.observed, reported=phase)
            if run.record is not None:
                run.record.reported = phase
                run.record.save(self.settings.state)
        else:  # fenced: the controller has moved on from this run
            log.warning(
                "run %s of job %s is stale (the controller moved on): stopping it",
                run.id[:8],
                run.job,
            )
            self.stop.add(run.id)
            self.wake()

    # starting a run ------------------------------------------------------------------

    async def _launch(self, run: LocalRun) -> None:
        runtime = self.runtimes.get(run.runtime)
        try:
            if runtime is None or self.offered.get(run.runtime, "") is not None:
                why = self.offered.get(run.runtime) or "this agent's settings leave it out"
                raise StartError(f"this node cannot run {run.runtime} jobs now: {why}")
            meeting = await self._meeting(run)
            held = [r.handle for r in self.runs.values() if r.id != run.id and r.handle]
            busy = [cpu for handle in held for cpu in handle.cpus]
            launch = launch_for(
                run=run.id,
                assignment=run.assignment,
                root=self.root,
                node=self.settings.node,
                runtime=runtime,
                catalog=self.catalog,
                busy_cpus=busy,
                meeting=meeting,
            )
            spec = run.assignment.get("spec") or {}
            scanned = self._scanned.get(str(spec.get("dataset")))
            check_dataset(spec, scanned)
            prepared = await anyio.to_thread.run_sync(runtime.prepare, launch)
            if run.cancelled:
                raise StartError("stopped before it started")
            made = run_provenance(
                run=run.id,
                assignment=run.assignment,
                node=self.settings.node,
                dataset=scanned,
                environment=runtime.environment(launch, prepared),
            )
            write_provenance(launch.folder, made)
            record = RunRecord(
                run=run.id,
                job=run.job,
                pid=0,
                pid_start=None,
                directory=str(launch.folder.path),
                assignment=run.assignment,
                runtime=runtime.name,
                container=f"mlsm-{run.id}" if runtime.name == "docker" else None,
            )
            if record.container is not None:  # found again even if the agent dies now
                record.save_process()
            handle = await anyio.to_thread.run_sync(runtime.start, launch, prepared)
        except StartError as exc:
            self._fail(run, exc.reason, str(exc))
        except ValueError as exc:  # a spec this agent cannot read (a newer controller)
            self._fail(run, "InvalidSpec", f"cannot read the job's spec: {exc}")
        except Exception as exc:  # a bug must not take the agent down
            log.exception("run %s of job %s: unexpected error while starting", run.id[:8], run.job)
            self._fail(run, "StartFailed", f"{exc.__class__.__name__}: {exc}")
        else:
            run.handle = handle
            run.observed = replace(run.observed, state="running")
            for key, value in handle.facts().items():
                setattr(record, key, value)
            record.save_process()
            record.save(self.settings.state)
            run.record = record
            self.shipper.add(record)
            where = f"container {record.container}" if record.container else f"pid {record.pid}"
            log.info("run %s of job %s: running (%s)", run.id[:8], run.job, where)
        self.wake()

    async def _meeting(self, run: LocalRun) -> Meeting | None:
        """For a job on several nodes, where its ranks meet: this node's own endpoint
        at node rank 0, else the one node rank 0's agent reported, which reaches this
        agent in a later assignment (waited for up to rendezvous_timeout)."""
        if run.nodes == 1:
            return None
        timeout = self.settings.rendezvous_timeout
        deadline = self.clock() + timeout
        while not (endpoint := run.rendezvous or self._endpoint(run.id)):
            if run.cancelled:
                raise StartError("stopped before it started")
            if self.clock() >= deadline:
                raise RendezvousTimeout(
                    f"node rank {run.rank} of {run.nodes} waited {timeout:g}s for node "
                    "rank 0 to say where the ranks meet, and it never did: is its node up? "
                    f"(`mlsmctl describe job {run.job}`)"
                )
            await anyio.sleep(0.1)
        attempt = run.assignment.get("attempt", 1)
        return Meeting(
            endpoint=endpoint,
            id=f"{run.job}-{attempt}",
            nodes=run.nodes,
            rank=run.rank,
            address=self.address,
            timeout=timeout,
        )

    def _endpoint(self, run_id: str) -> str:
        return str((self.desired or {}).get(run_id, {}).get("rendezvous") or "")

    def _met_or_not(self, run: LocalRun, outcome: Outcome) -> Outcome:
        """A failed multi-node run whose launcher gave up waiting for its peers fails
        RendezvousTimeout, saying so, rather than a bare exit code."""
        if run.record is None or not failed_to_meet(RunFolder(Path(run.record.directory)).log):
            return outcome
        where = run.rendezvous or self._endpoint(run.id) or "the rendezvous"
        return replace(
            outcome,
            reason=RendezvousTimeout.reason,
            message=f"the ranks of node rank {run.rank} did not meet the other "
            f"{run.nodes - 1} node(s) at {where} within "
            f"{self.settings.rendezvous_timeout:g}s: a peer never came (see its "
            f"run: `mlsmctl describe job {run.job}`)",
        )

    def _fail(self, run: LocalRun, reason: str, message: str) -> None:
        if not run.cancelled:
            log.warning("run %s of job %s failed: %s: %s", run.id[:8], run.job, reason, message)
        run.observed = replace(
            run.observed, state="exited", outcome=Outcome("Failed", reason, message)
        )

    async def _release(self, record: RunRecord) -> None:
        runtime = self.runtimes.get(record.runtime)
        if runtime is not None:
            await anyio.to_thread.run_sync(runtime.release, record)
