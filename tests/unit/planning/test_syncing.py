"""The sync planner: table-driven cases and Hypothesis properties."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlsm import manifests
from mlsm.planning import (
    Create,
    Desired,
    DesiredState,
    Invalidate,
    Plan,
    Prune,
    Relocate,
    Revalidate,
    Stored,
    Update,
    desired_state,
    plan_sync,
)


def want(name: str, spec: str = "a", *, path: str = "", line: int = 1,
         kind: str = "TrainingJob", error: str = "") -> Desired:  # fmt: skip
    if error:
        return Desired(kind, name, path or f"{name}.yaml", line, problems=(error,))
    manifest = {"kind": kind, "metadata": {"name": name}, "spec": spec}
    return Desired(kind, name, path or f"{name}.yaml", line, manifest=manifest, hash=spec)


def have(name: str, spec: str = "a", *, path: str = "", line: int = 1,
         kind: str = "TrainingJob", valid: bool = True, error: str = "", finished: bool = True,
         generation: int = 1) -> Stored:  # fmt: skip
    return Stored(kind, name, f"uid-{name}", spec, generation, path or f"{name}.yaml", line,
                  valid, error, finished)  # fmt: skip


def state(*objects: Desired, broken: dict[str, str] | None = None) -> DesiredState:
    return DesiredState({o.key: o for o in objects}, broken or {})


def apply(stored: list[Stored], plan: Plan) -> list[Stored]:
    """What the executor must achieve, as a pure model of it."""
    live = {s.key: s for s in stored}
    for action in plan.actions:
        if isinstance(action, Create):
            d = action.desired
            live[d.key] = Stored(d.kind, d.name, f"uid-{d.name}", d.hash,
                                 1 if d.manifest is not None else 0, d.path, d.line,
                                 d.manifest is not None, d.error, True)  # fmt: skip
        elif isinstance(action, Update):
            d, s = action.desired, action.stored
            live[s.key] = dataclasses.replace(
                s, hash=d.hash, generation=s.generation + 1, path=d.path, line=d.line,
                valid=True, error="",
            )  # fmt: skip
        elif isinstance(action, (Relocate, Revalidate)):
            d, s = action.desired, action.stored
            live[s.key] = dataclasses.replace(s, path=d.path, line=d.line, valid=True, error="")
        elif isinstance(action, Invalidate):
            live[action.stored.key] = dataclasses.replace(action.stored, valid=False,
                                                          error=action.error)  # fmt: skip
        else:
            del live[action.stored.key]
    return list(live.values())


@pytest.mark.parametrize(
    ("desired", "stored", "expected"),
    [
        pytest.param(state(want("a")), [], ["Create a"], id="new"),
        pytest.param(state(want("a")), [have("a")], [], id="unchanged-costs-nothing"),
        pytest.param(state(want("a", "b")), [have("a")], ["Update a"], id="changed-spec"),
        pytest.param(state(want("a", line=5)), [have("a")], ["Relocate a"], id="moved-in-file"),
        pytest.param(state(want("a", path="x.yaml")), [have("a")], ["Relocate a"], id="renamed"),
        pytest.param(state(want("b")), [have("a", finished=False), have("b")], ["Prune a cancel"],
                     id="removed-running"),
        pytest.param(state(want("b")), [have("a"), have("b")], ["Prune a"], id="removed-finished"),
        pytest.param(state(want("a", error="a.yaml:3:1: bad")), [have("a")],
                     ["Invalidate a: a.yaml:3:1: bad"], id="now-invalid-keeps-spec"),
        pytest.param(state(want("a", error="e")), [have("a", valid=False, error="e")], [],
                     id="still-invalid-same-error"),
        pytest.param(state(want("a", error="f")), [have("a", valid=False, error="e")],
                     ["Invalidate a: f"], id="invalid-another-way"),
        pytest.param(state(want("a")), [have("a", valid=False, error="e")], ["Revalidate a"],
                     id="valid-again-same-spec"),
        pytest.param(state(want("a", "b")), [have("a", valid=False, error="e")], ["Update a"],
                     id="valid-again-new-spec"),
        pytest.param(state(want("a", error="e")), [], ["Create a (invalid)"], id="new-invalid"),
        pytest.param(state(want("a")), [have("a", "", valid=False, error="e", generation=0)],
                     ["Update a"], id="first-valid-spec"),
        pytest.param(state(want("b"), broken={"a.yaml": "a.yaml:1:1: invalid YAML"}),
                     [have("a"), have("b")],
                     ["Invalidate a: a.yaml has errors, so this object keeps its last valid spec: "
                      "a.yaml:1:1: invalid YAML"], id="broken-file-is-not-pruned"),
        pytest.param(state(want("a", kind="Node"), want("a")), [have("a")], ["Create a"],
                     id="same-name-other-kind"),
    ],
)  # fmt: skip
def test_plan(desired: DesiredState, stored: list[Stored], expected: list[str]) -> None:
    plan = plan_sync(desired, stored)
    assert plan.held == ""
    assert [describe(a) for a in plan.actions] == expected


def describe(action: object) -> str:
    if isinstance(action, Create):
        return f"Create {action.desired.name}" + ("" if action.desired.manifest else " (invalid)")
    if isinstance(action, Invalidate):
        return f"Invalidate {action.stored.name}: {action.error}"
    if isinstance(action, Prune):
        return f"Prune {action.stored.name}" + (" cancel" if action.cancel else "")
    assert isinstance(action, (Update, Relocate, Revalidate))
    return f"{type(action).__name__} {action.stored.name}"


@pytest.mark.parametrize(
    ("kept", "total", "held"),
    [
        pytest.param(0, 1, "the only object", id="the-only-one"),
        pytest.param(0, 10, "all 10 objects", id="all"),
        pytest.param(4, 10, "6 of 10 objects (over 50%)", id="most"),
        pytest.param(5, 10, "", id="half-is-fine"),
        pytest.param(1, 3, "", id="two-of-three-is-fine"),
        pytest.param(1, 9, "", id="most-of-a-small-repository-is-fine"),
    ],
)
def test_mass_prunes_are_held_back(kept: int, total: int, held: str) -> None:
    names = [f"j{i}" for i in range(total)]
    plan = plan_sync(state(*(want(n) for n in names[:kept])), [have(n) for n in names])
    if held:
        assert f"this commit would prune {held}: a wrong path or a bad merge? Not applied." in (
            plan.held
        )
        assert "--allow-mass-prune" in plan.held
        assert plan_sync(state(), [have(n) for n in names], allow_mass_prune=True).held == ""
    else:
        assert plan.held == ""


def test_an_annotation_or_a_trailer_allows_a_mass_prune(tmp_path: object) -> None:
    text = textwrap.dedent(
        """\
        apiVersion: mlsm/v1
        kind: Node
        metadata: {name: n, annotations: {mlsm.io/allow-mass-prune: "true"}}
        spec: {runtimes: [venv]}
        """
    )
    result = manifests.load_bytes(text, "n.yaml")
    assert result.problems == []
    assert desired_state(result).allow_mass_prune
    empty = manifests.load_bytes("", "empty.yaml")
    assert not desired_state(empty).allow_mass_prune
    assert desired_state(
        empty, commit_message="Remove all\n\nAllow-Mass-Prune: true"
    ).allow_mass_prune
    stored = [have(f"j{i}") for i in range(3)]
    assert plan_sync(desired_state(result), stored).held == ""


def test_desired_state_from_a_loaded_commit() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: mlsm/v1
        kind: Node
        metadata: {name: good}
        spec: {runtimes: [venv], capacity: {memory: 16Gi}}
        ---
        apiVersion: mlsm/v1
        kind: Node
        metadata: {name: bad}
        spec: {runtimes: [venv], capasity: {}}
        ---
        kind: [
        """
    )
    desired = desired_state(manifests.load_bytes(text, "nodes.yaml"))
    good, bad = desired.objects[("Node", "good")], desired.objects[("Node", "bad")]
    assert good.manifest is not None
    assert good.manifest["spec"]["capacity"] == {"memory": "16Gi"}
    assert (good.path, good.line, good.problems) == ("nodes.yaml", 1, ())
    assert bad.manifest is None
    assert bad.problems[0].startswith("nodes.yaml:9:")
    assert "did you mean 'capacity'" in bad.problems[0]
    assert list(desired.broken_files) == ["nodes.yaml"]


# -- properties ------------------------------------------------------------------------

names = st.sampled_from(["a", "b", "c", "d"])
kinds = st.sampled_from(["Node", "TrainingJob"])
desireds = st.builds(
    want, names, st.sampled_from(["s1", "s2"]), path=st.sampled_from(["x.yaml", "y.yaml"]),
    line=st.integers(1, 3), kind=kinds, error=st.sampled_from(["", "", "e1", "e2"]),
)  # fmt: skip
storeds = st.builds(
    have, names, st.sampled_from(["s1", "s2", ""]), path=st.sampled_from(["x.yaml", "y.yaml"]),
    line=st.integers(1, 3), kind=kinds, valid=st.booleans(), error=st.sampled_from(["", "e1"]),
    finished=st.booleans(), generation=st.integers(0, 3),
)  # fmt: skip
states = st.builds(
    lambda objects, broken: state(*objects, broken=broken),
    st.lists(desireds, max_size=6, unique_by=lambda d: d.key),
    st.dictionaries(st.sampled_from(["x.yaml", "y.yaml"]), st.just("p:1:1: broken"), max_size=1),
)


@settings(max_examples=300)
@given(states)
def test_planning_a_state_against_itself_changes_nothing(desired: DesiredState) -> None:
    stored = apply([], plan_sync(desired, [], allow_mass_prune=True))
    assert plan_sync(desired, stored).actions == []


@settings(max_examples=300)
@given(states, st.lists(storeds, max_size=6, unique_by=lambda s: s.key))
def test_applying_a_plan_then_planning_again_changes_nothing(
    desired: DesiredState, stored: list[Stored]
) -> None:
    plan = plan_sync(desired, stored, allow_mass_prune=True)
    assert plan_sync(desired, apply(stored, plan), allow_mass_prune=True).actions == []


@settings(max_examples=200)
@given(states, st.lists(storeds, max_size=6, unique_by=lambda s: s.key))
def test_only_objects_gone_from_git_are_pruned_and_running_jobs_cancelled(
    desired: DesiredState, stored: list[Stored]
) -> None:
    plan = plan_sync(desired, stored, allow_mass_prune=True)
    for prune in plan.prunes:
        assert prune.stored.key not in desired.objects
        assert prune.stored.path not in desired.broken_files
        assert prune.cancel == (not prune.stored.finished)
