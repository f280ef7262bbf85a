"""After a restart: the runs the agent held, taken back from their records (and from
the runtimes themselves, for containers whose record is lost), so that a run still
going is adopted, never started again; one that ended while the agent was down is
reported with its exit status; and output not yet shipped is shipped."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlsm.agent.reconciling import Observed, Outcome
from mlsm.agent.records import LocalRun, RunRecord, load_records
from mlsm.agent.runtimes import Runtime

__all__ = ["Adopted", "adopt"]

log = logging.getLogger("mlsm.agent")


@dataclass
class Adopted:
    runs: list[LocalRun] = field(default_factory=list)
    """Runs not yet forgotten: still going, or ended and to be reported."""
    shipping: list[RunRecord] = field(default_factory=list)
    """Every record with output that may be left to ship."""
    done: list[str] = field(default_factory=list)
    """Runs already forgotten (never to start again)."""


def adopt(state: Path, runs: Path, runtimes: Mapping[str, Runtime]) -> Adopted:
    records, damage = load_records(state, runs)
    for sentence in damage:
        log.error("damaged agent state: %s", sentence)
    known = {record.run for record in records}
    for each in runtimes.values():
        for record in each.strays(known):
            log.warning(
                "run %s of job %s: container %s had no record here: adopted",
                record.run[:8],
                record.job,
                record.container,
            )
            record.save(state)
            records.append(record)
    adopted = Adopted()
    for record in records:
        adopted.shipping.append(record)
        if record.forgotten:
            adopted.done.append(record.run)
            continue
        runtime = runtimes.get(record.runtime)
        run = LocalRun(record.run, record.assignment, runtime=record.runtime, record=record)
        reported = record.reported  # None: say Running (again: a no-op if known)
        if record.ended and record.outcome is not None:
            run.observed = Observed("exited", reported=reported, outcome=Outcome(**record.outcome))
        elif runtime is None:
            message = f"it ran in the {record.runtime} runtime, which this agent does not have"
            run.observed = Observed(
                "exited", reported=reported, outcome=Outcome("Failed", "Unknown", message)
            )
        else:
            run.handle = runtime.adopt(record)
            run.observed = Observed("running", reported=reported)
            where = f"container {record.container}" if record.container else f"pid {record.pid}"
            gone = "" if record.container or record.alive() else ", ended while the agent was down"
            log.info("run %s of job %s: adopted (%s%s)", run.id[:8], run.job, where, gone)
        adopted.runs.append(run)
    return adopted
