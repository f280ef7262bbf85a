"""The agent API, `/api/v1/agent/...`: a node's agent heartbeats with its inventory and
the runs it sees, long-polls for its assignments, and reports run status.

Every request carries the node's bearer token (`mlsm-controller token issue --role
node --node NAME`); a node reads and writes only its own records (403 otherwise),
and a node with no merged Node manifest is refused with a message saying so.
Fencing: a report from a run that is not its job's current run, or that the
controller has finished, is answered with `stop: true`, so a partitioned node that
comes back stops its stale copy instead of both counting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import anyio
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mlsm.controller.capacity import Capacity
from mlsm.controller.heartbeats import TOKEN_SECONDS, Beat, Identities, NodeState, NodeTable
from mlsm.controller.inputs import (
    AGENT_BODY,
    HttpError,
    read_json,
    seconds,
    unless_disconnected,
    whole,
)
from mlsm.controller.lifecycle import Leases, current_runs, report_run, tell_node
from mlsm.controller.notifying import Bus
from mlsm.controller.predicting import pending_predictions
from mlsm.schemas.phases import RunPhase
from mlsm.store import Dataset, Job, Node, Run, Store
from mlsm.store.conflicts import retry_on_conflict
from mlsm.store.outputs import STREAMS, store_lines
from mlsm.store.tokens import live_token, token_digest
from mlsm.store.types import utcnow
from mlsm.web.access import bearer

__all__ = ["AgentApi"]

LONG_POLL_SECONDS = 30.0
FLUSH_SECONDS = 0.2
REPORTABLE = frozenset({RunPhase.STARTING, RunPhase.RUNNING, RunPhase.SUCCEEDED, RunPhase.FAILED})
"""What an agent may say of a run (Lost and Cancelled are the controller's to decide)."""


log = logging.getLogger("mlsm.controller")


class AgentApi:
    """Handlers for agents. `request_schedule` is called after anything that may need
    a scheduling pass (a heartbeat from a new node, a finished run)."""

    def __init__(
        self,
        store: Store,
        *,
        request_schedule: Callable[[], None] = lambda: None,
        leases: Leases | None = None,
        recheck: float = 1.0,
        token_cache: float = TOKEN_SECONDS,
        capacity: Capacity | None = None,
    ) -> None:
        self.store = store
        self.capacity = capacity or Capacity()
        self.recheck = recheck
        """Seconds between reads of a waiting long poll, assignments or logs (a binding
        or shipped output here wakes it at once)."""
        self.request_schedule = request_schedule
        """Ask for a scheduling pass now (a node came up, a run finished)."""
        self.leases = leases or Leases()
        self._revision_moved = anyio.Event()
        self._output_moved = anyio.Event()
        self._catalog: dict[str, dict[str, dict[str, str]]] | None = None
        self._catalog_generation = 0
        self.identities = Identities(store, reload_after=token_cache, capacity=self.capacity)
        self._node_table = NodeTable(store, self._catalog_by_node, self.capacity)
        self._pending: dict[int, Beat] = {}
        self._flushing = False
        self.bus: Bus = Bus()
        """Tells the other controllers on this database what moved (`notifying.py`)."""

    def catalog_changed(self, *, remote: bool = False) -> None:
        """Datasets may have moved (called after a sync that changed objects, or when
        another controller says so: `remote`)."""
        self._catalog_generation += 1
        self._catalog = None
        self._forget_nodes()
        if not remote:
            self.bus.publish("catalog")

    def _forget_nodes(self) -> None:
        self._node_table.forget()

    def _datasets_on(self, session: Session, node: str) -> dict[str, dict[str, str]]:
        """Name → {path, format} of each Dataset the catalog places on `node`."""
        return self._catalog_by_node(session).get(node, {})

    def _catalog_by_node(self, session: Session) -> dict[str, dict[str, dict[str, str]]]:
        catalog, generation = self._catalog, self._catalog_generation
        if catalog is None:
            catalog = {}
            for row in session.scalars(
                select(Dataset).where(Dataset.deleted_at.is_(None), Dataset.generation > 0)
            ):
                spec = (row.manifest or {}).get("spec", {})
                for location in spec.get("locations", []):
                    where = {"path": str(location.get("path", "")),
                             "format": str(spec.get("format", ""))}  # fmt: skip
                    catalog.setdefault(str(location.get("node")), {})[row.name] = where
            if generation == self._catalog_generation:  # not invalidated meanwhile
                self._catalog = catalog
        return catalog

    def assignments_moved(self, *, remote: bool = False) -> None:
        """Wake every long poll (called after a scheduling pass binds runs, here or,
        `remote`, on another controller)."""
        self._forget_nodes()
        self.output_moved(remote=True)  # (one message says both)
        self._revision_moved.set()
        self._revision_moved = anyio.Event()
        if not remote:
            self.bus.publish("assignments")

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await self.capacity.agent(function, *args)

    def _node_for(self, session: Session, token: str, name: str) -> Node:
        if not token:
            raise HttpError(401, "an agent needs its node token: Authorization: Bearer <token>")
        row = live_token(session, token)
        if row is None or row.role != "node":
            raise HttpError(401, "invalid or revoked node token")
        if row.node != name:
            raise HttpError(403, f"this token is node {row.node}'s; it cannot act for {name}")
        node = session.scalars(
            select(Node).where(Node.name == name, Node.deleted_at.is_(None))
        ).first()
        if node is None or node.generation == 0:
            raise _no_manifest(name)
        return node

    async def heartbeat(self, request: Request) -> Response:
        name, token = request.path_params["node"], bearer(request)
        state = await self._node_state(name, token)
        body = await _json(request)
        inventory = body.get("inventory") or {}
        if not isinstance(inventory, dict):
            raise HttpError(400, "inventory must be a JSON object")
        now = utcnow()
        fresh = not self.leases.is_ready(state.last_beat, now)
        state.last_beat = now
        seen = {str(r) for r in body.get("runs", [])}
        answer = {"assignmentRevision": state.revision, "stop": sorted(seen - state.active),
                  "datasets": state.datasets}  # fmt: skip
        if self._flushing:  # written with others in one transaction within FLUSH_SECONDS
            self._pending[state.id] = Beat(now, inventory, fresh or self._pending_fresh(state.id))
        else:
            await self.capacity.control_plane(
                self._write_beats, {state.id: Beat(now, inventory, fresh)}
            )
            if fresh:
                self.request_schedule()
        return JSONResponse(answer)

    def _pending_fresh(self, node_id: int) -> bool:
        beat = self._pending.get(node_id)
        return beat is not None and beat.fresh

    async def flush_heartbeats(self) -> None:
        """Write buffered heartbeats every FLUSH_SECONDS, all in one transaction: at
        hundreds of heartbeats a second, one commit each would be the bottleneck.
        Run by the controller's task group; without it heartbeats are written at once."""
        self._flushing = True
        try:
            while True:
                await anyio.sleep(FLUSH_SECONDS)
                if not self._pending:
                    continue
                batch, self._pending = self._pending, {}
                try:
                    await self.capacity.control_plane(self._write_beats, batch)
                except Exception:  # a database outage: keep the newest beats, try again
                    log.exception("writing %d heartbeat(s) failed; retrying", len(batch))
                    self._pending = {**batch, **self._pending}
                    continue
                if any(beat.fresh for beat in batch.values()):
                    self.request_schedule()  # a node came (back) up: there may be work for it
        finally:
            self._flushing = False

    def _write_beats(self, batch: dict[int, Beat]) -> None:
        # Plain UPDATEs: these columns are the agent's alone, so a heartbeat never
        # collides with the scheduler's versioned writes to the same row.
        table = cast(Table, Node.__table__)
        statement = (
            update(table).where(table.c.id == bindparam("node_id"))
            .values(last_heartbeat_at=bindparam("at"), inventory=bindparam("inv"))
        )  # fmt: skip
        rows = [{"node_id": k, "at": b.at, "inv": b.inventory} for k, b in batch.items()]
        with self.store.write() as session:
            session.execute(statement, rows)

    async def authenticate(self, name: str, token: str) -> None:
        """Refuse (401/403) unless `token` is node `name`'s and the node has a manifest."""
        await self._node_state(name, token)

    async def _node_state(self, name: str, token: str) -> NodeState:
        """Who the token is and what the node holds, from the in-memory tables
        (`heartbeats.Identities`, `heartbeats.NodeTable`)."""
        if not token:
            raise HttpError(401, "an agent needs its node token: Authorization: Bearer <token>")
        identity = await self.identities.lookup(token_digest(token))
        if identity is None or identity[0] != "node":
            raise HttpError(401, "invalid or revoked node token")
        if identity[1] != name:
            raise HttpError(403, f"this token is node {identity[1]}'s; it cannot act for {name}")
        state = await self._node_table.get(name)
        if state is None:
            raise _no_manifest(name)
        return state

    async def assignments(self, request: Request) -> Response:
        name, token = request.path_params["node"], bearer(request)
        known = whole(request.query_params, "revision", -1, low=-1, high=2**62)
        wait = seconds(request.query_params, "wait", default=LONG_POLL_SECONDS, high=60.0)
        deadline = anyio.current_time() + wait

        async def poll() -> Response:
            while True:
                moved = self._revision_moved
                answer = await self._run(self._assignments, name, token, known)
                if answer is not None or anyio.current_time() >= deadline:
                    return JSONResponse(
                        answer or await self._run(self._assignments, name, token, -2)
                    )
                with anyio.move_on_after(min(self.recheck, deadline - anyio.current_time())):
                    await moved.wait()

        return await unless_disconnected(request, poll)

    def _assignments(self, name: str, token: str, known: int) -> dict[str, Any] | None:
        with self.store.read() as session:
            node = self._node_for(session, token, name)
            if node.assignment_revision == known:
                return None
            rows = session.execute(
                select(Run, Job)
                .join(Job)
                .where(Run.node == name, Run.phase.in_(RunPhase.active_phases()))
            )
            datasets = self._datasets_on(session, name)
            runs = []
            for run, job in rows:
                spec = (job.manifest or {}).get("spec", {})
                entry = {"id": run.id, "job": job.name, "attempt": run.attempt,
                         "gpus": run.gpus, "phase": run.phase, "generation": job.generation,
                         "spec": spec, "rank": run.rank, "specHash": job.spec_hash,
                         "commit": {"sha": job.commit_sha, "author": job.commit_author,
                                    "message": job.commit_message}}  # fmt: skip
                if spec.get("nodes", 1) != 1:  # where the ranks meet, once rank 0 said
                    siblings = [r for r in job.runs if r.attempt == run.attempt]
                    entry["nodes"] = len(siblings)
                    entry["rendezvous"] = next((r.rendezvous for r in siblings if r.rank == 0), "")
                if spec.get("dataset") in datasets:
                    entry["dataset"] = {"name": spec["dataset"], **datasets[spec["dataset"]]}
                runs.append(entry)
            return {
                "assignmentRevision": node.assignment_revision,
                "runs": runs,
                "predictions": pending_predictions(session, name),
            }

    async def output(self, request: Request) -> Response:
        """A batch of a run's log lines or metric records: {stream: log|metrics,
        lines: [[offset, text], ...], end}. Answers the offset the controller now
        holds, from which the agent reads on."""
        name, token = request.path_params["node"], bearer(request)
        await self._node_state(name, token)
        body = await _json(request)
        stream, end, raw = body.get("stream"), body.get("end"), body.get("lines")
        if stream not in STREAMS or not isinstance(end, int) or not isinstance(raw, list):
            raise HttpError(400, "the body is {stream: log|metrics, lines: [[offset, text]], "
                                  "end: offset}")  # fmt: skip
        try:
            lines = [(int(offset), str(text)) for offset, text in raw]
        except (TypeError, ValueError):
            raise HttpError(400, "lines must be [offset, text] pairs") from None
        held = await self._run(self._store_output, name, request.path_params["run"], stream,
                               lines, end)  # fmt: skip
        self.output_moved()
        return JSONResponse({"offset": held})

    def _store_output(
        self, name: str, run_id: str, stream: str, lines: list[tuple[int, str]], end: int
    ) -> int:
        with self.store.write() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise HttpError(404, f"no run {run_id}")
            if run.node != name:
                raise HttpError(403, f"run {run_id} is not node {name}'s")
            return store_lines(session, run, stream, lines, end)

    def output_moved(self, *, remote: bool = False) -> None:
        """Wake readers following logs or a job's state (`GET /runs/{id}/logs?wait=`,
        the site's live feeds), here and on the other controllers."""
        self._output_moved.set()
        self._output_moved = anyio.Event()
        if not remote:
            self.bus.publish("output")

    async def wait_output(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._output_moved.wait()

    async def report(self, request: Request) -> Response:
        name, token = request.path_params["node"], bearer(request)
        await self._node_state(name, token)  # from memory, before the body is read
        body = await _json(request)
        run_id = request.path_params["run"]
        answer = await self._run(self._report_retrying, name, token, run_id, body)
        if answer.get("rendezvous"):
            self.assignments_moved()  # the siblings learn where to meet (and wake feeds)
        else:
            self.output_moved()  # a run's phase may have moved: wake the site's live feeds
        if answer.get("finished"):
            self.request_schedule()
        return JSONResponse({"stop": answer["stop"]}, status_code=409 if answer["stop"] else 200)

    def _report_retrying(
        self, name: str, token: str, run_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """A report races the scheduling pass on the same rows: on a version conflict,
        read again and reapply (optimistic concurrency), a few times."""
        return retry_on_conflict(lambda: self._report(name, token, run_id, body))

    def _report(self, name: str, token: str, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
        phase = body.get("phase")
        if phase not in REPORTABLE:
            raise HttpError(400, f"phase must be one of {', '.join(sorted(REPORTABLE))}")
        meet = _rendezvous(body.get("rendezvous"))  # checked before anything is written
        now = utcnow()
        with self.store.write() as session:
            self._node_for(session, token, name)
            run = session.get(Run, run_id)
            if run is None:
                raise HttpError(404, f"no run {run_id}")
            if run.node != name:
                raise HttpError(403, f"run {run_id} is not node {name}'s")
            run.last_report_at = now
            if isinstance(body.get("outputDir"), str):
                run.output_dir = body["outputDir"][:4096]
            exit_code = body.get("exitCode")
            reason, message = str(body.get("reason") or phase), str(body.get("message") or "")
            current = report_run(session, run, RunPhase(phase), self.leases, reason=reason,
                                 message=message, exit_code=exit_code, now=now)  # fmt: skip
            if not current:
                return {"stop": True}  # fenced: a stale copy reporting in
            if meet and run.rank == 0 and not run.rendezvous and RunPhase(run.phase).active:
                run.rendezvous = meet
                for sibling in current_runs(run.job):
                    if sibling is not run:
                        tell_node(session, sibling)
            return {
                "stop": False,
                "finished": RunPhase(phase).finished,
                "rendezvous": run.rendezvous == meet != "",
            }


def _rendezvous(value: object) -> str:
    """A node-rank-0 agent's host:port, checked: it reaches other agents' commands."""
    if value is None:
        return ""
    host, _, port = str(value).rpartition(":")
    if not (
        isinstance(value, str)
        and len(value) <= 300
        and value.isascii()
        and port.isdigit()
        and 0 < int(port) < 65536
        and host
        and all(c.isalnum() or c in ".-:[]_" for c in host)
    ):
        raise HttpError(400, f"rendezvous must be host:port, got {str(value)[:80]!r}")
    return value


def _no_manifest(name: str) -> HttpError:
    return HttpError(403, f"node {name} has no merged Node manifest: add nodes/{name}.yaml "
                           "to the manifests repository and merge it")  # fmt: skip


async def _json(request: Request) -> dict[str, Any]:
    body = await read_json(request, AGENT_BODY)
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body
