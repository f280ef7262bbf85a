"""The controller's HTTP API: `/healthz`, the read API under `/api/v1` (used by
`mlsmctl` and the status site), and the git webhook.

Objects are shown as Kubernetes shows them: apiVersion, kind, metadata (with uid,
generation, where and by which commit it was last changed), spec, status. Lists are
paginated by an opaque cursor (`?limit=&continue=`) and filterable (`?selector=
gpu=a100,zone=b`, `?phase=`, `?owner=`, `?deleted=true` for history).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from sqlalchemy import Select, select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from mlsm import schemas
from mlsm.controller import committing, scheduling
from mlsm.controller.agents import AgentApi
from mlsm.controller.inputs import (
    APPLY_BODY,
    WEBHOOK_BODY,
    HttpError,
    read_body,
    read_json,
    seconds,
    unless_disconnected,
    whole,
)
from mlsm.controller.leading import Leadership
from mlsm.controller.predicting import PredictApi
from mlsm.controller.sources import ManifestSource
from mlsm.schemas.phases import RunPhase
from mlsm.schemas.sweeps import SWEEP_LABEL
from mlsm.store import OBJECT_MODELS, Event, Job, Node, Run, Store, StoredObject, SyncState
from mlsm.store.outputs import read_log, read_metrics
from mlsm.store.tokens import token_role
from mlsm.web.access import ReadAccess, bearer
from mlsm.web.pages import find_object, sweep_page
from mlsm.web.telemetry import Telemetry, TimedRequests

__all__ = ["API_PREFIX", "create_app", "object_json"]

API_PREFIX = "/api/v1"
KINDS = {
    "nodes": "Node",
    "datasets": "Dataset",
    "jobs": "TrainingJob",
    "trainingjobs": "TrainingJob",
}
MAX_LIMIT = 1000
MAX_PLAN_JOBS = 10_000
BATCH = 100
"""Rows of a list page read and encoded at once."""


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def object_json(
    row: StoredObject,
    *,
    events: list[Event] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    manifest = row.manifest or {}
    metadata = dict(manifest.get("metadata", {"name": row.name}))
    metadata.update(
        uid=row.uid,
        generation=row.generation,
        specHash=row.spec_hash,
        createdAt=_time(row.created_at),
        updatedAt=_time(row.updated_at),
        deletedAt=_time(row.deleted_at),
        source={"path": row.source_path, "line": row.source_line},
        commit={"sha": row.commit_sha, "author": row.commit_author,
                "message": row.commit_message.strip()},
    )  # fmt: skip
    status: dict[str, Any] = {"conditions": row.conditions}
    if isinstance(row, Job):
        status.update(phase=row.phase, observedGeneration=row.observed_generation,
                      restarts=row.restarts)  # fmt: skip
    if isinstance(row, Node):
        capacity = (manifest.get("spec") or {}).get("capacity", {}).get("gpus")
        reported = row.inventory.get("gpus")
        status.update(lastHeartbeatAt=_time(row.last_heartbeat_at),
                      gpus=len(reported) if reported is not None else capacity or 0,
                      agentVersion=row.inventory.get("agentVersion"),
                      datasets=row.inventory.get("datasets", {}))  # fmt: skip
        if "runtimes" in row.inventory:  # what its agent offers now, and why not the rest
            status["runtimes"] = row.inventory["runtimes"]
            status["runtimeProblems"] = row.inventory.get("runtimeProblems", {})
    status.update(extra or {})
    out = {
        "apiVersion": manifest.get("apiVersion", "mlsm/v1"),
        "kind": row.kind,
        "metadata": metadata,
        "spec": manifest.get("spec"),
        "status": status,
    }
    if events is not None:
        out["events"] = [event_json(e) for e in events]
    return out


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id, "at": _time(event.at), "kind": event.kind, "name": event.name,
        "uid": event.uid, "type": event.type, "reason": event.reason, "message": event.message,
        "commit": event.commit_sha, "actor": event.actor,
    }  # fmt: skip


def run_json(run: Run, job: str) -> dict[str, Any]:
    return {
        "id": run.id, "job": job, "attempt": run.attempt, "node": run.node, "phase": run.phase,
        "gpus": run.gpus, "rank": run.rank, "ranks": run.ranks, "rendezvous": run.rendezvous,
        "reason": run.reason, "message": run.message, "exitCode": run.exit_code,
        "outputDir": run.output_dir, "logOffset": run.log_offset,
        "createdAt": _time(run.created_at),
        "startedAt": _time(run.started_at), "finishedAt": _time(run.finished_at),
    }  # fmt: skip


def sync_json(state: SyncState) -> dict[str, Any]:
    return {
        "source": state.source, "url": state.url, "branch": state.branch, "path": state.path,
        "status": state.status, "error": state.error, "objects": state.objects,
        "invalid": state.invalid, "problems": state.problems or [],
        "brokenFiles": len({p.get("path") for p in state.problems or []}),
        "commit": {"sha": state.commit_sha, "author": state.commit_author,
                   "message": state.commit_message.strip()},
        "lastAttemptAt": _time(state.last_attempt_at),
        "lastSuccessAt": _time(state.last_success_at),
    }  # fmt: skip


def _usage(session: Any, kind: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """What active runs hold, for the objects named (one page, not the whole table):
    GPUs in use per node, and each job's current node."""
    if kind not in ("Node", "TrainingJob") or not names:
        return {}
    out: dict[str, dict[str, Any]] = {}
    query = (
        select(Run.node, Run.gpus, Job.name)
        .join(Job)
        .where(Run.phase.in_(RunPhase.active_phases()))
    )
    query = query.where(Run.node.in_(names) if kind == "Node" else Job.name.in_(names))
    for node, gpus, job in session.execute(query):
        if kind == "Node" and node:
            entry = out.setdefault(node, {"gpusUsed": 0})
            entry["gpusUsed"] += len(gpus)
        elif kind == "TrainingJob":
            out[job] = {"node": node}
    return out


def _int(request: Request, name: str, default: int, *, low: int = 0, high: int = 2**62) -> int:
    return whole(request.query_params, name, default, low=low, high=high)


def _selector(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise HttpError(400, f"selector '{part}' must be key=value (e.g. gpu=a100)")
        out[key.strip()] = value.strip()
    return out


def _page(query: Select[Any], model: Any, request: Request) -> tuple[Select[Any], int]:
    limit = _int(request, "limit", 100, low=1, high=MAX_LIMIT)
    after = _int(request, "continue", 0)
    return query.where(model.id > after).order_by(model.id).limit(limit + 1), limit


def _paged(items: list[Any], limit: int, ids: list[int]) -> dict[str, Any]:
    more = len(items) > limit
    return {"items": items[:limit], "continue": str(ids[limit - 1]) if more else None}


class Api:
    """Route handlers over one store; the blocking queries run in worker threads."""

    def __init__(
        self,
        store: Store,
        request_sync: Callable[[], None],
        webhook_secret: str,
        source: ManifestSource | None,
        agents: AgentApi,
        leadership: Leadership | None = None,
    ) -> None:
        self.store = store
        self.request_sync = request_sync
        self.webhook_secret = webhook_secret
        self.source = source
        self.agents = agents
        self.leadership = leadership or Leadership()

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """A read in a worker thread, within the reads' share (`capacity.py`)."""
        return await self.agents.capacity.read(function, *args)

    async def answer(self, function: Callable[..., Any], *args: Any) -> Response:
        """A read answered as JSON, encoded in the worker thread too: a page of 1,000
        objects takes tens of milliseconds to encode, which the event loop (and the
        heartbeats it serves) must not spend."""

        def encoded() -> bytes:
            return _encode(function(*args))

        return Response(await self.call(encoded), media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        def check() -> dict[str, Any]:
            with self.store.read() as session:
                states = session.scalars(select(SyncState)).all()
            return {"status": "ok", "sync": [{"source": s.source, "status": s.status}
                                             for s in states]}  # fmt: skip

        health = await self.agents.capacity.check_health(check)
        leader = self.leadership
        health["leader"] = {"leading": leader.leading, "term": leader.term, "id": leader.identity}
        return JSONResponse(health)

    async def list_objects(self, request: Request) -> Response:
        kind = self._kind(request.path_params["kind"])
        body = await self.call(self._list_objects, kind, request)
        return Response(body, media_type="application/json")

    def _list_objects(self, kind: str, request: Request) -> bytes:
        """A page of objects as JSON, read and encoded BATCH rows at a time: a page of
        1,000 jobs whole is some 100,000 objects alive at once, which every garbage
        collection meanwhile walks while the event loop waits."""
        model = OBJECT_MODELS[kind]
        query = select(model)
        if request.query_params.get("deleted", "").lower() not in ("true", "1", "yes"):
            query = query.where(model.deleted_at.is_(None))
        for key, value in _selector(request.query_params.get("selector", "")).items():
            query = query.where(model.labels[key].as_string() == value)
        if model is Job:
            phase = request.query_params.get("phase")
            if phase:
                query = query.where(Job.phase.in_(phase.split(",")))
            owner = request.query_params.get("owner")
            if owner:
                query = query.where(Job.owner == owner)
        query, limit = _page(query, model, request)
        chunks: list[bytes] = []
        last, more = 0, False
        with self.store.read() as session:
            rows = session.scalars(query.execution_options(yield_per=BATCH))
            for rows_read in rows.partitions():
                batch = list(rows_read)
                if len(chunks) + len(batch) > limit:  # the query reads one row past the page
                    batch, more = batch[: limit - len(chunks)], True
                if batch:
                    extras = _usage(session, kind, [r.name for r in batch])
                    chunks += [_encode(object_json(r, extra=extras.get(r.name))) for r in batch]
                    last = batch[-1].id
        cursor = json.dumps(str(last)) if more else "null"
        return b'{"items":[' + b",".join(chunks) + b'],"continue":' + cursor.encode() + b"}"

    async def get_object(self, request: Request) -> Response:
        kind = self._kind(request.path_params["kind"])
        name = request.path_params["name"]
        return await self.answer(self._get_object, kind, name)

    def _get_object(self, kind: str, name: str) -> dict[str, Any]:
        model = OBJECT_MODELS[kind]
        with self.store.read() as session:
            row = find_object(session, model, name)
            if row is None:
                raise HttpError(404, f"{kind}/{name} not found")
            events = list(session.scalars(
                select(Event).where(Event.kind == kind, Event.name == name)
                .order_by(Event.id.desc()).limit(20)
            ))  # fmt: skip
            out = object_json(
                row, events=events[::-1], extra=_usage(session, kind, [name]).get(name)
            )
            if isinstance(row, Job):
                out["runs"] = [run_json(r, row.name) for r in row.runs]
        return out

    async def run_logs(self, request: Request) -> Response:
        """A run's log lines: past `after` (an offset), up to `limit`; or the last
        `tail`. With `wait` (seconds), an empty answer waits for new lines first, so
        `mlsmctl logs -f` follows without polling fast."""
        run_id = request.path_params["run"]
        after = _int(request, "after", -1, low=-1)
        limit = _int(request, "limit", 1000, low=1, high=MAX_LIMIT)
        tail = request.query_params.get("tail")
        last = _int(request, "tail", 0, low=0, high=MAX_LIMIT) if tail else None
        rank = (
            _int(request, "rank", 0, low=0, high=10**7)
            if request.query_params.get("rank")
            else None
        )
        wait = seconds(request.query_params, "wait", default=0.0, high=30.0)
        deadline = anyio.current_time() + wait

        def read() -> dict[str, Any]:
            with self.store.read() as session:
                found = session.execute(
                    select(Run, Job.name).join(Job).where(Run.id == run_id)
                ).first()  # fmt: skip
                if found is None:
                    raise HttpError(404, f"no run {run_id}")
                run, job = found
                lines = read_log(session, run_id, after=after, limit=limit, tail=last, rank=rank)
                return {
                    "run": run.id, "job": job, "phase": run.phase,
                    "finished": RunPhase(run.phase).finished, "logOffset": run.log_offset,
                    "lines": [{"offset": o, "text": t} for o, t in lines],
                    "next": lines[-1][0] if lines else after,
                }  # fmt: skip

        async def poll() -> Response:
            while True:
                answer: dict[str, Any] = await self.call(read)
                if answer["lines"] or anyio.current_time() >= deadline:
                    return JSONResponse(answer)
                left = deadline - anyio.current_time()
                await self.agents.wait_output(min(self.agents.recheck, left))

        if wait == 0:
            return JSONResponse(await self.call(read))
        return await unless_disconnected(request, poll)

    async def get_sweep(self, request: Request) -> Response:
        """A sweep's leaderboard (`mlsm.web.pages.sweep_page`)."""
        name = request.path_params["name"]

        def read() -> dict[str, Any]:
            with self.store.read() as session:
                board = sweep_page(session, name)
            if board is None:
                raise HttpError(404, f"no sweep {name}: no job has the label {SWEEP_LABEL}={name}")
            return board

        return await self.answer(read)

    async def run_metrics(self, request: Request) -> Response:
        run_id = request.path_params["run"]

        def read() -> dict[str, Any]:
            with self.store.read() as session:
                run = session.get(Run, run_id)
                if run is None:
                    raise HttpError(404, f"no run {run_id}")
                return {"run": run.id, "records": read_metrics(session, run_id)}

        return await self.answer(read)

    async def list_runs(self, request: Request) -> Response:
        def runs() -> dict[str, Any]:
            query = select(Run, Job.name).join(Job)
            job = request.query_params.get("job")
            if job:
                query = query.where(Job.name == job)
            if request.query_params.get("active", "").lower() in ("true", "1"):
                query = query.where(Run.phase.not_in(RunPhase.finished_phases()))
            limit = _int(request, "limit", 100, low=1, high=MAX_LIMIT)
            query = query.order_by(Run.created_at.desc(), Run.id).limit(limit)
            with self.store.read() as session:
                return {"items": [run_json(r, n) for r, n in session.execute(query)]}

        return await self.answer(runs)

    async def list_events(self, request: Request) -> Response:
        def events() -> dict[str, Any]:
            query = select(Event)
            for param, column in (("kind", Event.kind), ("name", Event.name),
                                  ("type", Event.type), ("reason", Event.reason)):  # fmt: skip
                value = request.query_params.get(param)
                if value:
                    query = query.where(column == value)
            query, limit = _page(query, Event, request)
            with self.store.read() as session:
                rows = list(session.scalars(query))
            return _paged([event_json(e) for e in rows], limit, [e.id for e in rows])

        return await self.answer(events)

    async def sync_state(self, request: Request) -> Response:
        def states() -> dict[str, Any]:
            with self.store.read() as session:
                return {"items": [sync_json(s) for s in session.scalars(select(SyncState))]}

        return await self.answer(states)

    async def webhook(self, request: Request) -> Response:
        """A forge's push event. Everything the headers can refuse is refused before
        the body is read (off, unsigned, a wrong GitLab token); the body is read to
        1 MiB at most, and only then is its HMAC checked."""
        if not self.webhook_secret:
            raise HttpError(404, "the webhook is off: start the controller with a webhook secret")
        if not _webhook_may_be_signed(request, self.webhook_secret):
            raise _unsigned()
        body = await read_body(request, WEBHOOK_BODY)
        if not _webhook_signed(request, body, self.webhook_secret):
            raise _unsigned()
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise HttpError(400, "the webhook body is not JSON") from None
        ref = payload.get("ref", "") if isinstance(payload, dict) else ""
        self.request_sync()
        return JSONResponse({"accepted": True, "ref": ref}, status_code=202)

    async def apply(self, request: Request) -> Response:
        return await self._write(request, delete=False)

    async def delete(self, request: Request) -> Response:
        return await self._write(request, delete=True)

    async def _write(self, request: Request, *, delete: bool) -> Response:
        """Write manifests into the local source as a commit by the caller (admin token)."""
        token = bearer(request)
        capacity = self.agents.capacity
        role = await capacity.control_plane(token_role, self.store, token) if token else None
        if role is None:
            raise HttpError(401, "apply and delete need an admin token: --token or MLSM_TOKEN "
                                "(mlsm-controller token issue --role admin)")  # fmt: skip
        if role != "admin":
            raise HttpError(403, f"a {role} token cannot apply or delete; use an admin token")
        body = await read_json(request, APPLY_BODY)
        try:
            text = body["manifests"].encode()
            author = str(body.get("author") or "mlsmctl")
        except (KeyError, TypeError, AttributeError):
            raise HttpError(400, "the body must be JSON: {\"manifests\": \"<YAML>\", "
                                "\"author\": \"Name <email>\"}") from None  # fmt: skip
        if self.source is None:
            raise HttpError(409, "this controller has no source to write into")
        source = self.source

        def write() -> dict[str, Any]:
            changes = committing.plan_writes(self.store, source, text, delete=delete)
            names = [o for c in changes for o in c.objects]
            message = f"mlsmctl {'delete' if delete else 'apply'}: {', '.join(names)}\n"
            commit = committing.write_changes(source, changes, author=author, message=message)
            return {"commit": commit, "objects": names, "files": [c.path for c in changes]}

        try:
            result = await capacity.control_plane(write)
        except committing.WriteRefused as exc:
            raise HttpError(409, str(exc)) from None
        self.request_sync()  # sync now
        return JSONResponse(result)

    async def plan(self, request: Request) -> Response:
        """Where proposed jobs would run now, or why they would wait, and whose queued
        jobs they would delay: the scheduler over the live queue and nodes, read only
        (`mlsmctl plan -f PATH`). Body: {"jobs": [{"manifest": {...}, "owner": "..."}],
        "removed": ["<job the merge prunes>", ...]}."""
        body = await read_json(request, APPLY_BODY)
        items = body.get("jobs") if isinstance(body, dict) else None
        removed = body.get("removed", []) if isinstance(body, dict) else None
        if (
            not isinstance(items, list)
            or len(items) > MAX_PLAN_JOBS
            or not isinstance(removed, list)
            or not all(isinstance(name, str) for name in removed)
        ):
            shape = '{"jobs": [{"manifest": {...}, "owner": "..."}], "removed": ["name"]}'
            raise HttpError(400, f"the body must be JSON: {shape}, at most {MAX_PLAN_JOBS} jobs")
        proposed: list[tuple[schemas.TrainingJob, str]] = []
        for index, item in enumerate(items):
            try:
                job = schemas.TrainingJob.model_validate(item["manifest"])
                owner = str(item.get("owner") or "")
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                first = str(exc).splitlines()[0]
                raise HttpError(400, f"jobs[{index}] is not a valid TrainingJob: {first}") from None
            proposed.append((job, job.metadata.owner or owner))
        grace = self.agents.leases.grace

        def look() -> dict[str, Any]:
            with self.store.read() as session:
                found = scheduling.preview(
                    session, proposed, removed=frozenset(removed), grace=grace
                )
            return {
                "runsOn": found.runs_on,
                "waiting": found.waiting,
                "queue": found.queue,
                "queued": found.queued,
                "delays": found.delays,
                "settled": found.settled,
            }

        return JSONResponse(await self.call(look))

    def _kind(self, plural: str) -> str:
        kind = KINDS.get(plural.lower())
        if kind is None:
            raise HttpError(404, f"no such kind '{plural}'; use nodes, datasets or jobs")
        return kind


def _unsigned() -> HttpError:
    return HttpError(
        401,
        "missing or wrong webhook signature "
        "(X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token)",
    )


def _webhook_may_be_signed(request: Request, secret: str) -> bool:
    """What the headers alone can tell: a signature header is there, and a GitLab
    token (the secret itself) is right."""
    headers = request.headers
    if "x-hub-signature-256" in headers or "x-gitea-signature" in headers:
        return True
    gitlab = headers.get("x-gitlab-token", "")
    return bool(gitlab) and hmac.compare_digest(gitlab.encode(), secret.encode())


def _webhook_signed(request: Request, body: bytes, secret: str) -> bool:
    """GitHub (X-Hub-Signature-256: sha256=HMAC), Gitea (X-Gitea-Signature: HMAC hex)
    and GitLab (X-Gitlab-Token: the secret itself); compared in constant time."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    github = request.headers.get("x-hub-signature-256", "")
    if github:
        return hmac.compare_digest(github.removeprefix("sha256="), expected)
    gitea = request.headers.get("x-gitea-signature", "")
    if gitea:
        return hmac.compare_digest(gitea, expected)
    gitlab = request.headers.get("x-gitlab-token", "")
    if gitlab:
        return hmac.compare_digest(gitlab.encode(), secret.encode())
    return False


def _encode(content: Any) -> bytes:
    """JSON as Starlette's JSONResponse writes it."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def _error(status: int, message: str, *, close: bool = False) -> JSONResponse:
    headers = {"connection": "close"} if close else None
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """The one error answer. A refused request whose body may be unread closes its
    connection, so a client cannot keep streaming a body nobody reads."""
    assert isinstance(exc, HttpError)
    return _error(exc.status, exc.message, close=request.method not in ("GET", "HEAD"))


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"no route {request.method} {request.url.path}")


def create_app(
    store: Store,
    *,
    request_sync: Callable[[], None] = lambda: None,
    webhook_secret: str = "",
    source: ManifestSource | None = None,
    agents: AgentApi | None = None,
    require_token: bool = False,
    site: ASGIApp | None = None,
    telemetry: Telemetry | None = None,
    leadership: Leadership | None = None,
) -> Starlette:
    """The API under /api/v1, and `site` (the status site, `mlsm.web`) under /."""
    agents = agents or AgentApi(store)
    api = Api(store, request_sync, webhook_secret, source, agents, leadership)
    predictions = PredictApi(store, agents, recheck=agents.recheck)
    p = API_PREFIX
    routes: list[BaseRoute] = [
        Route("/healthz", api.healthz),
        Route(f"{p}/sync", api.sync_state),
        Route(f"{p}/runs", api.list_runs),
        Route(p + "/runs/{run}/logs", api.run_logs),
        Route(p + "/runs/{run}/metrics", api.run_metrics),
        Route(f"{p}/events", api.list_events),
        Route(p + "/sweeps/{name}", api.get_sweep),
        Route(f"{p}/hooks/git", api.webhook, methods=["POST"]),
        Route(f"{p}/apply", api.apply, methods=["POST"]),
        Route(f"{p}/delete", api.delete, methods=["POST"]),
        Route(f"{p}/plan", api.plan, methods=["POST"]),
        Route(p + "/jobs/{name}/predict", predictions.request, methods=["POST"]),
        Route(p + "/agent/nodes/{node}/heartbeat", agents.heartbeat, methods=["POST"]),
        Route(p + "/agent/nodes/{node}/assignments", agents.assignments),
        Route(p + "/agent/nodes/{node}/runs/{run}/status", agents.report, methods=["POST"]),
        Route(p + "/agent/nodes/{node}/runs/{run}/output", agents.output, methods=["POST"]),
        Route(p + "/agent/nodes/{node}/predictions/{id}", predictions.take),
        Route(p + "/agent/nodes/{node}/predictions/{id}", predictions.answer, methods=["POST"]),
        Route(p + "/{kind}", api.list_objects),
        Route(p + "/{kind}/{name}", api.get_object),
    ]
    if site is not None:
        routes.append(Mount("/", app=site))
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HttpError: _http_error, 404: _not_found,
    }  # fmt: skip
    timing = [Middleware(TimedRequests, telemetry=telemetry)] if telemetry is not None else []
    return Starlette(
        routes=routes,
        middleware=[
            *timing,
            Middleware(
                ReadAccess,
                store=store,
                reads=agents.capacity.read,
                require_token=require_token,
                open_paths=("/healthz", "/readyz", f"{p}/hooks/git"),
                open_prefixes=(f"{p}/agent/",),  # node tokens, checked there
            ),
        ],
        exception_handlers=handlers,
    )
