"""The agent process: three loops in one anyio task group.

- heartbeat: every `heartbeat_interval`, the inventory and the runs held here; the
  answer names runs to stop (fenced, cancelled, past maxDuration) and the datasets
  the catalog places on this node, which the next inventory scans;
- assignments: a long poll that returns as soon as the node's assignment revision
  moves, so a bound run reaches the node in well under a second;
- reconcile: `reconciling.plan_runs(desired, observed)` and the actions it returns,
  every half second or at once when something changes.

Runs are started through the venv runtime; a build runs in a worker thread, so the
loops go on meanwhile. No error ends the process: the controller being away or
refusing the agent is logged once (with what to do) and retried.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from mlsm import schemas
from mlsm.agent import limits, reconciling
from mlsm.agent.client import ControllerClient, Gone, Refused, Unreachable
from mlsm.agent.datasets import DatasetScanner, ScanResult, resolve_under
from mlsm.agent.gpus import Gpu, discover_gpus
from mlsm.agent.inventory import host_inventory
from mlsm.agent.reconciling import Observed, Outcome
from mlsm.agent.records import RunFolder, RunRecord, load_records
from mlsm.agent.settings import AgentSettings
from mlsm.agent.shipping import read_lines
from mlsm.agent.venvs import EnvBuildFailed, Launch, RunProcess, StartFailed, VenvRuntime, tail

__all__ = ["Agent"]

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _safe(name: object) -> bool:
    """A run id or job name the agent may use as a folder name under its storage root."""
    return isinstance(name, str) and bool(_SAFE_NAME.fullmatch(name)) and ".." not in name


log = logging.getLogger("mlsm.agent")

RECONCILE_SECONDS = 0.5
SHIP_SECONDS = 0.25
DONE_KEPT = 10_000


@dataclass
class LocalRun:
    id: str
    assignment: dict[str, Any]
    observed: Observed = field(default_factory=lambda: Observed("preparing"))
    process: RunProcess | None = None
    cancelled: bool = False
    record: RunRecord | None = None
    enforced: limits.Limits | None = None
    """What is enforced on it (venv runs started by this agent)."""

    @property
    def job(self) -> str:
        return str(self.assignment.get("job", "?"))


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        client: ControllerClient,
        *,
        runtime: VenvRuntime | None = None,
        gpus: list[Gpu] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client
        self.root = settings.storage_root
        self.runtime = runtime or VenvRuntime(self.root, pip_args=settings.pip_args)
        self.gpus = gpus
        self.clock = clock
        self.scanner = DatasetScanner(self.root, settings.state / "dataset-digests.json")
        self.desired: dict[str, dict[str, Any]] | None = None
        self.revision = -1
        self.runs: dict[str, LocalRun] = {}
        self.done: dict[str, None] = {}  # insertion-ordered set, oldest dropped first
        self.stop: set[str] = set()
        self.catalog: dict[str, dict[str, str]] = {}
        self._scanned: dict[str, ScanResult] = {}
        self._scanned_catalog: dict[str, dict[str, str]] | None = None
        self._scanned_at = 0.0
        self._wake = anyio.Event()
        self._complaints: dict[str, str] = {}
        self._tasks: anyio.abc.TaskGroup | None = None
        self._shipping: dict[str, RunRecord] = {}

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings.state.mkdir(parents=True, exist_ok=True)
        if self.gpus is None:
            gpus, source = await anyio.to_thread.run_sync(discover_gpus, self.settings.gpus_file)
            log.info("node %s: %d GPU(s) (%s)", self.settings.node, len(gpus), source)
            self.gpus = gpus
        self._adopt()
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            tasks.start_soon(self._signals, tasks.cancel_scope)
            tasks.start_soon(self._ship_loop)
            tasks.start_soon(self._heartbeat_loop)
            tasks.start_soon(self._assignment_loop)
            tasks.start_soon(self._reconcile_loop)

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
        live = [r for r in self.runs.values() if r.process is not None and r.process.poll() is None]
        if not live:
            return
        log.info("stopping %d run(s); they are retried when an agent is back", len(live))
        for run in live:
            assert run.process is not None
            run.process.signal(signal.SIGTERM)
        with anyio.move_on_after(self.settings.stop_grace):
            while any(r.process is not None and r.process.poll() is None for r in live):
                await anyio.sleep(0.05)
        for run in live:
            if run.process is not None and run.process.poll() is None:
                run.process.signal(signal.SIGKILL)

    # talking to the controller -------------------------------------------------------

    def _complain(self, topic: str, message: str) -> None:
        """Log a problem once per change, not once per retry."""
        if self._complaints.get(topic) != message:
            self._complaints[topic] = message
            log.warning("%s", message)

    def _recovered(self, topic: str) -> None:
        if self._complaints.pop(topic, None) is not None:
            log.info("%s: the controller answers again", topic)

    def _refused(self, topic: str, exc: Refused) -> float:
        self._complain(topic, f"the controller refused node {self.settings.node} "
                              f"({exc.status}): {exc}; retrying every 10s")  # fmt: skip
        return 10.0

    async def _heartbeat_loop(self) -> None:
        backoff = 1.0
        while True:
            inventory = await anyio.to_thread.run_sync(self.inventory)
            try:
                answer = await self.client.heartbeat(inventory, sorted(self.runs))
            except Refused as exc:
                await anyio.sleep(self._refused("heartbeat", exc))
                continue
            except Unreachable as exc:
                self._complain("heartbeat", f"heartbeat failed: {exc}; retrying in {backoff:.0f}s")
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.heartbeat_interval)
                continue
            backoff = 1.0
            self._recovered("heartbeat")
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
        """The heartbeat's inventory (blocking: dataset scans read the disk). Datasets
        are rescanned when the catalog changes and every `dataset_rescan` seconds,
        not on every heartbeat: walking a million-file tree every 5 s would cost more
        than the digests the cache saves."""
        now = self.clock()
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
        return host_inventory(self.root, gpus=self.gpus or [], runtimes=self.settings.runtimes,
                              datasets=self._scanned)  # fmt: skip

    async def _assignment_loop(self) -> None:
        backoff = 0.5
        while True:
            try:
                body = await self.client.assignments(self.revision, self.settings.long_poll)
            except Refused as exc:
                await anyio.sleep(self._refused("assignments", exc))
                continue
            except Unreachable as exc:
                self._complain("assignments", f"cannot reach the controller: {exc}; retrying")
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            self._recovered("assignments")
            self.revision = int(body.get("assignmentRevision", -1))
            self.desired = {}
            for entry in body.get("runs", []):
                if _safe(entry.get("id")) and _safe(entry.get("job")):
                    self.desired[str(entry["id"])] = entry
                else:  # they name folders under the storage root: never a path
                    names = f"{entry.get('id')!r}, {entry.get('job')!r}"
                    self._complain("assignments", "ignoring an assignment with an unsafe run "
                                   f"id or job name: {names}")  # fmt: skip
            self.wake()

    # reconciling ---------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            await self.reconcile_once()
            with anyio.move_on_after(RECONCILE_SECONDS):
                await self._wake.wait()

    async def reconcile_once(self) -> None:
        self._poll_processes()
        actions = reconciling.plan_runs(
            None if self.desired is None else self.desired.keys(),
            {run.id: run.observed for run in self.runs.values()},
            done=self.done.keys(), stop=self.stop, now=self.clock(),
            grace=self.settings.stop_grace,
        )  # fmt: skip
        for action in actions:
            await self._apply(action)

    def _poll_processes(self) -> None:
        for run in self.runs.values():
            if run.process is None or run.observed.state != "running":
                continue
            code = run.process.poll()
            if code is not None:
                outcome = self._outcome(run, code)
                if run.enforced is not None:
                    limits.release(run.enforced.cgroup)
                run.observed = replace(run.observed, state="exited", outcome=outcome)
                log.info("run %s of job %s exited with %s", run.id[:8], run.job, code)
                if run.record is not None:
                    run.record.ended, run.record.outcome = True, asdict(outcome)
                    run.record.save(self.settings.state)

    def _outcome(self, run: LocalRun, code: int) -> Outcome:
        if run.process is not None and run.process.unknown:
            return Outcome("Failed", "Unknown", "it ended while the agent was down, and its "
                           "exit status was lost (was its process group killed?)")  # fmt: skip
        if code == 0:
            return Outcome("Succeeded", "Completed", "exit code 0", 0)
        last = tail(RunFolder(self._run_dir(run.id)).log, lines=3, limit=1024)
        ended = run.process.ended() if run.process is not None else {}
        group = run.enforced.cgroup if run.enforced is not None else None
        killed = limits.oom_killed(group) if group is not None else None
        if ended.get("reason") == "OOMKilled" or killed:
            said = killed or str(ended.get("message", "killed for memory"))
            return Outcome("Failed", "OOMKilled", f"{said}; last output:\n{last}".rstrip(), code)
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            hint = " (out of memory?)" if code == -signal.SIGKILL else ""
            message = f"killed by {name}{hint}"
            return Outcome("Failed", "Killed", f"{message}; last output:\n{last}".rstrip(), code)
        return Outcome("Failed", "Error", f"exit code {code}; last output:\n{last}".rstrip(), code)

    async def _apply(self, action: reconciling.Action) -> None:
        match action:
            case reconciling.Start(run=run_id):
                assert self.desired is not None
                assert self._tasks is not None
                run = LocalRun(run_id, self.desired[run_id])
                self.runs[run_id] = run
                log.info("run %s of job %s: starting", run_id[:8], run.job)
                self._tasks.start_soon(self._launch, run)
            case reconciling.Terminate(run=run_id):
                run = self.runs[run_id]
                run.cancelled = True
                run.observed = replace(run.observed, stopping_since=self.clock())
                if run.process is not None:
                    log.info("run %s of job %s: stopping (SIGTERM)", run_id[:8], run.job)
                    run.process.signal(signal.SIGTERM)
            case reconciling.Kill(run=run_id):
                run = self.runs[run_id]
                log.warning("run %s of job %s did not stop within %.0fs: SIGKILL", run_id[:8],
                            run.job, self.settings.stop_grace)  # fmt: skip
                run.observed = replace(run.observed, killed=True)
                if run.process is not None:
                    run.process.signal(signal.SIGKILL)
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
        if phase == "Running":
            body["outputDir"] = str(self._output_dir(run.job))
            if run.enforced is not None:
                body["message"] = run.enforced.said
        if outcome is not None:
            body.update(reason=outcome.reason, message=outcome.message, exitCode=outcome.exit_code)
        try:
            accepted = await self.client.report(run.id, body)
        except (Refused, Unreachable) as exc:
            self._complain("report", f"cannot report run {run.id[:8]} {phase}: {exc}; retrying")
            return
        self._recovered("report")
        if accepted:
            run.observed = replace(run.observed, reported=phase)
            if run.record is not None:
                run.record.reported = phase
                run.record.save(self.settings.state)
        else:  # fenced: the controller has moved on from this run
            log.warning("run %s of job %s is stale (the controller moved on): stopping it",
                        run.id[:8], run.job)  # fmt: skip
            self.stop.add(run.id)
            self.wake()

    # starting a run ------------------------------------------------------------------

    def _run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def _output_dir(self, job: str) -> Path:
        return self.root / "jobs" / job / "output"

    def _launch_for(self, run: LocalRun) -> Launch:
        spec = schemas.TrainingJobSpec.model_validate(run.assignment.get("spec", {}))
        venv = spec.runtime.venv
        if venv is None:
            raise StartFailed("this agent runs venv jobs only; the docker runtime is not here yet")
        directory = self._run_dir(run.id)
        output = self._output_dir(run.job)
        output.mkdir(parents=True, exist_ok=True)
        gpus = [int(i) for i in run.assignment.get("gpus", [])]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
        env.update(spec.env)
        env.update(
            MLSM_RUN_ID=run.id, MLSM_JOB=run.job, MLSM_OUTPUT_DIR=str(output),
            MLSM_METRICS_FILE=str(RunFolder(directory).metrics),
            CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)),
        )  # fmt: skip
        dataset = run.assignment.get("dataset")
        if spec.dataset is not None:
            where = dataset if isinstance(dataset, dict) else self.catalog.get(spec.dataset, {})
            path = resolve_under(self.root, str(where.get("path", "")))
            if path is None or not path.is_dir():
                expected = self.root / str(where.get("path", "?"))
                raise StartFailed(f"dataset {spec.dataset} is not on this node "
                                  f"(expected at {expected})")  # fmt: skip
            env["MLSM_DATASET_DIR"] = str(path)
        argv = spec.command
        if spec.trainer is not None:
            argv = self._trainer_command(spec.trainer, directory, env)
        held = [r.enforced for r in self.runs.values() if r.id != run.id]
        busy = [cpu for enforced in held if enforced is not None for cpu in enforced.cpus]
        memory = spec.resources.memory
        group = limits.memory_cgroup(run.id, memory) if memory else None
        run.enforced = limits.choose(
            spec.resources.cpu, memory, limits.allowed_cpus(), busy, cgroup=group
        )
        return Launch(run=run.id, argv=argv or [], env=env, cwd=directory,
                      cpus=run.enforced.cpus, memory=run.enforced.memory, cgroup=group,
                      log=RunFolder(directory).log, python=venv.python,
                      requirements=venv.requirements,
                      system_site_packages=venv.system_site_packages,
                      inherit_agent=spec.trainer is not None)  # fmt: skip

    def _trainer_command(
        self, trainer: schemas.TrainerConfig, directory: Path, env: dict[str, str]
    ) -> list[str]:
        """The built-in trainer's config (the job's spec.trainer, with the dataset and
        output dirs and a model folder resolved under the storage root), written into
        the run's dir, and the command that runs it."""
        config = trainer.model_dump(mode="json", by_alias=True)
        if not trainer.model.startswith("builtin:"):
            model = resolve_under(self.root, trainer.model)
            if model is None or not model.is_dir():
                where = self.root / trainer.model
                raise StartFailed(f"model {trainer.model} is not on this node (expected a "
                                  f"Hugging Face model folder at {where})")  # fmt: skip
            config["model"] = str(model)
        config.update(datasetRoot=env["MLSM_DATASET_DIR"], outputDir=env["MLSM_OUTPUT_DIR"])
        directory.mkdir(parents=True, exist_ok=True)
        path = RunFolder(directory).trainer_config
        path.write_text(json.dumps(config, indent=2) + "\n")
        return ["python", "-m", "mlsm.training", "--config", str(path)]

    async def _launch(self, run: LocalRun) -> None:
        try:
            launch = self._launch_for(run)
            launch.cwd.mkdir(parents=True, exist_ok=True)
            env_dir = await anyio.to_thread.run_sync(self.runtime.ensure_env, launch)
            if run.cancelled:
                raise StartFailed("stopped before it started")
            run.process = self.runtime.start(launch, env_dir)
        except EnvBuildFailed as exc:
            self._fail(run, "EnvBuildFailed", str(exc))
        except StartFailed as exc:
            self._fail(run, "StartFailed", str(exc))
        except ValueError as exc:  # a spec this agent cannot read (a newer controller)
            self._fail(run, "InvalidSpec", f"cannot read the job's spec: {exc}")
        except Exception as exc:  # a bug must not take the agent down
            log.exception("run %s of job %s: unexpected error while starting", run.id[:8], run.job)
            self._fail(run, "StartFailed", f"{exc.__class__.__name__}: {exc}")
        else:
            run.observed = replace(run.observed, state="running")
            self._record(run, launch)
            log.info("run %s of job %s: running as pid %d", run.id[:8], run.job, run.process.pid)
        self.wake()

    def _fail(self, run: LocalRun, reason: str, message: str) -> None:
        if not run.cancelled:
            log.warning("run %s of job %s failed: %s: %s", run.id[:8], run.job, reason, message)
        run.observed = replace(run.observed, state="exited",
                               outcome=Outcome("Failed", reason, message))  # fmt: skip

    def _record(self, run: LocalRun, launch: Launch) -> None:
        """Remember the run in the state dir: for adoption after a restart, and for
        shipping its output."""
        assert run.process is not None
        run.record = RunRecord(
            run=run.id, job=run.job, pid=run.process.pid, pid_start=run.process.pid_start,
            directory=str(launch.cwd), assignment=run.assignment,
        )  # fmt: skip
        run.record.save_process()
        run.record.save(self.settings.state)
        self._shipping[run.id] = run.record

    # restarts ------------------------------------------------------------------------

    def _adopt(self) -> None:
        """Take back the runs recorded in the state dir: still running (adopted, not
        started again), ended while the agent was down (reported now), or finished
        with output left to ship."""
        records, damage = load_records(self.settings.state, self.root / "runs")
        for sentence in damage:
            log.error("damaged agent state: %s", sentence)
        for record in records:
            self._shipping[record.run] = record
            if record.forgotten:
                self.done[record.run] = None
                continue
            run = LocalRun(record.run, record.assignment, record=record)
            run.process = RunProcess(record.pid, record.status, record.pid_start)
            reported = record.reported  # None: say Running (again: a no-op if known)
            if record.ended and record.outcome is not None:
                outcome = Outcome(**record.outcome)
                run.observed = Observed("exited", reported=reported, outcome=outcome)
            else:
                run.observed = Observed("running", reported=reported)
                log.info("run %s of job %s: adopted (pid %d%s)", run.id[:8], run.job,
                         record.pid, "" if record.alive() else ", ended while the agent "
                         "was down")  # fmt: skip
            self.runs[run.id] = run

    # shipping ------------------------------------------------------------------------

    async def _ship_loop(self) -> None:
        while True:
            for record in list(self._shipping.values()):
                try:
                    await self._ship(record)
                except Refused as exc:
                    self._complain("ship", f"cannot ship run {record.run[:8]}'s output: {exc}")
                except Gone:  # the controller has no such run (a new database): stop trying
                    log.warning("run %s is unknown to the controller: its output stays in %s",
                                record.run[:8], record.directory)  # fmt: skip
                    self._shipping.pop(record.run, None)
                    record.remove(self.settings.state)
                except Unreachable as exc:
                    self._complain("ship", f"cannot ship output: {exc}; retrying")
                    break
            await anyio.sleep(SHIP_SECONDS)

    async def _ship(self, record: RunRecord) -> None:
        for stream, path in (("log", record.log), ("metrics", record.metrics)):
            while True:
                offset = record.log_offset if stream == "log" else record.metrics_offset
                final = record.ended
                lines, end = await anyio.to_thread.run_sync(
                    functools.partial(read_lines, path, offset, final=final)
                )
                if end == offset:
                    break
                held = await self.client.output(record.run, stream, lines, end)
                self._recovered("ship")
                if stream == "log":
                    record.log_offset = held
                else:
                    record.metrics_offset = held
                record.save(self.settings.state)
        if record.forgotten and record.ended:
            self._shipping.pop(record.run, None)
            record.remove(self.settings.state)
