"""The agent's pure planning step, by table and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlsm.agent.reconciling import (
    Forget,
    Kill,
    Observed,
    Outcome,
    Report,
    Start,
    Terminate,
    plan_runs,
)

OK = Outcome("Succeeded", "Completed", "exit code 0", 0)
BAD = Outcome("Failed", "Error", "exit code 3", 3)


@pytest.mark.parametrize(
    ("desired", "observed", "extra", "expected"),
    [
        pytest.param(["a"], {}, {}, [Start("a")], id="new-run-starts"),
        pytest.param(None, {"a": Observed("running", reported="Running")}, {}, [],
                     id="before-the-first-answer-nothing-is-stopped"),
        pytest.param(["a"], {}, {"done": ["a"]}, [], id="a-finished-run-never-starts-twice"),
        pytest.param(["a"], {}, {"stop": ["a"]}, [], id="a-run-to-stop-is-not-started"),
        pytest.param(["a"], {"a": Observed("preparing")}, {}, [Report("a", "Starting")],
                     id="preparing-reports-starting"),
        pytest.param(["a"], {"a": Observed("preparing", reported="Starting")}, {}, [],
                     id="preparing-reported"),
        pytest.param(["a"], {"a": Observed("running", reported="Starting")}, {},
                     [Report("a", "Running")], id="running-reports-running"),
        pytest.param(["a"], {"a": Observed("running", reported="Running")}, {}, [],
                     id="steady"),
        pytest.param(["a"], {"a": Observed("exited", reported="Running", outcome=OK)}, {},
                     [Report("a", "Succeeded", OK)], id="exit-zero-reports-succeeded"),
        pytest.param([], {"a": Observed("exited", reported="Running", outcome=BAD)}, {},
                     [Report("a", "Failed", BAD)], id="exit-reported-even-after-the-list-moved"),
        pytest.param(["a"], {"a": Observed("exited", reported="Failed", outcome=BAD)}, {},
                     [Forget("a")], id="acknowledged-exit-is-forgotten"),
        pytest.param([], {"a": Observed("running", reported="Running")}, {},
                     [Terminate("a")], id="unwanted-run-gets-sigterm"),
        pytest.param(["a"], {"a": Observed("running", reported="Running")}, {"stop": ["a"]},
                     [Terminate("a")], id="fenced-run-gets-sigterm"),
        pytest.param([], {"a": Observed("running", stopping_since=95.0)}, {}, [],
                     id="within-the-grace-period"),
        pytest.param([], {"a": Observed("running", stopping_since=80.0)}, {}, [Kill("a")],
                     id="grace-over-sigkill"),
        pytest.param([], {"a": Observed("running", stopping_since=80.0, killed=True)}, {}, [],
                     id="killed-once"),
        pytest.param([], {"a": Observed("preparing", stopping_since=80.0)}, {}, [],
                     id="a-build-is-not-killed"),
        pytest.param([], {"a": Observed("exited", stopping_since=99.0, outcome=BAD)}, {},
                     [Forget("a")], id="stopped-on-request-not-reported"),
    ],
)  # fmt: skip
def test_plan_runs(
    desired: list[str] | None,
    observed: dict[str, Observed],
    extra: dict[str, list[str]],
    expected: list[object],
) -> None:
    assert plan_runs(desired, observed, now=100.0, grace=10.0, **extra) == expected


def _apply(observed: dict[str, Observed], done: set[str], actions: list[object]) -> None:
    """What the executor does, with runs that start and report at once."""
    for action in actions:
        match action:
            case Start(run=run):
                observed[run] = Observed("running", reported="Running")
            case Report(run=run, phase=phase):
                observed[run] = Observed(observed[run].state, reported=phase,
                                         outcome=observed[run].outcome)  # fmt: skip
            case Terminate(run=run):
                observed[run] = Observed("exited", stopping_since=0.0, outcome=BAD)
            case Forget(run=run):
                del observed[run]
                done.add(run)


runs = st.sampled_from(["a", "b", "c", "d"])


@given(desired=st.sets(runs), have=st.sets(runs), exited=st.sets(runs))
def test_planning_converges_and_never_starts_a_run_twice(
    desired: set[str], have: set[str], exited: set[str]
) -> None:
    observed = {r: (Observed("exited", reported="Running", outcome=OK) if r in exited
                    else Observed("running", reported="Running")) for r in have}  # fmt: skip
    done: set[str] = set()
    started: list[str] = []
    for _ in range(6):
        actions = plan_runs(desired, observed, done=done, now=0.0, grace=10.0)
        started += [a.run for a in actions if isinstance(a, Start)]
        _apply(observed, done, actions)
    assert plan_runs(desired, observed, done=done, now=0.0, grace=10.0) == []
    assert len(started) == len(set(started))
    assert set(observed) <= desired


@pytest.mark.parametrize(
    ("name", "safe"),
    [("0f1e2d3c-aaaa-4bbb-8ccc-123456789abc", True), ("resnet-digits", True), ("..", False),
     ("../etc", False), ("a/b", False), ("", False), (None, False), ("a..b", False)],
)  # fmt: skip
def test_only_safe_names_become_folders(name: object, safe: bool) -> None:
    from mlsm.agent.records import safe_name

    assert safe_name(name) is safe
