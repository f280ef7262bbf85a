"""A file's problems cost one parse and are capped: locating N problems composes the
file once (it used to compose it N times: 2,000 invalid documents took a minute),
a file describes at most `Limits.max_problems` of them and counts the rest, and
syntax errors stop the read at the cap. A file cut short this way is a broken file:
its objects keep their last valid spec rather than being pruned."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mlsm.manifests import load_bytes
from mlsm.manifests.parsing import Limits, NodeIndex, Position, locate, parse_bytes
from mlsm.planning import desired_state, plan_sync
from mlsm.planning.syncing import Prune, Stored

BAD_JOB = """apiVersion: mlsm/v1
kind: TrainingJob
metadata: {{name: job-{i}, owner: ada}}
spec:
  runtime: {{venv: {{python: "3.11"}}}}
  command: [python, train.py]
  resources: {{gpus: -1}}
  typo: 1
"""
GOOD_JOB = BAD_JOB.replace("  resources: {{gpus: -1}}\n  typo: 1\n", "")


PATHS: list[list[str | int]] = [
    ["spec", "resources", "gpus"], ["spec", "typo"], ["metadata", "name"], ["spec", "nope"],
    ["kind"], ["spec", "command", 1], ["spec", "command", 5],
]  # fmt: skip


def jobs(count: int, template: str = BAD_JOB) -> bytes:
    return "---\n".join(template.format(i=i) for i in range(count)).encode()


def test_many_problems_in_document_order_compose_the_file_once() -> None:
    data = jobs(300)
    index = NodeIndex(data)
    starts = [d.position for d in parse_bytes(data, "f").documents]
    found = [index.locate(start, ["spec", "resources", "gpus"]) for start in starts]
    assert index.parses == 1
    assert found[0] == Position(7, 21)
    assert found[299] == Position(299 * 9 + 7, 21)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 39), st.sampled_from(PATHS), st.booleans()), max_size=30))
def test_the_index_finds_what_a_fresh_parse_finds_in_any_order(
    asks: list[tuple[int, list[str | int], bool]],
) -> None:
    data = jobs(40)
    starts = [d.position for d in parse_bytes(data, "f").documents]
    index = NodeIndex(data)
    for document, path, key in asks:
        assert index.locate(starts[document], path, key=key) == locate(
            data, starts[document], path, key=key
        )
    assert index.locate(Position(3, 1), ["kind"]) == Position(3, 1)  # no document starts there


def test_a_file_describes_at_most_max_problems_and_counts_the_rest() -> None:
    result = load_bytes(jobs(300), "jobs/many.yaml")
    described = [p for p in result.problems if p.kind]
    assert len(described) == 100  # two problems a document: the first 50 documents
    assert {p.name for p in described} == {f"job-{i}" for i in range(50)}
    [summary] = [p for p in result.problems if not p.kind]
    assert (summary.line, summary.column) == (50 * 9 + 1, 1)  # job-50 begins there
    assert summary.message.startswith("and 500 more problems from here, not shown")
    assert summary.name is None


def test_a_file_of_syntax_errors_is_read_up_to_the_cap() -> None:
    data = b"".join(b"---\na: [1\nb: }\n" for _ in range(1000))
    problems = parse_bytes(data, "f").problems
    assert len(problems) == 101
    assert all("invalid YAML" in p.message for p in problems[:100])
    assert problems[100].line == 100 * 3 + 1
    assert "the rest of the file was not read" in problems[100].message


def test_the_cap_is_a_limit_like_the_others() -> None:
    data = b"".join(b"---\na: [1\nb: }\n" for _ in range(20))
    assert len(parse_bytes(data, "f", Limits(max_problems=5)).problems) == 6


def test_valid_documents_after_the_cap_still_load() -> None:
    data = jobs(120) + b"---\n" + GOOD_JOB.format(i=999).encode()
    result = load_bytes(data, "f")
    assert [o.name for o in result.objects] == ["job-999"]


def test_objects_of_a_file_cut_short_keep_their_last_valid_spec() -> None:
    before = desired_state(load_bytes(jobs(150, GOOD_JOB), "jobs/all.yaml"))
    stored = [Stored(w.kind, w.name, f"uid-{w.name}", w.hash, 1, w.path, w.line, finished=False)
              for w in before.objects.values()]  # fmt: skip
    broken = set(random.Random(7).sample(range(150), 120))
    text = "---\n".join(
        (BAD_JOB if i in broken else GOOD_JOB).format(i=i) for i in range(150)
    ).encode()
    plan = plan_sync(desired_state(load_bytes(text, "jobs/all.yaml")), stored)
    assert not [a for a in plan.actions if isinstance(a, Prune)]
    assert plan.held == ""
