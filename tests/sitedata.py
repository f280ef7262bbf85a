"""Rows for the status site's tests and benchmark: nodes, a dataset, jobs with runs,
log lines and metric records, events and a sync state, written straight into a
store (the site only reads; how rows get there is the controller's business and
tested there)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any

from sqlalchemy import insert

from mlsm.store import Dataset, Event, Job, LogLine, MetricRecord, Node, Run, Store, SyncState
from mlsm.store.types import utcnow

__all__ = ["XSS", "add_job", "add_lines", "add_metrics", "populate"]

XSS = "<script>alert(1)</script>"


def _object(model: type[Any], name: str, spec: dict[str, Any], **extra: Any) -> Any:
    manifest = {
        "apiVersion": "mlsm/v1",
        "kind": model.kind,
        "metadata": {"name": name, "labels": extra.get("labels", {})},
        "spec": spec,
    }
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return model(
        uid=str(uuid.uuid4()),
        name=name,
        manifest=manifest,
        spec_hash=digest,
        source_path=f"{model.__tablename__}/{name}.yaml",
        source_line=1,
        commit_sha="c0ffee" * 6 + "abcd",
        commit_author="Ada <ada@lab>",
        commit_message=f"add {name} {XSS}",
        **extra,
    )


def add_job(
    session: Any,
    name: str,
    *,
    phase: str = "Pending",
    owner: str = "ada",
    labels: dict[str, str] | None = None,
    node: str | None = None,
    created: dt.datetime | None = None,
    trainer: bool = False,
) -> Job:
    spec: dict[str, Any] = {"runtime": {"venv": {"python": "3.11"}}, "resources": {"gpus": 1}}
    if trainer:
        spec["trainer"] = {"model": "builtin:vit-tiny", "epochs": 3}
    else:
        spec["command"] = ["python", "train.py"]
    job = _object(Job, name, spec, labels=labels or {}, phase=phase, owner=owner)
    if created is not None:
        job.created_at = job.updated_at = created
    session.add(job)
    session.flush()
    if node is not None:
        run = Run(
            id=str(uuid.uuid4()),
            job_id=job.id,
            attempt=1,
            node=node,
            gpus=[0],
            phase="Running" if phase == "Running" else phase,
            started_at=utcnow(),
            output_dir=f"/srv/mlsm/runs/{name}",
        )
        session.add(run)
        session.flush()
    return job


def add_lines(session: Any, run_id: str, texts: list[str], *, start: int = 0) -> int:
    """Log lines at made-up byte offsets from `start`; returns the next offset."""
    rows, offset = [], start
    for text in texts:
        rows.append({"run_id": run_id, "offset": offset, "text": text})
        offset += len(text.encode()) + 1
    if rows:
        session.execute(insert(LogLine), rows)
    session.get_one(Run, run_id).log_offset = offset
    return offset


def add_metrics(session: Any, run_id: str, epochs: int, *, start: int = 0) -> int:
    rows, offset = [], start
    for epoch in range(1, epochs + 1):
        for split, name, value in (
            ("train", "loss", 2.0 / epoch),
            ("val", "loss", 2.2 / epoch),
            ("val", "accuracy", 1 - 0.5 / epoch),
        ):
            record = {
                "step": epoch * 10,
                "epoch": epoch,
                "split": split,
                "name": name,
                "value": value,
            }
            rows.append({"run_id": run_id, "offset": offset, "record": record})
            offset += 80
    per_class = {"step": epochs * 10, "epoch": epochs, "split": "val", "name": "classes",
                 "classes": ["cat", XSS], "precision": [0.8889, 0.8182],
                 "recall": [0.8, 0.9], "confusion": [[8, 2], [1, 9]]}  # fmt: skip
    rows.append({"run_id": run_id, "offset": offset, "record": per_class})
    offset += 200
    session.execute(insert(MetricRecord), rows)
    session.get_one(Run, run_id).metrics_offset = offset
    return offset


def populate(store: Store, *, jobs: int = 0) -> dict[str, Any]:
    """A small fleet: nodes gpu-1 (ready, 2 GPUs, holds digits) and gpu-2 (not ready),
    the digits dataset, a running trainer job with log and metrics (one log line an
    XSS attempt), a pending job waiting with the scheduler's reason, a failed job,
    `jobs` more pending jobs, events and a sync state with a broken file."""
    now = utcnow()
    with store.write() as session:
        gpus = [
            {"index": 0, "name": "A100", "memory": 80 << 30},
            {"index": 1, "name": "A100", "memory": 80 << 30},
        ]
        digits = {
            "path": "datasets/digits",
            "files": 1797,
            "bytes": 123456,
            "checksum": "sha256:" + "ab" * 32,
            "classes": [str(i) for i in range(10)],
        }
        ready = [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "heartbeats are arriving",
            }
        ]
        session.add(
            _object(
                Node,
                "gpu-1",
                {"runtimes": ["venv", "docker"]},
                labels={"zone": "a"},
                last_heartbeat_at=now,
                conditions=ready,
                inventory={
                    "gpus": gpus,
                    "cpus": 16,
                    "memory": 64 << 30,
                    "runtimes": ["venv"],
                    "runtimeProblems": {"docker": "no engine answers"},
                    "agentVersion": "0.1.0",
                    "datasets": {"digits": digits},
                },
            )
        )
        session.add(
            _object(
                Node,
                "gpu-2",
                {"capacity": {"gpus": 4}},
                last_heartbeat_at=now - dt.timedelta(minutes=3),
                conditions=[
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "NodeNotReady",
                        "message": "missed",
                    }
                ],
            )
        )
        session.add(
            _object(
                Dataset,
                "digits",
                {
                    "format": "imagefolder",
                    "checksum": "sha256:" + "ab" * 32,
                    "locations": [
                        {"node": "gpu-1", "path": "datasets/digits"},
                        {"node": "gpu-2", "path": "datasets/digits"},
                    ],
                },
            )
        )
        running = add_job(
            session,
            "resnet-digits",
            phase="Running",
            node="gpu-1",
            trainer=True,
            labels={"project": "digits"},
        )
        run = session.query(Run).filter_by(job_id=running.id).one()
        add_lines(session, run.id, [f"epoch {i} step {i * 10}" for i in range(300)] + [XSS])
        add_metrics(session, run.id, 3)
        waiting = add_job(session, "waits", owner="bob", labels={"project": "other"})
        waiting.conditions = [
            {
                "type": "Scheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes available: 1 not ready, 1 has 0 free GPUs",
            }
        ]
        add_job(session, "broke", phase="Failed", node="gpu-1")
        for i in range(jobs):
            add_job(
                session,
                f"bulk-{i:05d}",
                owner=f"user{i % 7}",
                created=now - dt.timedelta(seconds=jobs - i),
            )
        for name, reason, message in (
            ("resnet-digits", "Created", f"created {XSS}"),
            ("waits", "FailedScheduling", "0/2 nodes available"),
        ):
            session.add(
                Event(
                    kind="TrainingJob",
                    name=name,
                    reason=reason,
                    message=message,
                    commit_sha="c0ffee" * 6 + "abcd",
                    actor="Ada <ada@lab>",
                    type="Warning" if reason.startswith("Failed") else "Normal",
                )
            )
        session.add(
            SyncState(
                source="git-1",
                url="https://git.lab/manifests.git",
                branch="main",
                status="Synced",
                commit_sha="c0ffee" * 6 + "abcd",
                commit_author="Ada <ada@lab>",
                commit_message=f"more {XSS}",
                objects=7,
                invalid=0,
                last_attempt_at=now,
                last_success_at=now,
                problems=[
                    {"path": "jobs/bad.yaml", "line": 3, "column": 5, "message": f"not YAML {XSS}"}
                ],
            )
        )
    return {"run": run.id}
