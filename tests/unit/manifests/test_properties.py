"""Hypothesis properties of loading: round trips, and no stray exception types."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsm import manifests, schemas

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
label_values = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?", fullmatch=True)
labels = st.dictionaries(names, label_values, max_size=3)
env_names = st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda k: not k.startswith("MLSM_")
)
paths = st.lists(names, min_size=1, max_size=3).map("/".join)


@st.composite
def metadata(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {"name": draw(names)}
    if draw(st.booleans()):
        out["labels"] = draw(labels)
    if draw(st.booleans()):
        out["owner"] = draw(
            st.text(min_size=1, max_size=20).filter(
                lambda s: s == s.strip() and not any(c < " " or "\x7f" <= c <= "\x9f" for c in s)
            )
        )
    return out


@st.composite
def nodes(draw: st.DrawFn) -> schemas.Node:
    spec: dict[str, Any] = {
        "runtimes": draw(st.lists(st.sampled_from(["venv", "docker"]), min_size=1, unique=True)),
        "unschedulable": draw(st.booleans()),
        "capacity": {
            "gpus": draw(st.none() | st.integers(0, 16)),
            "memory": draw(st.none() | st.integers(0, 2**44)),
            "cpu": draw(st.none() | st.integers(0, 512_000).map(lambda m: m / 1000)),
        },
    }
    return schemas.Node.model_validate({"metadata": draw(metadata()), "spec": spec})


@st.composite
def datasets(draw: st.DrawFn) -> schemas.Dataset:
    spec = {
        "format": draw(st.sampled_from(["imagefolder", "files"])),
        "locations": draw(
            st.lists(st.fixed_dictionaries({"node": names, "path": paths}), max_size=3)
        ),
        "replicate": draw(st.booleans()),
    }
    return schemas.Dataset.model_validate({"metadata": draw(metadata()), "spec": spec})


@st.composite
def jobs(draw: st.DrawFn) -> schemas.TrainingJob:
    spec: dict[str, Any] = {
        "runtime": draw(
            st.sampled_from([{"venv": {"python": "3.11", "requirements": ["numpy"]}},
                             {"docker": {"image": "localhost/x:1"}}])
        ),
        "resources": {
            "gpus": draw(st.integers(0, 8)),
            "cpu": draw(st.integers(1, 64_000)) / 1000,
            "memory": draw(st.none() | st.integers(0, 2**40)),
        },
        "nodeSelector": draw(labels),
        "priority": draw(st.integers(-1000, 1000)),
        "retries": draw(st.integers(0, 5)),
        "maxDuration": draw(st.none() | st.integers(1, 10**6)),
        "env": draw(st.dictionaries(env_names, st.text(max_size=10), max_size=2)),
        "suspend": draw(st.booleans()),
    }  # fmt: skip
    if draw(st.booleans()):
        spec["command"] = draw(st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4))
    else:
        spec["dataset"] = draw(names)
        spec["trainer"] = {
            "model": "builtin:vit-tiny",
            "epochs": draw(st.integers(1, 100)),
            "learningRate": draw(st.floats(1e-6, 1.0)),
            "monitor": {"metric": draw(st.sampled_from(["accuracy", "f1", "loss"]))},
        }
    return schemas.TrainingJob.model_validate({"metadata": draw(metadata()), "spec": spec})


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(nodes(), datasets(), jobs()))
def test_a_valid_object_dumped_to_yaml_loads_back_equal(obj: Any) -> None:
    text = manifests.dump_yaml(obj.to_manifest_dict())
    result = manifests.load_bytes(text, "roundtrip.yaml", cross_checks=False)
    assert [str(p) for p in result.problems] == []
    assert [o.manifest for o in result.objects] == [obj]


def call_loader(data: bytes) -> None:
    try:
        result = manifests.load_bytes(data, "fuzz.yaml")
    except manifests.ManifestError:
        return
    for problem in result.problems:
        assert problem.line >= 1
        assert problem.column >= 1
        assert str(problem).startswith("fuzz.yaml:")


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_arbitrary_text_only_ever_yields_manifest_problems(text: str) -> None:
    call_loader(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_ever_yield_manifest_problems(data: bytes) -> None:
    call_loader(data)


yaml_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
nested = st.recursive(
    yaml_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.integers(), children, max_size=4)
    ),
    max_leaves=30,
)
shaped = st.fixed_dictionaries(
    {"apiVersion": st.sampled_from(["mlsm/v1", "v1"]) | nested,
     "kind": st.sampled_from(["Node", "Dataset", "TrainingJob", "Pod"]) | nested,
     "metadata": st.fixed_dictionaries({"name": names | nested}) | nested,
     "spec": nested},
)  # fmt: skip


@settings(max_examples=300)
@given(nested | shaped)
def test_arbitrary_nested_data_only_ever_yields_manifest_problems(data: Any) -> None:
    call_loader(yaml.safe_dump(data).encode())
