"""`mlsmctl predict job NAME IMAGE...` through the node that holds the job's checkpoints.

Agents serve nothing: they only call the controller. So a prediction travels the
way work does. The caller POSTs the images to `/api/v1/jobs/{name}/predict` (a read
token, as every read; none from loopback). The controller finds the job's latest run
that wrote checkpoints and refuses at once, saying what to do, when that run's node
is not Ready. Otherwise it keeps the request as a row (`store.Prediction`) and bumps
the node's assignment revision, so the agent's long poll answers at once with the
request's id. The agent fetches the images (`GET .../agent/nodes/{node}/predictions/
{id}`: a node token, and only its own node's rows), classifies them with the
checkpoint of the job it holds (its own `jobs/<job>/output/checkpoints/best`: the
request names a job, never a path) and posts the labels back. The caller's
controller, woken by the output event (which the other controllers on the database
hear too), answers and deletes the row; a caller who leaves takes the row with it,
and rows nobody read go after `EXPIRE`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mlsm.controller.inputs import HttpError, read_json, seconds, unless_disconnected
from mlsm.store import Job, Node, Prediction, Run, Store
from mlsm.store.conflicts import retry_on_conflict
from mlsm.store.types import utcnow
from mlsm.web.access import bearer

if TYPE_CHECKING:  # agents.py lists the pending requests with `pending_predictions`
    from mlsm.controller.agents import AgentApi

__all__ = ["MAX_IMAGES", "PREDICT_BODY", "PredictApi", "pending_predictions"]

MiB = 1 << 20
PREDICT_BODY = 16 * MiB
"""The images of one request, base64 in JSON (some 12 MiB of image files)."""
MAX_IMAGES = 64
MAX_TOP_K = 100
WAIT_SECONDS = 120.0
"""How long a caller waits for the agent by default (the agent's classifier starts a
Python process that imports PyTorch and loads the model: some seconds)."""
EXPIRE = dt.timedelta(minutes=15)
ANSWER_BODY = 1 * MiB
AGENT_STATUSES = frozenset({400, 404, 409, 500})
"""What an agent may say went wrong: an image it cannot read (400), no checkpoint of
that job on the node (404, 409), the classifier failing (500)."""


def pending_predictions(session: Session, node: str) -> list[dict[str, str]]:
    """The requests waiting for `node`'s agent (in its assignments answer)."""
    rows = session.scalars(
        select(Prediction).where(Prediction.node == node, Prediction.taken_at.is_(None))
    )
    return [{"id": row.id, "job": row.job} for row in rows]


class PredictApi:
    """The caller's route and the agent's two; `agents` authenticates nodes, tells
    them and carries the wake-ups between controllers."""

    def __init__(self, store: Store, agents: AgentApi, *, recheck: float = 1.0) -> None:
        self.store = store
        self.agents = agents
        self.recheck = recheck

    # the caller ----------------------------------------------------------------------

    async def request(self, request: Request) -> Response:
        """Body: {"images": [{"name": "cat.png", "data": "<base64>"}], "topK": 3}.
        Query: `wait` (seconds, default 120). Answers {job, run, node, checkpoint,
        predictions: [{image, labels: [[label, probability], ...]}]}."""
        name = request.path_params["name"]
        wait = seconds(request.query_params, "wait", default=WAIT_SECONDS, high=600.0)
        images, top_k = _request_body(await read_json(request, PREDICT_BODY))
        capacity = self.agents.capacity
        queued: str = await capacity.control_plane(self._queue, name, images, top_k)
        self.agents.assignments_moved()  # the node's long poll answers now
        try:
            return await unless_disconnected(request, lambda: self._answer(queued, wait))
        finally:
            with anyio.CancelScope(shield=True):
                await capacity.control_plane(self._forget, queued)

    def _queue(self, name: str, images: list[dict[str, str]], top_k: int) -> str:
        def transaction() -> str:
            now = utcnow()
            with self.store.write() as session:
                job = session.scalars(
                    select(Job).where(Job.name == name, Job.deleted_at.is_(None))
                ).first()
                if job is None:
                    raise HttpError(404, f"no job {name}")
                spec = (job.manifest or {}).get("spec", {})
                if not spec.get("trainer"):
                    raise HttpError(
                        409,
                        f"job {name} runs its own code (no spec.trainer): its checkpoints "
                        "are in its own format; mlsmctl predict reads the built-in "
                        "trainer's",
                    )
                run = checkpoint_run(job.runs)
                if run is None or not run.node:
                    raise HttpError(
                        409,
                        f"job {name} has no run that wrote checkpoints yet (phase "
                        f"{job.phase}); the trainer saves one after its first epoch",
                    )
                node = session.scalars(
                    select(Node).where(Node.name == run.node, Node.deleted_at.is_(None))
                ).first()
                if node is None or not self.agents.leases.is_ready(node.last_heartbeat_at, now):
                    raise HttpError(503, _node_down(name, run, node, now))
                session.execute(delete(Prediction).where(Prediction.created_at < now - EXPIRE))
                row = Prediction(
                    id=str(uuid.uuid4()),
                    node=run.node,
                    job=name,
                    run_id=run.id,
                    top_k=top_k,
                    images=images,
                    created_at=now,
                )
                session.add(row)
                node.assignment_revision += 1
                return row.id

        return retry_on_conflict(transaction)

    async def _answer(self, queued: str, wait: float) -> Response:
        """The answer, or the refusal as the one error answer (raised here it would
        leave `unless_disconnected`'s task group as an exception group)."""
        try:
            return await self._wait(queued, wait)
        except HttpError as exc:
            return JSONResponse(
                {"error": exc.message, "status": exc.status}, status_code=exc.status
            )

    async def _wait(self, queued: str, wait: float) -> Response:
        deadline = anyio.current_time() + wait
        while True:
            row = await self.agents.capacity.read(self._read, queued)
            if row is None:
                raise HttpError(410, "the request was dropped (expired or answered elsewhere)")
            if row.answered_at is not None:
                return _answer_of(row)
            left = deadline - anyio.current_time()
            if left <= 0:
                raise HttpError(504, _late(row, wait))
            await self.agents.wait_output(min(self.recheck, left))

    def _read(self, queued: str) -> Prediction | None:
        with self.store.read() as session:
            row = session.get(Prediction, queued)
            if row is not None:
                session.expunge(row)
            return row

    def _forget(self, queued: str) -> None:
        with self.store.write() as session:
            session.execute(delete(Prediction).where(Prediction.id == queued))

    # the agent -----------------------------------------------------------------------

    async def take(self, request: Request) -> Response:
        """The agent fetches a request for its node: the job and the images."""
        node = request.path_params["node"]
        await self.agents.authenticate(node, bearer(request))
        taken = await self.agents.capacity.agent(self._take, node, request.path_params["id"])
        return JSONResponse(taken)

    def _take(self, node: str, queued: str) -> dict[str, Any]:
        with self.store.write() as session:
            row = session.get(Prediction, queued)
            if row is None or row.node != node:  # another node's: not even that it exists
                raise HttpError(404, f"no prediction request {queued[:36]} for node {node}")
            row.taken_at = row.taken_at or utcnow()
            return {
                "id": row.id,
                "job": row.job,
                "run": row.run_id,
                "topK": row.top_k,
                "images": row.images,
            }

    async def answer(self, request: Request) -> Response:
        """The agent's answer: {"checkpoint": "best", "labels": [[[label, p], ...], ...]}
        (one list per image, in order) or {"error": "...", "status": 400|404|409|500}."""
        node = request.path_params["node"]
        await self.agents.authenticate(node, bearer(request))
        body = await read_json(request, ANSWER_BODY)
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        await self.agents.capacity.agent(self._store_answer, node, request.path_params["id"], body)
        self.agents.output_moved()  # wakes the caller's controller, here or elsewhere
        return JSONResponse({"ok": True})

    def _store_answer(self, node: str, queued: str, body: dict[str, Any]) -> None:
        with self.store.write() as session:
            row = session.get(Prediction, queued)
            if row is None or row.node != node:
                raise HttpError(404, f"no prediction request {queued[:36]} for node {node}")
            row.answer = _agent_answer(body, len(row.images))
            row.answered_at = utcnow()


def checkpoint_run(runs: list[Run]) -> Run | None:
    """The run whose node holds the job's checkpoints: of the runs that said where
    their outputs are, the latest attempt's, node rank 0 (which hosts process rank 0,
    the one that saves them)."""
    placed = [run for run in runs if run.output_dir and run.node]
    return max(placed, key=lambda r: (r.attempt, r.rank == 0, r.created_at), default=None)


def _request_body(body: Any) -> tuple[list[dict[str, str]], int]:
    shape = '{"images": [{"name": "cat.png", "data": "<base64>"}], "topK": 3}'
    images = body.get("images") if isinstance(body, dict) else None
    top_k = body.get("topK", 3) if isinstance(body, dict) else None
    if not isinstance(images, list) or not images:
        raise HttpError(400, f"the body must be JSON: {shape}")
    if len(images) > MAX_IMAGES:
        raise HttpError(400, f"{len(images)} images in one request; at most {MAX_IMAGES}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise HttpError(400, f"topK must be a whole number from 1 to {MAX_TOP_K}")
    checked = []
    for index, image in enumerate(images):
        name = image.get("name") if isinstance(image, dict) else None
        data = image.get("data") if isinstance(image, dict) else None
        if not isinstance(name, str) or not isinstance(data, str) or not data:
            raise HttpError(400, f'images[{index}] must be {{"name": ..., "data": <base64>}}')
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise HttpError(400, f"images[{index}] ({name[:100]}): data is not base64") from None
        checked.append({"name": name[:200], "data": data})
    return checked, top_k


def _agent_answer(body: dict[str, Any], images: int) -> dict[str, Any]:
    if "error" in body:
        status = body.get("status")
        return {
            "error": str(body["error"])[:2000],
            "status": status if status in AGENT_STATUSES else 500,
        }
    labels = body.get("labels")
    if not (
        isinstance(labels, list)
        and len(labels) == images
        and all(
            isinstance(ranked, list)
            and all(
                isinstance(pair, list)
                and len(pair) == 2
                and isinstance(pair[0], str)
                and isinstance(pair[1], int | float)
                for pair in ranked
            )
            for ranked in labels
        )
    ):
        raise HttpError(400, f"labels must be {images} lists of [label, probability] pairs")
    return {"checkpoint": str(body.get("checkpoint") or "best")[:64], "labels": labels}


def _answer_of(row: Prediction) -> Response:
    answer = row.answer
    if "error" in answer:
        raise HttpError(int(answer.get("status") or 500), f"node {row.node}: {answer['error']}")
    predictions = [
        {"image": image["name"], "labels": labels}
        for image, labels in zip(row.images, answer["labels"], strict=True)
    ]
    return JSONResponse(
        {
            "job": row.job,
            "run": row.run_id,
            "node": row.node,
            "checkpoint": answer.get("checkpoint", "best"),
            "predictions": predictions,
        }
    )


def _node_down(job: str, run: Run, node: Node | None, now: dt.datetime) -> str:
    copy = (
        f"copy {run.node}:{run.output_dir}/checkpoints/best to this machine and run "
        f"mlsmctl predict job {job} --checkpoint DIR IMAGE..."
    )
    where = f"job {job}'s checkpoints are on node {run.node}"
    if node is None:
        return f"{where}, which is no longer in the manifests: {copy}"
    if node.last_heartbeat_at is None:
        state = "whose agent has never sent a heartbeat"
    else:
        ago = int((now - node.last_heartbeat_at).total_seconds())
        state = f"whose agent is not answering (its last heartbeat was {_duration(ago)} ago)"
    return f"{where}, {state}. Start mlsm-agent on {run.node}, or {copy}"


def _late(row: Prediction, wait: float) -> str:
    if row.taken_at is None:
        return (
            f"node {row.node}'s agent did not take the request in {wait:g} s: it sends "
            "heartbeats but does not ask for work (an agent older than predict, or one "
            "that cannot reach this controller's database?)"
        )
    return (
        f"node {row.node}'s agent took the request but did not answer in {wait:g} s; "
        f"its log on {row.node} says why (try again with a longer --timeout)"
    )


def _duration(total: int) -> str:
    if total < 120:
        return f"{total} s"
    if total < 7200:
        return f"{total // 60} min"
    return f"{total // 3600} h"
