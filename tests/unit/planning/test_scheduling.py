"""The scheduler: table cases for each rule, and Hypothesis properties (never
overcommits, every job bound or told why, bindings satisfy every constraint)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlsm.planning.scheduling import NodeView, PendingJob, schedule


def node(name: str, gpus: int = 4, **fields: Any) -> NodeView:
    values: dict[str, Any] = {"free_gpus": tuple(range(gpus)), "free_cpu": 32.0,
                              "free_memory": 256 << 30} | fields  # fmt: skip
    return NodeView(name, **values)


def job(name: str, gpus: int = 1, **fields: Any) -> PendingJob:
    return PendingJob(name, gpus=gpus, **fields)


SPOT = frozenset({("spot", "yes")})
"""A PreferNoSchedule taint."""


def placed(result: Any) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    return {b.job: [(p.node, p.gpus) for p in b.placements] for b in result.bindings}


@pytest.mark.parametrize(
    ("jobs", "nodes", "bound", "waiting"),
    [
        pytest.param([job("a", 2)], [node("n1")], {"a": [("n1", (0, 1))]}, {},
                     id="binds-gpu-indices"),
        pytest.param([job("a", 3), job("b", 2, submitted=1)], [node("n1")],
                     {"a": [("n1", (0, 1, 2))]},
                     {"b": "0/1 nodes available: 1 insufficient GPUs"}, id="never-overcommits"),
        pytest.param([job("a", 1)], [node("big", 8), node("small", 2)],
                     {"a": [("small", (0,))]}, {}, id="tightest-fit"),
        pytest.param([job("low", 4, priority=0), job("high", 4, priority=5, submitted=9)],
                     [node("n1")], {"high": [("n1", (0, 1, 2, 3))]},
                     {"low": "0/1 nodes available: 1 insufficient GPUs"}, id="priority-first"),
        pytest.param([job("a", 1, selector={"gpu": "h100"}, dataset="cats")],
                     [node("n1", labels={"gpu": "a100"}), node("n2", labels={"gpu": "h100"}),
                      node("n3", labels={"gpu": "h100"}, datasets=frozenset({"cats"}),
                           free_gpus=()),
                      node("n4", ready=False)], {},
                     {"a": "0/4 nodes available: 1 didn't match the node selector, "
                           "1 insufficient GPUs, 1 lacks dataset cats, 1 not ready"},
                     id="reasons-like-kubernetes"),
        pytest.param([job("a", 0, dataset="cats")],
                     [node("n1"), node("n2", datasets=frozenset({"cats"}))],
                     {"a": [("n2", ())]}, {}, id="dataset-locality"),
        pytest.param([job("a", 0, dataset="cats", dataset_checksum="sha256:b")],
                     [node("n1", datasets=frozenset({"cats"}),
                           checksums=frozenset({("cats", "sha256:a")})),
                      node("n2", datasets=frozenset({"cats"}),
                           checksums=frozenset({("cats", "sha256:b")}))],
                     {"a": [("n2", ())]}, {}, id="dataset-checksum-pinned"),
        pytest.param([job("a", 0, dataset="cats", dataset_checksum="sha256:b")],
                     [node("n1", datasets=frozenset({"cats"}),
                           checksums=frozenset({("cats", "sha256:a")}))], {},
                     {"a": "0/1 nodes available: 1 holds another version of dataset cats "
                           "(not sha256:b)"}, id="dataset-checksum-elsewhere"),
        pytest.param([job("a", 0, runtime="docker")],
                     [node("n1", runtimes=frozenset({"venv"})), node("n2", unschedulable=True)], {},
                     {"a": "0/2 nodes available: 1 no docker runtime, 1 unschedulable"},
                     id="runtime-and-cordon"),
        pytest.param([job("a", 0), job("b", 0, tolerations=frozenset({("gpu", "Exists", "")}))],
                     [node("n1", no_schedule=frozenset({("gpu", "only")}))],
                     {"b": [("n1", ())]},
                     {"a": "0/1 nodes available: 1 had a taint the job doesn't tolerate"},
                     id="taints"),
        pytest.param([job("a", 1), job("b", 1, submitted=1), job("c", 1, submitted=2),
                      job("d", 1, submitted=3, tolerations=frozenset({("spot", "Equal", "yes")}))],
                     [node("spot", 1, prefer_no_schedule=SPOT), node("n1", 2),
                      node("n2", 1, prefer_no_schedule=SPOT)],
                     {"a": [("n1", (0,))], "b": [("n1", (1,))], "c": [("n2", (0,))],
                      "d": [("spot", (0,))]}, {},
                     id="prefer-no-schedule-last-resort"),
        pytest.param([job("a", 2, nodes=2)], [node("n1", 2), node("n2", 1)], {},
                     {"a": "needs 2 nodes at once, 1/2 available: 1 insufficient GPUs"},
                     id="multi-node-all-or-nothing"),
        pytest.param([job("a", 1, nodes=2)], [node("n1", 2), node("n2", 1)],
                     {"a": [("n2", (0,)), ("n1", (0,))]}, {}, id="multi-node"),
        pytest.param([job("a", 0, cpu=8, memory=10), job("b", 0, cpu=8, memory=10, submitted=1)],
                     [node("n1", free_cpu=12.0, free_memory=None)], {"a": [("n1", ())]},
                     {"b": "0/1 nodes available: 1 insufficient CPU"}, id="cpu"),
        pytest.param([job("a", 0, memory=6 << 30)], [node("n1", free_memory=4 << 30)], {},
                     {"a": "0/1 nodes available: 1 insufficient memory"}, id="memory"),
        pytest.param([job("a", 0)], [], {}, {"a": "0/0 nodes available"}, id="no-nodes"),
    ],
)  # fmt: skip
def test_schedule(
    jobs: list[PendingJob], nodes: list[NodeView], bound: dict[str, Any], waiting: dict[str, str]
) -> None:
    result = schedule(jobs, nodes)
    assert placed(result) == bound
    assert result.waiting == waiting


def test_fair_share_goes_to_the_owner_with_fewer_gpus_in_use() -> None:
    jobs = [job("ada-1", owner="ada", submitted=0), job("ada-2", owner="ada", submitted=1),
            job("bob-1", owner="bob", submitted=5)]  # fmt: skip
    result = schedule(jobs, [node("n1", 2)], gpus_in_use={"ada": 4})
    assert set(placed(result)) == {"bob-1", "ada-1"}  # bob first, then ada's earliest
    assert list(result.waiting) == ["ada-2"]
    even = schedule(jobs, [node("n1", 1)])
    assert set(placed(even)) == {"ada-1"}  # equal use: submission order


# -- properties ------------------------------------------------------------------------

labels = st.dictionaries(st.sampled_from(["gpu", "zone"]), st.sampled_from(["a", "b"]), max_size=2)
nodes_strategy = st.lists(
    st.builds(
        NodeView,
        name=st.sampled_from([f"n{i}" for i in range(6)]),
        ready=st.booleans(),
        unschedulable=st.booleans(),
        labels=labels,
        runtimes=st.sampled_from([frozenset({"venv"}), frozenset({"venv", "docker"})]),
        free_gpus=st.lists(st.integers(0, 7), unique=True, max_size=8).map(tuple),
        free_cpu=st.floats(0, 16),
        free_memory=st.none() | st.integers(0, 64),
        datasets=st.frozensets(st.sampled_from(["cats", "dogs"]), max_size=2),
    ),
    max_size=5,
    unique_by=lambda n: n.name,
)
jobs_strategy = st.lists(
    st.builds(
        PendingJob,
        name=st.sampled_from([f"j{i}" for i in range(12)]),
        owner=st.sampled_from(["ada", "bob", "cy"]),
        priority=st.integers(-1, 1),
        submitted=st.floats(0, 100),
        gpus=st.integers(0, 4),
        cpu=st.floats(0, 8),
        memory=st.none() | st.integers(0, 32),
        selector=labels,
        runtime=st.sampled_from(["venv", "docker"]),
        dataset=st.none() | st.sampled_from(["cats", "dogs"]),
        nodes=st.integers(1, 2),
    ),
    max_size=10,
    unique_by=lambda j: j.name,
)


@settings(max_examples=400)
@given(jobs_strategy, nodes_strategy)
def test_never_overcommits_and_every_job_is_bound_or_told_why(
    jobs: list[PendingJob], nodes: list[NodeView]
) -> None:
    result = schedule(jobs, nodes)
    bound = {b.job for b in result.bindings}
    assert bound.isdisjoint(result.waiting)
    assert bound | set(result.waiting) == {j.name for j in jobs}
    by_name = {j.name: j for j in jobs}
    by_node = {n.name: n for n in nodes}
    gpus: dict[str, Counter[int]] = {n.name: Counter() for n in nodes}
    cpu: Counter[str] = Counter()
    memory: Counter[str] = Counter()
    for binding in result.bindings:
        j = by_name[binding.job]
        assert len(binding.placements) == j.nodes
        assert len({p.node for p in binding.placements}) == j.nodes
        for placement in binding.placements:
            n = by_node[placement.node]
            assert n.ready
            assert not n.unschedulable
            assert all(n.labels.get(k) == v for k, v in j.selector.items())
            assert j.runtime in n.runtimes
            assert j.dataset is None or j.dataset in n.datasets
            assert len(placement.gpus) == j.gpus
            gpus[n.name].update(placement.gpus)
            cpu[n.name] += j.cpu
            memory[n.name] += j.memory or 0
    for name, used in gpus.items():
        assert all(count == 1 for count in used.values()), "a GPU bound twice"
        assert set(used) <= set(by_node[name].free_gpus)
        assert cpu[name] <= by_node[name].free_cpu + 1e-6
        if by_node[name].free_memory is not None:
            assert memory[name] <= by_node[name].free_memory


def test_a_sweep_never_has_more_children_active_than_its_parallelism() -> None:
    children = [job(f"s-{k}", 0, group="s", group_limit=2, submitted=k) for k in range(4)]
    other = job("other", 0, submitted=9)
    result = schedule([*children, other], [node("n1")])
    assert set(placed(result)) == {"s-0", "s-1", "other"}  # the others of s wait, not it
    said = "sweep s is at its parallelism (2 at once): waits for one of its children to finish"
    assert result.waiting == {"s-2": said, "s-3": said}
    # one of its children already running: room for one more
    again = schedule(children[2:], [node("n1")], groups_active={"s": 1})
    assert set(placed(again)) == {"s-2"}


def test_a_child_reads_its_sweep_from_its_labels() -> None:
    from mlsm import schemas

    manifest = schemas.TrainingJob.model_validate({
        "apiVersion": "mlsm/v1", "kind": "TrainingJob",
        "metadata": {"name": "s-0", "labels": {"mlsm.dev/sweep": "s",
                                               "mlsm.dev/sweep-parallelism": "3"}},
        "spec": {"runtime": {"venv": {}}, "command": ["true"]},
    })  # fmt: skip
    pending = PendingJob.of(manifest, owner="ada", submitted=0)
    assert (pending.group, pending.group_limit) == ("s", 3)
