"""How `mlsmctl get` and `describe` show objects: kubectl-style tables and pages."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mlsm import schemas, scores
from mlsm.manifests import dump_yaml

__all__ = ["age", "describe", "table"]


def age(stamp: str | None, now: dt.datetime | None = None) -> str:
    if not stamp:
        return "-"
    seconds = int(
        ((now or dt.datetime.now(dt.UTC)) - dt.datetime.fromisoformat(stamp)).total_seconds()
    )
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit == "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _valid(obj: dict[str, Any]) -> str:
    for condition in obj["status"].get("conditions", []):
        if condition.get("type") == "Valid":
            return "yes" if condition.get("status") == "True" else "NO"
    return "-"


def _condition(obj: dict[str, Any], kind: str) -> str:
    for condition in obj["status"].get("conditions", []):
        if condition.get("type") == kind:
            return "yes" if condition.get("status") == "True" else "no"
    return "unknown"


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The spec with its defaults filled in (the store keeps what was written)."""
    spec = obj.get("spec")
    if not spec:
        return {}
    model = schemas.KINDS[obj["kind"]]
    try:
        full = model.model_validate({"metadata": {"name": obj["metadata"]["name"]}, "spec": spec})
    except ValueError:  # written by a newer mlsm: show it as it is
        return dict(spec)
    out: dict[str, Any] = full.spec.model_dump(mode="json", by_alias=True)
    return out


Column = tuple[str, Callable[[dict[str, Any]], object]]

COLUMNS: dict[str, list[Column]] = {
    "Node": [
        ("READY", lambda o: _condition(o, "Ready")),
        ("HEARTBEAT", lambda o: age(o["status"].get("lastHeartbeatAt"))),
        ("GPUS", lambda o: f"{o['status'].get('gpusUsed', 0)}/{o['status'].get('gpus', 0)}"),
        ("RUNTIMES", lambda o: ",".join(_runtimes(o)[0]) or "-"),
        ("SCHEDULABLE", lambda o: "no" if _spec(o).get("unschedulable") else "yes"),
    ],
    "Dataset": [
        ("FORMAT", lambda o: _spec(o).get("format", "-")),
        ("LOCATIONS", lambda o: ",".join(x["node"] for x in _spec(o).get("locations", [])) or "-"),
    ],
    "TrainingJob": [
        ("OWNER", lambda o: o["metadata"].get("owner") or "-"),
        ("PHASE", lambda o: o["status"].get("phase", "-")),
        ("NODE", lambda o: o["status"].get("node") or "-"),
        ("RESTARTS", lambda o: o["status"].get("restarts", 0)),
        ("GPUS", lambda o: _spec(o).get("resources", {}).get("gpus", 0)),
        ("PRIORITY", lambda o: _spec(o).get("priority", 0)),
    ],
}
NODE_WIDE: list[Column] = [
    ("NOT OFFERED", lambda o: "; ".join(f"{k}: {v}" for k, v in _runtimes(o)[1].items()) or "-"),
]
WIDE: list[Column] = [
    ("GEN", lambda o: o["metadata"]["generation"]),
    ("SOURCE", lambda o: f"{o['metadata']['source']['path']}:{o['metadata']['source']['line']}"),
    ("COMMIT", lambda o: o["metadata"]["commit"]["sha"][:10] or "-"),
]


def _runtimes(node: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The runtimes a node's manifest allows that its agent offers, and those it
    allows and the agent does not, with why (before any heartbeat: all allowed)."""
    allowed = _spec(node).get("runtimes", ["venv", "docker"])
    offered = node["status"].get("runtimes")
    if offered is None:
        return list(allowed), {}
    problems = node["status"].get("runtimeProblems") or {}
    missing = {r: str(problems.get(r, "the agent does not offer it")) for r in allowed
               if r not in offered}  # fmt: skip
    return [r for r in allowed if r in offered], missing


def table(kind: str, objects: Sequence[dict[str, Any]], *, wide: bool = False) -> str:
    columns: list[Column] = [("NAME", lambda o: o["metadata"]["name"]), *COLUMNS[kind],
                             ("VALID", _valid)]  # fmt: skip
    if wide:
        columns += (NODE_WIDE if kind == "Node" else []) + WIDE
    columns.append(("AGE", lambda o: age(o["metadata"].get("createdAt"))))
    rows = [[str(get(o)) for _, get in columns] for o in objects]
    return _grid([name for name, _ in columns], rows)


def sync_table(states: Sequence[dict[str, Any]]) -> str:
    """`mlsmctl get sync`: where each source stands, then the problems of files that
    name no object (a file that is not YAML, too large, ...), which no object shows."""
    header = ["SOURCE", "STATUS", "COMMIT", "AUTHOR", "SYNCED", "OBJECTS", "INVALID", "FILES"]
    rows = [
        [
            s["source"],
            s["status"],
            s["commit"]["sha"][:10] or "-",
            _first_line(s["commit"]["author"]) or "-",
            age(s.get("lastSuccessAt")),
            str(s["objects"]),
            str(s["invalid"]),
            f"{s.get('brokenFiles', 0)} broken",
        ]
        for s in states
    ]
    lines = [_grid(header, rows)]
    for state in states:
        if state.get("error"):
            lines.append(f"{state['source']}: error: {state['error']}")
        for problem in state.get("problems") or []:
            lines.append(
                f"{problem['path']}:{problem['line']}:{problem['column']}: "
                f"error: {problem['message']}"
            )
    return "\n".join(lines)


def sweep_table(board: dict[str, Any]) -> str:
    """A sweep's leaderboard: rank, child, phase, its swept values and best score."""
    parameters = board["parameters"]
    best = f"BEST VAL {board['metric'].upper()}"
    header = ["#", "NAME", "PHASE", *(p.upper() for p in parameters), best, "EPOCH"]
    rows = []
    for rank, child in enumerate(board["children"], 1):
        values = [str(child["parameters"].get(p, "-")) for p in parameters]
        score = [_number(child["best"]), _number(child["epoch"])]
        rows.append([str(rank), child["name"], child["phase"], *values, *score])
    phases = ", ".join(f"{count} {phase}" for phase, count in board["phases"].items())
    limit = f", at most {board['parallelism']} at once" if board.get("parallelism") else ""
    order = f"best {board['metric']} ({board['mode']}) first"
    title = f"sweep {board['sweep']}: {len(rows)} children ({phases}){limit}; {order}"
    return title + "\n" + _grid(header, rows)


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]  # fmt: skip
    return "\n".join(lines)


def describe(obj: dict[str, Any], *, trainer: list[str] | None = None) -> str:
    """A page about one object, as `kubectl describe` gives."""
    meta, status = obj["metadata"], obj["status"]
    commit = meta["commit"]
    lines = [
        f"Name:         {meta['name']}",
        f"Kind:         {obj['kind']}",
        f"UID:          {meta['uid']}",
        f"Labels:       {_pairs(meta.get('labels'))}",
        f"Annotations:  {_pairs(meta.get('annotations'))}",
    ]
    if obj["kind"] == "TrainingJob":
        lines += [f"Owner:        {meta.get('owner') or '-'}",
                  f"Phase:        {status.get('phase', '-')}"]  # fmt: skip
    lines += [
        f"Generation:   {meta['generation']}",
        f"Source:       {meta['source']['path']}:{meta['source']['line']}",
        f"Commit:       {commit['sha'][:10] or '-'} {_first_line(commit['message'])}".rstrip(),
        f"Author:       {commit['author'] or '-'}",
        f"Created:      {meta.get('createdAt')} ({age(meta.get('createdAt'))} ago)",
    ]
    if meta.get("deletedAt"):
        lines.append(f"Deleted:      {meta['deletedAt']} (removed from git; kept as history)")
    lines.append("Conditions:")
    conditions = status.get("conditions", [])
    lines += _indent(_grid(["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], [
        [c["type"], c["status"], c.get("reason", ""), age(c.get("lastTransitionTime")),
         c.get("message", "")] for c in conditions
    ]) if conditions else "<none>")  # fmt: skip
    lines.append("Spec:")
    lines += _indent(dump_yaml(obj.get("spec") or {}).rstrip() or "<none: never valid>")
    if "runs" in obj:
        lines.append("Runs:")
        runs = sorted(obj["runs"], key=lambda r: (r["attempt"], r.get("rank") or 0))
        # a job on several nodes, or under torchrun: each run's node rank, and the
        # process ranks its log holds (`mlsmctl logs --rank K`)
        ranked = any(r.get("rank") or r.get("ranks") for r in runs)
        ranks = ["RANK", "PROCESSES"] if ranked else []
        header = ["ID", "ATTEMPT", *ranks, "NODE", "GPUS", "PHASE", "REASON", "EXIT", "AGE"]
        lines += _indent(_grid(header, [
            [r["id"][:8], str(r["attempt"]),
             *([str(r.get("rank") or 0), _ranks(r.get("ranks") or [])] if ranked else []),
             r["node"] or "-",
             ",".join(map(str, r.get("gpus") or [])) or "-", r["phase"], r["reason"] or "-",
             "-" if r.get("exitCode") is None else str(r["exitCode"]), age(r["createdAt"])]
            for r in runs
        ]) if runs else "<none>")  # fmt: skip
        last = runs[-1] if runs else None
        if last is not None and (last.get("message") or "").startswith("enforced: "):
            lines.append(f"Limits of run {last['id'][:8]}:")
            lines += _indent("\n".join(last["message"].removeprefix("enforced: ").split("; ")))
        attempt = last["attempt"] if last is not None else None
        ended = [r for r in runs if r["attempt"] == attempt and r["phase"] in ("Failed", "Lost")]
        broken = [r for r in ended if r.get("message")]
        if broken:  # the rank that ended its attempt, with why
            first = broken[0]
            lines.append(f"Last run ({first['id'][:8]}) {first['reason'] or first['phase']}:")
            lines += _indent(first["message"].rstrip())
    if trainer:
        lines.append("Trainer:")
        lines += _indent("\n".join(trainer))
    lines.append("Events:")
    events = obj.get("events", [])
    lines += _indent(_grid(["AGE", "TYPE", "REASON", "BY", "MESSAGE"], [
        [age(e["at"]), e["type"], e["reason"], e["actor"] or "-", e["message"]] for e in events
    ]) if events else "<none>")  # fmt: skip
    return "\n".join(lines)


def _pairs(values: dict[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (values or {}).items()) or "<none>"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _ranks(ranks: list[int]) -> str:
    """Process ranks as `0-3` when contiguous, else `0,2`; '-' when none yet."""
    if not ranks:
        return "-"
    if ranks == list(range(ranks[0], ranks[-1] + 1)) and len(ranks) > 1:
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))


def _indent(text: str) -> list[str]:
    return ["  " + line for line in text.splitlines()]


def print_lines(lines: list[dict[str, Any]]) -> None:
    """Log lines as they were written (one `write` for many lines: following a chatty
    job stays cheap)."""
    if lines:
        sys.stdout.write("".join(f"{line['text']}\n" for line in lines))
        sys.stdout.flush()


def metrics_table(records: list[dict[str, Any]]) -> str:
    """One row per epoch (records of epoch 0.5 and 1.0 both count to epoch 1), one
    column per metric (split/name), each cell the last value written."""
    names, rows = scores.per_epoch(records)
    return _grid(["EPOCH", *(n.upper() for n in names)], [
        ["-" if key is None else str(key), *(_number(row.get(n)) for n in names)]
        for key, row in rows.items()
    ])  # fmt: skip


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trainer_summary(
    trainer: dict[str, Any], run: dict[str, Any], records: list[dict[str, Any]]
) -> list[str]:
    """The built-in trainer's run at a glance: the best value of the monitored metric
    and where the checkpoints are."""
    best = scores.best_score(trainer, records)
    lines = []
    if best.value is not None:
        where = f" at epoch {_number(best.epoch)}" if best.epoch is not None else ""
        lines.append(f"Best:         val {best.metric} {_number(best.value)}{where} "
                     f"({best.mode}imum of {best.evaluations} evaluations)")  # fmt: skip
    else:
        lines.append(f"Best:         no val {best.metric} yet")
    for split, figures in scores.per_class(records).items():
        weakest = ", ".join(f"{name} {_number(value)}" for name, value in figures.weakest())
        lines.append(f"Weakest:      {split} recall {weakest}")
    if run.get("outputDir"):
        folders = ", ".join(scores.checkpoint_folders(trainer))
        lines.append(f"Checkpoints:  {run['node']}:{run['outputDir']}/checkpoints ({folders})")
    made = scores.provenance_of(records)
    if made is not None:
        lines.append("Provenance:   (in each checkpoint's provenance.json)")
        lines += [f"  {what + ':':13s}{said}" for what, said in scores.provenance_facts(made)]
    return lines
