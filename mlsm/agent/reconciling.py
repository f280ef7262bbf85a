"""The agent's pure planning step: the runs the controller wants on this node versus
the runs the agent holds → what to start, stop, report and forget.

It is level-based, as controller-runtime is: it reads the whole state each time and
never depends on which event woke it, so running it twice does no harm. The
executor (`running.Agent`) applies the actions and records what it did in the
observed state; with nothing new, `plan_runs(...)` is empty.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Forget", "Kill", "Observed", "Outcome", "Report", "Start", "Terminate", "plan_runs"]

State = Literal["preparing", "running", "exited"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended, as the agent will report it."""

    phase: Literal["Succeeded", "Failed"]
    reason: str
    message: str = ""
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class Observed:
    """A run the agent holds."""

    state: State
    reported: str | None = None
    """The last phase the controller acknowledged."""
    outcome: Outcome | None = None
    """Set once the run has ended (state 'exited')."""
    stopping_since: float | None = None
    """Monotonic time the agent asked the run to stop (SIGTERM)."""
    killed: bool = False


@dataclass(frozen=True, slots=True)
class Start:
    run: str


@dataclass(frozen=True, slots=True)
class Terminate:
    """Ask the run to stop (SIGTERM; a run still preparing is not started)."""

    run: str


@dataclass(frozen=True, slots=True)
class Kill:
    """The grace period is over: SIGKILL the run's process group."""

    run: str


@dataclass(frozen=True, slots=True)
class Report:
    run: str
    phase: str
    outcome: Outcome | None = None


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop the run from the agent's state (its files stay for the logs)."""

    run: str


Action = Start | Terminate | Kill | Report | Forget


def plan_runs(
    desired: Collection[str] | None,
    observed: Mapping[str, Observed],
    *,
    done: Collection[str] = (),
    stop: Collection[str] = (),
    now: float,
    grace: float,
) -> list[Action]:
    """`desired` is None until the agent has heard from the controller once: then
    nothing unknown is stopped (a restarted agent must not kill what it will adopt).
    `done` holds runs already finished here, which are never started again even while
    the controller's list still names them. `stop` holds runs the controller said to
    stop (fenced, cancelled, past maxDuration)."""
    actions: list[Action] = []
    for run in sorted(desired or ()):
        if run not in observed and run not in stop and run not in done:
            actions.append(Start(run))
    for run, seen in sorted(observed.items()):
        unwanted = run in stop or (desired is not None and run not in desired)
        if seen.state == "exited":
            assert seen.outcome is not None, "an exited run has an outcome"
            if seen.stopping_since is not None or run in stop:
                actions.append(Forget(run))  # stopped on request: the controller knows
            elif seen.reported != seen.outcome.phase:
                actions.append(Report(run, seen.outcome.phase, seen.outcome))
            else:
                actions.append(Forget(run))  # reported and acknowledged: done
        elif unwanted:
            if seen.stopping_since is None:
                actions.append(Terminate(run))
            elif not seen.killed and seen.state == "running" and now - seen.stopping_since >= grace:
                actions.append(Kill(run))
        elif seen.state == "preparing" and seen.reported is None:
            actions.append(Report(run, "Starting"))
        elif seen.state == "running" and seen.reported != "Running":
            actions.append(Report(run, "Running"))
    return actions
