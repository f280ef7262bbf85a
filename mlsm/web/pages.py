"""What each page of the status site shows, read from the store: one function per
page, taking a session and the page's query, returning plain data for its template.

Everything here is a bounded read: lists are paginated by keyset (a page deep in the
list costs what the first costs), a job's log is read from its tail, never whole.
Called in a worker thread by `mlsm.web.site`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import Session

from mlsm import scores
from mlsm.errors import HttpError
from mlsm.manifests import dump_yaml
from mlsm.schemas.phases import JobPhase, RunPhase
from mlsm.schemas.sweeps import PARALLELISM_LABEL, SWEEP_LABEL, SWEPT_FIELDS
from mlsm.store import Dataset, Event, Job, Node, Run, StoredObject, SyncState
from mlsm.store.outputs import read_log, read_metrics

__all__ = [
    "JOB_SORTS",
    "PAGE_SIZE",
    "BadQuery",
    "datasets_page",
    "events_page",
    "find_object",
    "gpu_count",
    "gpus_in_use",
    "is_ready",
    "job_page",
    "jobs_by_phase",
    "jobs_page",
    "node_page",
    "nodes_page",
    "overview_page",
    "syncs_page",
]

PAGE_SIZE = 50
LOG_TAIL = 200
"""Log lines a job page shows at load (more follow live)."""
EVENTS_SHOWN = 50
METRIC_RECORDS = 20_000
"""Metric records a job page reads for its chart and table (the first ones)."""

JOB_SORTS = {
    "created": Job.created_at,
    "updated": Job.updated_at,
    "name": Job.name,
    "priority": Job.priority,
    "phase": Job.phase,
}


class BadQuery(HttpError):
    """A query parameter the page cannot use: a 400 that names it."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


# -- shared ------------------------------------------------------------------------


def condition(row: StoredObject, kind: str) -> dict[str, Any] | None:
    return next((c for c in row.conditions or [] if c.get("type") == kind), None)


def spec_of(row: StoredObject) -> dict[str, Any]:
    spec = (row.manifest or {}).get("spec")
    return spec if isinstance(spec, dict) else {}


def is_ready(node: Node) -> bool | None:
    """The node's Ready condition; None before its first heartbeat."""
    ready = condition(node, "Ready")
    return None if ready is None else ready.get("status") == "True"


def gpu_count(node: Node) -> int:
    reported = node.inventory.get("gpus")
    if isinstance(reported, list):
        return len(reported)
    return int((spec_of(node).get("capacity") or {}).get("gpus") or 0)


def runtimes_of(node: Node) -> tuple[list[str], dict[str, str]]:
    """The runtimes the manifest allows that the agent offers, and those it allows
    and the agent does not, with why (before any heartbeat: all allowed)."""
    allowed = [str(r) for r in spec_of(node).get("runtimes", ["venv", "docker"])]
    offered = node.inventory.get("runtimes")
    if offered is None:
        return allowed, {}
    problems = node.inventory.get("runtimeProblems") or {}
    missing = {
        r: str(problems.get(r, "the agent does not offer it")) for r in allowed if r not in offered
    }
    return [r for r in allowed if r in offered], missing


def waiting_reason(job: Job) -> str:
    """Why a pending job waits, in the scheduler's words."""
    if job.phase != "Pending":
        return ""
    if job.next_attempt_at is not None and job.next_attempt_at > dt.datetime.now(dt.UTC):
        return f"retrying after a backoff, at {job.next_attempt_at:%H:%M:%S} UTC"
    scheduled = condition(job, "Scheduled")
    if scheduled and scheduled.get("status") == "False":
        return str(scheduled.get("message", ""))
    if (spec_of(job).get("suspend")) is True:
        return "suspended (spec.suspend)"
    return "waiting for the next scheduling pass"


def _live(query: Select[Any], model: type[StoredObject]) -> Select[Any]:
    return query.where(model.deleted_at.is_(None))


def _latest_runs(session: Session, job_ids: list[int]) -> dict[int, Run]:
    latest: dict[int, Run] = {}
    if job_ids:
        for run in session.scalars(
            select(Run).where(Run.job_id.in_(job_ids)).order_by(Run.attempt, Run.created_at)
        ):
            latest[run.job_id] = run
    return latest


def _labels(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise BadQuery(f"label '{part}' must be key=value, e.g. team=vision")
        out[key.strip()] = value.strip()
    return out


# -- keyset cursors ----------------------------------------------------------------


def encode_cursor(values: list[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, dt.datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def decode_cursor(raw: str, kinds: list[type]) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError
        out: list[Any] = []
        for value, kind in zip(values, kinds, strict=True):
            if kind is dt.datetime:
                out.append(dt.datetime.fromisoformat(value))
            elif not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError
            else:
                out.append(value)
        return out
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadQuery(f"the page cursor '{raw[:40]}' is not one this site wrote") from None


# -- overview ----------------------------------------------------------------------


def jobs_by_phase(session: Session) -> dict[str, int]:
    """Live jobs per phase, every phase listed (in lifecycle order)."""
    counts = {str(p): 0 for p in JobPhase}
    query = select(Job.phase, func.count()).where(Job.deleted_at.is_(None)).group_by(Job.phase)
    for phase, count in session.execute(query):
        counts[phase] = count
    return counts


def gpus_in_use(session: Session) -> int:
    """GPUs bound to active runs, over the whole fleet."""
    active = select(Run.gpus).where(Run.phase.in_(RunPhase.active_phases()))
    return sum(len(gpus) for gpus in session.scalars(active) if isinstance(gpus, list))


def overview_page(session: Session) -> dict[str, Any]:
    by_phase = jobs_by_phase(session)
    nodes = list(session.scalars(_live(select(Node), Node).order_by(Node.name)))
    used = gpus_in_use(session)
    total = sum(gpu_count(n) for n in nodes)
    running = list(
        session.scalars(
            _live(select(Job), Job)
            .where(Job.phase.in_(("Scheduled", "Starting", "Running")))
            .order_by(Job.updated_at.desc())
            .limit(10)
        )
    )
    latest = _latest_runs(session, [j.id for j in running])
    return {
        "by_phase": by_phase,
        "jobs_total": sum(by_phase.values()),
        "nodes_ready": sum(1 for n in nodes if is_ready(n)),
        "nodes_not_ready": [n for n in nodes if not is_ready(n)],
        "nodes_total": len(nodes),
        "gpus_used": used,
        "gpus_free": max(total - used, 0),
        "gpus_total": total,
        "syncs": list(session.scalars(select(SyncState).order_by(SyncState.source))),
        "running": [(j, latest.get(j.id)) for j in running],
        "events": list(session.scalars(select(Event).order_by(Event.id.desc()).limit(10))),
    }


# -- jobs --------------------------------------------------------------------------


@dataclass
class JobsQuery:
    phase: list[str] = field(default_factory=list)
    owner: str = ""
    node: str = ""
    label: str = ""
    q: str = ""
    sort: str = "created"
    order: str = "desc"
    after: str = ""
    before: str = ""

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> JobsQuery:
        query = cls(
            phase=[p for p in params.get("phase", "").split(",") if p],
            owner=params.get("owner", "").strip(),
            node=params.get("node", "").strip(),
            label=params.get("label", "").strip(),
            q=params.get("q", "").strip()[:63],
            sort=params.get("sort", "created") or "created",
            order=params.get("order", "desc") or "desc",
            after=params.get("after", ""),
            before=params.get("before", ""),
        )
        unknown = [p for p in query.phase if p not in JobPhase.__members__.values()]
        if unknown:
            raise BadQuery(f"phase '{unknown[0]}' is not one of {', '.join(JobPhase)}")
        if query.sort not in JOB_SORTS:
            raise BadQuery(f"sort '{query.sort[:20]}' is not one of {', '.join(JOB_SORTS)}")
        if query.order not in ("asc", "desc"):
            raise BadQuery("order must be asc or desc")
        return query

    def link(self, **changes: str) -> dict[str, str]:
        """The query parameters of this list with `changes`, for a link (empty ones left
        out, and the cursor dropped unless given)."""
        values = {
            "phase": ",".join(self.phase),
            "owner": self.owner,
            "node": self.node,
            "label": self.label,
            "q": self.q,
            "sort": self.sort,
            "order": self.order,
        }
        values.update(changes)
        return {k: v for k, v in values.items() if v and (k, v) not in _DEFAULTS}


_DEFAULTS = {("sort", "created"), ("order", "desc")}


def jobs_page(session: Session, query: JobsQuery) -> dict[str, Any]:
    column = JOB_SORTS[query.sort]
    kind = {"created": dt.datetime, "updated": dt.datetime, "priority": int}.get(query.sort, str)
    stmt = _live(select(Job), Job)
    if query.phase:
        stmt = stmt.where(Job.phase.in_(query.phase))
    if query.owner:
        stmt = stmt.where(Job.owner == query.owner)
    if query.node:
        stmt = stmt.where(Job.id.in_(select(Run.job_id).where(Run.node == query.node)))
    for key, value in _labels(query.label).items():
        stmt = stmt.where(Job.labels[key].as_string() == value)
    if query.q:
        stmt = stmt.where(Job.name.contains(query.q, autoescape=True))
    descending = query.order == "desc"
    backwards = bool(query.before) and not query.after
    if query.after or query.before:
        value, row_id = decode_cursor(query.after or query.before, [kind, int])
        mark = tuple_(column, Job.id)
        later = mark < tuple_(value, row_id) if descending else mark > tuple_(value, row_id)
        earlier = mark > tuple_(value, row_id) if descending else mark < tuple_(value, row_id)
        stmt = stmt.where(earlier if backwards else later)
    down = descending != backwards
    stmt = stmt.order_by(column.desc() if down else column.asc(), Job.id.desc() if down else Job.id)
    rows = list(session.scalars(stmt.limit(PAGE_SIZE + 1)))
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    if backwards:
        rows.reverse()
    latest = _latest_runs(session, [j.id for j in rows])

    def cursor(job: Job) -> str:
        return encode_cursor([getattr(job, column.key), job.id])

    has_next = more if not backwards else True
    has_prev = (more if backwards else bool(query.after)) and bool(rows)
    return {
        "query": query,
        "jobs": [(j, latest.get(j.id), waiting_reason(j)) for j in rows],
        "next": query.link(after=cursor(rows[-1])) if rows and has_next else None,
        "prev": query.link(before=cursor(rows[0])) if has_prev else None,
        "phases": list(JobPhase),
        "sorts": list(JOB_SORTS),
    }


# -- one job -----------------------------------------------------------------------


def find_object(session: Session, model: type[StoredObject], name: str) -> Any:
    """The live object of that name, else its latest deleted incarnation, else None
    (the site's pages and the read API's `GET /{kind}/{name}`)."""
    return session.scalars(
        select(model)
        .where(model.name == name)
        .order_by(model.deleted_at.is_not(None), model.id.desc())
        .limit(1)
    ).first()


def job_page(
    session: Session, name: str, run_id: str = "", *, log: bool = True
) -> dict[str, Any] | None:
    job: Job | None = find_object(session, Job, name)
    if job is None:
        return None
    runs = list(job.runs)
    run = next((r for r in runs if r.id == run_id), None) if run_id else None
    # by default the latest attempt's run that hosts process rank 0 (its metrics)
    run = run or _metrics_run(runs)
    lines = read_log(session, run.id, tail=LOG_TAIL) if run and log else []
    records = read_metrics(session, run.id, limit=METRIC_RECORDS) if run else []
    columns, epochs = scores.per_epoch(records)
    spec = spec_of(job)
    trainer = spec.get("trainer") if isinstance(spec.get("trainer"), dict) else None
    events = list(
        session.scalars(
            select(Event)
            .where(Event.kind == "TrainingJob", Event.name == name)
            .order_by(Event.id.desc())
            .limit(EVENTS_SHOWN)
        )
    )
    return {
        "job": job,
        "spec": spec,
        "spec_yaml": dump_yaml(job.manifest) if job.manifest else "",
        "runs": runs,
        "run": run,
        "lines": lines,
        "log_cursor": lines[-1][0] if lines else -1,
        "log_offset": run.log_offset if run else 0,
        "records": records,
        "metric_columns": columns,
        "epochs": epochs,
        "best": scores.best_score(trainer, records) if trainer is not None else None,
        "checkpoint_folders": scores.checkpoint_folders(trainer) if trainer is not None else [],
        "per_class": scores.per_class(records),
        "sweep": job.labels.get(SWEEP_LABEL),
        "provenance": scores.provenance_facts(scores.provenance_of(records) or {}),
        "output": f"{run.node}:{run.output_dir}" if run and run.output_dir else "",
        "events": events[::-1],
        "timeline": timeline(job, runs),
        "waiting": waiting_reason(job),
        "finished": job.phase in JobPhase.finished_phases(),
    }


def _metrics_run(runs: list[Run]) -> Run | None:
    """The latest attempt's run that hosts process rank 0 (its metrics)."""
    return max(runs, key=lambda r: (r.attempt, 0 in (r.ranks or []), -r.rank), default=None)


def sweep_page(session: Session, name: str) -> dict[str, Any] | None:
    """A sweep's leaderboard: each child's swept values, phase and best monitored
    metric, best first (children without a score yet last, in order)."""
    children = list(
        session.scalars(_live(select(Job), Job).where(Job.labels[SWEEP_LABEL].as_string() == name))
    )
    if not children:
        return None
    rows = []
    metric, mode = "accuracy", "max"
    swept: dict[str, None] = {}
    for job in children:
        trainer = spec_of(job).get("trainer") or {}
        run = _metrics_run(list(job.runs))
        records = read_metrics(session, run.id, limit=METRIC_RECORDS) if run else []
        best = scores.best_score(trainer, records)
        metric, mode = best.metric, best.mode
        values = {k: v for k, v in job.labels.items() if k in SWEPT_FIELDS}
        swept.update(dict.fromkeys(values))
        row = {"name": job.name, "phase": job.phase, "parameters": values, "best": best.value}
        row["epoch"], row["node"] = best.epoch, run.node if run else None
        row["index"] = int(job.name.rpartition("-")[2] or 0)
        rows.append(row)
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda r: (r["best"] is None, sign * (r["best"] or 0), r["index"]))
    limit = children[0].labels.get(PARALLELISM_LABEL)
    return {
        "sweep": name,
        "metric": metric,
        "mode": mode,
        "parallelism": int(limit) if limit and limit.isdigit() else None,
        "parameters": list(swept),
        "children": rows,
        "phases": dict(sorted(Counter(r["phase"] for r in rows).items())),
    }


def timeline(job: Job, runs: list[Run]) -> list[dict[str, Any]]:
    """The job's way through its phases: created, then per run scheduled, running and
    finished, each with when and how long it lasted until the next step."""
    steps: list[dict[str, Any]] = [{"phase": "Pending", "at": job.created_at, "what": "created"}]
    for run in runs:
        where = f"attempt {run.attempt} on {run.node or '-'}"
        steps.append({"phase": "Scheduled", "at": run.created_at, "what": where})
        if run.started_at:
            steps.append({"phase": "Running", "at": run.started_at, "what": where})
        if run.finished_at:
            detail = f"{where}: {run.reason}" + (
                f" (exit code {run.exit_code})" if run.exit_code is not None else ""
            )
            steps.append({"phase": run.phase, "at": run.finished_at, "what": detail})
    now = dt.datetime.now(dt.UTC)
    for step, following in zip(steps, [*steps[1:], None], strict=True):
        end = (
            following["at"]
            if following
            else (None if job.phase in JobPhase.finished_phases() else now)
        )
        step["lasted"] = (end - step["at"]).total_seconds() if end else None
    return steps


# -- nodes -------------------------------------------------------------------------


def _active_runs(session: Session, node: str | None = None) -> list[tuple[Run, str]]:
    query = select(Run, Job.name).join(Job).where(Run.phase.in_(RunPhase.active_phases()))
    if node is not None:
        query = query.where(Run.node == node)
    return [(r, n) for r, n in session.execute(query)]


def nodes_page(session: Session) -> dict[str, Any]:
    nodes = list(session.scalars(_live(select(Node), Node).order_by(Node.name)))
    used: dict[str, int] = {}
    jobs: dict[str, int] = {}
    for run, _job in _active_runs(session):
        if run.node:
            used[run.node] = used.get(run.node, 0) + len(run.gpus or [])
            jobs[run.node] = jobs.get(run.node, 0) + 1
    return {
        "nodes": [
            {
                "node": n,
                "ready": is_ready(n),
                "gpus": gpu_count(n),
                "used": used.get(n.name, 0),
                "jobs": jobs.get(n.name, 0),
                "runtimes": runtimes_of(n),
                "cordoned": bool(spec_of(n).get("unschedulable")),
            }
            for n in nodes
        ]
    }


def node_page(session: Session, name: str) -> dict[str, Any] | None:
    node: Node | None = find_object(session, Node, name)
    if node is None:
        return None
    bound: dict[int, tuple[str, str]] = {}
    for run, job in _active_runs(session, name):
        for index in run.gpus or []:
            bound[int(index)] = (run.id, job)
    reported = node.inventory.get("gpus")
    gpus = (
        reported if isinstance(reported, list) else [{"index": i} for i in range(gpu_count(node))]
    )
    runs = [
        (r, n)
        for r, n in session.execute(
            select(Run, Job.name)
            .join(Job)
            .where(Run.node == name)
            .order_by(Run.created_at.desc())
            .limit(EVENTS_SHOWN)
        )
    ]
    held = node.inventory.get("datasets")
    return {
        "node": node,
        "spec": spec_of(node),
        "ready": is_ready(node),
        "ready_condition": condition(node, "Ready"),
        "gpus": [(g, bound.get(int(g.get("index", -1)))) for g in gpus if isinstance(g, dict)],
        "runtimes": runtimes_of(node),
        "runs": runs,
        "datasets": held if isinstance(held, dict) else {},
        "inventory": node.inventory,
        "events": list(
            session.scalars(
                select(Event)
                .where(Event.kind == "Node", Event.name == name)
                .order_by(Event.id.desc())
                .limit(20)
            )
        )[::-1],
    }


# -- datasets ----------------------------------------------------------------------


def datasets_page(session: Session) -> dict[str, Any]:
    inventories = {
        n.name: n.inventory.get("datasets") or {}
        for n in session.scalars(_live(select(Node), Node))
    }
    out = []
    for dataset in session.scalars(_live(select(Dataset), Dataset).order_by(Dataset.name)):
        spec = spec_of(dataset)
        expected = spec.get("checksum")
        copies = []
        for location in spec.get("locations") or []:
            node = str(location.get("node", ""))
            held = inventories.get(node, {}).get(dataset.name) if node in inventories else None
            reported = held.get("checksum") if isinstance(held, dict) else None
            if not isinstance(held, dict):
                agreement = "not reported" if node in inventories else "no such node"
            elif not expected:
                agreement = "no checksum in the manifest"
            elif reported == expected:
                agreement = "agrees"
            else:
                agreement = "DIFFERS"
            copies.append(
                {
                    "node": node,
                    "path": location.get("path", ""),
                    "held": held if isinstance(held, dict) else None,
                    "agreement": agreement,
                }
            )
        out.append({"dataset": dataset, "spec": spec, "copies": copies})
    return {"datasets": out}


# -- syncs and the audit log -------------------------------------------------------

COMMITS_SHOWN = 20


def syncs_page(session: Session) -> dict[str, Any]:
    commits: dict[str, dict[str, Any]] = {}
    for event in session.scalars(
        select(Event).where(Event.commit_sha != "").order_by(Event.id.desc()).limit(500)
    ):
        entry = commits.get(event.commit_sha)
        if entry is None:
            if len(commits) >= COMMITS_SHOWN:
                break
            entry = commits[event.commit_sha] = {
                "sha": event.commit_sha,
                "at": event.at,
                "author": event.actor,
                "changes": [],
            }
        entry["changes"].append(event)
    invalid = []
    for model in (Node, Dataset, Job):
        for row in session.scalars(_live(select(model), model).order_by(model.name)):
            valid = condition(row, "Valid")
            if valid is not None and valid.get("status") == "False":
                invalid.append({"row": row, "message": valid.get("message", "")})
    return {
        "syncs": list(session.scalars(select(SyncState).order_by(SyncState.source))),
        "commits": list(commits.values()),
        "invalid": invalid,
    }


@dataclass
class EventsQuery:
    kind: str = ""
    name: str = ""
    actor: str = ""
    reason: str = ""
    type: str = ""
    before: int = 0

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> EventsQuery:
        raw = params.get("before", "")
        if raw and (not raw.isdigit() or len(raw) > 18):
            raise BadQuery(f"before '{raw[:20]}' must be an event number")
        return cls(
            kind=params.get("kind", "").strip(),
            name=params.get("name", "").strip(),
            actor=params.get("actor", "").strip(),
            reason=params.get("reason", "").strip(),
            type=params.get("type", "").strip(),
            before=int(raw or 0),
        )

    def link(self, **changes: str) -> dict[str, str]:
        values = {
            "kind": self.kind,
            "name": self.name,
            "actor": self.actor,
            "reason": self.reason,
            "type": self.type,
        }
        values.update(changes)
        return {k: v for k, v in values.items() if v}


def events_page(session: Session, query: EventsQuery) -> dict[str, Any]:
    stmt = select(Event)
    for value, column in (
        (query.kind, Event.kind),
        (query.name, Event.name),
        (query.reason, Event.reason),
        (query.type, Event.type),
    ):
        if value:
            stmt = stmt.where(column == value)
    if query.actor:
        stmt = stmt.where(Event.actor.contains(query.actor, autoescape=True))
    if query.before:
        stmt = stmt.where(Event.id < query.before)
    rows = list(session.scalars(stmt.order_by(Event.id.desc()).limit(PAGE_SIZE * 2 + 1)))
    more = len(rows) > PAGE_SIZE * 2
    rows = rows[: PAGE_SIZE * 2]
    return {
        "query": query,
        "events": rows,
        "older": query.link(before=str(rows[-1].id)) if more else None,
        "kinds": ("TrainingJob", "Node", "Dataset", "Sync", "Store"),
    }
