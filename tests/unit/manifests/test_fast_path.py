"""The fast path (yaml-rs) must read every file it takes exactly as the careful
path (libyaml) does: the same documents, indices, positions and data.

Hypothesis writes YAML text the way people do (block and flow collections, plain,
quoted and block scalars, comments, blank lines, '---' markers) out of tokens
chosen to sit on the edges of the core schema (numbers, booleans, nulls), and
checks the two paths agree wherever the fast one answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mlsm.manifests import parsing
from mlsm.manifests.parsing import DEFAULT_LIMITS, ParsedFile

REPO = Path(__file__).resolve().parents[3]


def canonical(parsed: ParsedFile) -> Any:
    """Comparable form: NaN equals NaN, and 1 is not True."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return ("map", [(walk(k), walk(v)) for k, v in value.items()])
        if isinstance(value, list):
            return ("seq", [walk(v) for v in value])
        if isinstance(value, float) and math.isnan(value):
            return ("nan",)
        return (type(value).__name__, value)

    return [
        (d.index, d.position.line, d.position.column, walk(d.data)) for d in parsed.documents
    ], [str(p) for p in parsed.problems]


def assert_paths_agree(data: bytes) -> bool:
    fast = parsing._parse_fast(data, "f", DEFAULT_LIMITS)
    if fast is None:
        return False
    careful = parsing._parse_careful(data, "f", DEFAULT_LIMITS)
    assert careful.problems == [], "the fast path took a file the careful path refuses"
    assert canonical(fast) == canonical(careful)
    return True


edgy = st.text(alphabet="0123456789_.eE+-xXoObBaAfFiInNtTrRuUlLsSyY~:", max_size=7)
words = st.sampled_from(
    ["yes", "No", "on", "OFF", "y", "null", "Null", "~", "true", "False", "TRUE", ".inf",
     "-.Inf", ".NaN", "-.nan", "0x1F", "0o17", "0O17", "017", "08", "1e3", "1.5e-3", "+1",
     "-0", "1.", ".5", "1:30", "2024-01-01", "3.11", "1_000", "0b101", "=", "<", "é", "a b"]
)  # fmt: skip
tokens = st.one_of(edgy, words).filter(lambda t: t.strip() == t and "#" not in t)
keys = st.one_of(st.from_regex(r"[a-z][a-zA-Z0-9]{0,6}", fullmatch=True), words, edgy).filter(
    lambda t: t.strip() == t and "#" not in t and ":" not in t and t
)


@st.composite
def scalars(draw: st.DrawFn) -> str:
    """A scalar as written on a line: plain, double- or single-quoted."""
    token = draw(tokens)
    style = draw(st.sampled_from(["plain", "double", "single"]))
    if style == "double":
        return json.dumps(token, ensure_ascii=draw(st.booleans()))
    if style == "single":
        return "'" + token.replace("'", "''") + "'"
    return token


@st.composite
def flow_scalars(draw: st.DrawFn) -> str:
    """A scalar inside a flow collection, sometimes starting with an indicator."""
    prefix = draw(st.sampled_from(["", "", "", "", ":", "::", "?", "|", ">", "-", "|-"]))
    return prefix + draw(tokens) if prefix else draw(scalars())


@st.composite
def flow_keys(draw: st.DrawFn, indent: int) -> str:
    """A key of a flow mapping: plain or quoted, now and then broken across lines."""
    key, style = draw(keys), draw(st.sampled_from(["plain", "double", "single"]))
    if draw(st.integers(0, 5)) == 0:  # spans two lines
        key = key + "\n" + " " * indent + draw(keys)
    if style == "double":
        return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if style == "single":
        return "'" + key.replace("'", "''") + "'"
    return key


@st.composite
def flows(draw: st.DrawFn, indent: int = 0) -> str:
    """A flow sequence or mapping, on one line or spread over several."""
    inner = " " * (indent + 2)
    items = draw(st.lists(flow_scalars(), max_size=3))
    gap = draw(st.sampled_from([", ", ", ", ",", ",\n" + inner, "\n" + inner + ", "]))
    start = draw(st.sampled_from(["", "", " ", "\n" + inner]))
    if not draw(st.booleans()):
        colons = st.sampled_from([": ", ": ", ":", ":\n" + inner])
        items = [f"{draw(flow_keys(indent + 2))}{draw(colons)}{item}" for item in items]
        return "{" + start + gap.join(items) + "}"
    return "[" + start + gap.join(items) + "]"


@st.composite
def blocks(draw: st.DrawFn, indent: int = 0, depth: int = 0) -> list[str]:
    """Lines of a block mapping or sequence at `indent`."""
    sequence = draw(st.booleans())
    lines: list[str] = []
    used: set[str] = set()
    for _ in range(draw(st.integers(1, 3))):
        if sequence:
            head = " " * indent + "-"
        else:
            key = draw(keys.filter(lambda k: k not in used))
            used.add(key)
            head = " " * indent + key + ":"
        shape = draw(st.sampled_from(["scalar", "flow", "nested", "literal", "empty"]))
        if shape == "nested" and depth < 3:
            lines.append(head)
            lines += draw(blocks(indent + 2, depth + 1))
        elif shape == "literal":
            lines.append(head + " " + draw(st.sampled_from(["|", "|-", ">", ">-", "|+"])))
            body = draw(st.lists(st.sampled_from(["text", "more  words", "", "- x", "a: b"]),
                                 min_size=1, max_size=3))  # fmt: skip
            lines += [(" " * (indent + 2) + b) if b else "" for b in body]
        elif shape == "flow":
            lines.append(head + " " + draw(flows(indent)))
        elif shape == "empty":
            lines.append(head)
        else:
            lines.append(head + " " + draw(scalars()))
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from(["", "# note", "  # indented note"])))
    return lines


@st.composite
def files(draw: st.DrawFn) -> bytes:
    parts: list[str] = []
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["# header", "", "---"])))
    for number in range(draw(st.integers(1, 3))):
        if number:
            parts.append(draw(st.sampled_from(["---", "--- ", "---\n---", "---\n# empty"])))
        parts += draw(blocks())
    return ("\n".join(parts) + draw(st.sampled_from(["\n", "", "\n\n"]))).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files())
@example(b"a: 1\n---\n---\nb: 2\n")
@example(b"# c\n---\n  a: 1\n")
@example(b"- 0x1F\n- 1e3\n- .NaN\n- yes\n")
@example(b'- { "multi\n  line": value}\n')
@example(b"- { multi\n  line: value}\n")
@example(b'- { "key"::value }\n')
def test_fast_and_careful_paths_read_manifest_like_files_the_same(data: bytes) -> None:
    assert_paths_agree(data)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_fast_and_careful_paths_agree_on_any_text_the_fast_one_takes(text: str) -> None:
    assert_paths_agree(text.encode())


@pytest.mark.parametrize("path", sorted(REPO.glob("manifests/**/*.yaml")), ids=lambda p: p.name)
def test_the_example_manifests_take_the_fast_path(path: Path) -> None:
    assert assert_paths_agree(path.read_bytes())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"a: &x 1\nb: *x\n", id="anchors"),
        pytest.param(b"a: !!str 1\n", id="tags"),
        pytest.param(b"a: {<<: {b: 1}}\n", id="merge"),
        pytest.param(b"%YAML 1.2\n---\na: 1\n", id="directive"),
        pytest.param(b"a: 1\r\n", id="crlf"),
        pytest.param(b"\xef\xbb\xbfa: 1\n", id="bom"),
        pytest.param(b"a: 1_000\n", id="underscore-number"),
        pytest.param(b"a: 0b11\n", id="binary-number"),
        pytest.param(b"--- {a: 1}\n", id="content-on-marker"),
        pytest.param(b"a: 1\n...\n", id="document-end"),
        pytest.param(b"a: [1, 2\n", id="syntax-error"),
        pytest.param(b"a: 1\na: 2\n", id="duplicate-key"),
        pytest.param(b".nan: 1\n.NaN: 2\n", id="float-keys"),
        pytest.param(b"? [a, b]\n: 1\n", id="collection-key"),
        pytest.param(b"a: [x:]\n", id="colon-before-flow-indicator"),
        pytest.param(b"a: [:b]\n", id="flow-empty-key"),
        pytest.param(b"- {yes: :0}\n", id="value-starting-with-colon"),
        pytest.param(b"- : a\n", id="empty-key"),
        pytest.param(b"a: |\n  text", id="block-scalar-at-end-without-newline"),
        pytest.param(b"a: |\n\n", id="empty-block-scalar"),
        pytest.param(b"|\n0\n", id="bare-value"),
        pytest.param(b"a: {?}\n", id="explicit-key"),
        pytest.param(b"- a: 1\n" * 1100, id="large-with-much-structure"),
        pytest.param(b'- { "multi\n  line": value}\n', id="double-quoted-flow-key-on-two-lines"),
        pytest.param(b"- { multi\n  line: value}\n", id="plain-flow-key-on-two-lines"),
        pytest.param(b"- [a,\n  b]\n", id="flow-sequence-on-two-lines"),
        pytest.param(b'- ["a\n  b"]\n', id="quoted-scalar-leaving-a-flow-line-open"),
        pytest.param(b'- { "key"::value }\n', id="colon-after-a-quoted-key-and-its-colon"),
        pytest.param(b"- {'k':?x}\n", id="question-mark-after-a-quoted-keys-colon"),
        pytest.param(b"- {k:?x}\n", id="colon-question-mark"),
        pytest.param(b"- {k: |x}\n", id="literal-indicator-starting-a-flow-node"),
        pytest.param(b"- [a, >x]\n", id="folded-indicator-starting-a-flow-node"),
    ],
)
def test_what_only_the_careful_path_reads(data: bytes) -> None:
    assert parsing._parse_fast(data, "f", DEFAULT_LIMITS) is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"a: [b, c]  # [note\nd: {e: 1}\n", id="bracket-in-a-comment"),
        pytest.param(b"a: ['[', \"{\"]\n", id="brackets-in-quotes"),
        pytest.param(b"a: [it's, fine]\n", id="apostrophe-in-a-plain-scalar"),
        pytest.param(b"a: |-\n  x\nb: [1]\n", id="block-scalar-beside-a-flow"),
        pytest.param(b'a: {"k": v}\n', id="quoted-key-spaced"),
    ],
)
def test_what_the_careful_rules_leave_on_the_fast_path(data: bytes) -> None:
    assert assert_paths_agree(data)
