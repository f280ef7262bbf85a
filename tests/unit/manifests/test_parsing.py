"""YAML parsing limits and behaviour: what a hostile or careless file cannot do."""

from __future__ import annotations

import time

import pytest

from mlsm.manifests import parsing
from mlsm.manifests.parsing import Limits, parse_bytes


def messages(data: bytes, limits: Limits = parsing.DEFAULT_LIMITS) -> list[str]:
    return [f"{p.line}:{p.column}: {p.message}" for p in parse_bytes(data, "f", limits).problems]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"[" * 200_000, id="flow-sequences"),
        pytest.param(b"[" * 1_500, id="flow-sequences-past-libyamls-limit-in-a-small-file"),
        pytest.param(b"a: " + b"[" * 70 + b"1" + b"]" * 70, id="balanced-but-too-deep"),
        pytest.param(b"a:\n" + b"".join(b"  " * n + b"k:\n" for n in range(1, 80)), id="block"),
        pytest.param(b"{a: " * 100_000, id="flow-mappings"),
        pytest.param(b"- " * 200_000 + b"x", id="block-sequences"),
    ],
)
def test_deep_nesting_is_refused_in_mlsms_words_before_libyaml_sees_it(data: bytes) -> None:
    # libyaml's composer recurses in C (without the pre-scan a crash), and libyaml
    # refuses 1,000 levels itself ("exceeded maximum nesting depth"): mlsm's limit,
    # message and fix come first, whatever the library's version does.
    [problem] = messages(data)
    assert "nested deeper than 64 levels, the limit for a manifest; look for a '['" in problem
    assert "maximum nesting" not in problem


def test_a_syntax_error_in_a_structured_file_is_still_a_syntax_error() -> None:
    data = b"a: [" + b"1, " * 100 + b"\nb: {"  # over the pre-scan's threshold, never closed
    [problem] = messages(data)
    assert "invalid YAML" in problem


def test_moderate_nesting_within_limits_is_fine() -> None:
    data = b"a: " + b"[" * 30 + b"1" + b"]" * 30
    parsed = parse_bytes(data, "f")
    assert parsed.problems == []


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]")
    lines.append("j: [" + ", ".join(["*i"] * 10) + "]")  # 10^10 values if expanded
    start = time.perf_counter()
    found = messages("\n".join(lines).encode())
    assert time.perf_counter() - start < 2.0
    assert found
    assert "alias bomb" in found[0]


def test_aliases_within_budget_and_merge_keys_work() -> None:
    data = b"base: &base {cpu: 1, gpus: 0}\njob:\n  <<: *base\n  gpus: 2\ncopy: *base\n"
    parsed = parse_bytes(data, "f")
    assert parsed.problems == []
    assert parsed.documents[0].data == {
        "base": {"cpu": 1, "gpus": 0},
        "job": {"cpu": 1, "gpus": 2},
        "copy": {"cpu": 1, "gpus": 0},
    }


def test_file_size_limit() -> None:
    assert messages(b"a: 1\n" * 100, Limits(max_bytes=100)) == [
        "1:1: file is 500 bytes, over the 100-byte limit for a manifest file; "
        "split it into several files"
    ]


def test_document_count_limit() -> None:
    found = messages(b"---\na: 1\n" * 5, Limits(max_documents=3))
    assert found == ["1:1: more than 3 documents in one file; split it into several files"]


@pytest.mark.parametrize(
    "data",
    [
        b"!!python/object/apply:os.system ['ls']",
        b"a: !!python/name:os.system ''",
        b"a: !custom 1",
        b"a: !!set {x, y}",
        b"a: !!binary aGVsbG8=",
    ],
)
def test_tags_are_refused(data: bytes) -> None:
    found = messages(data)
    assert found
    assert "is not allowed" in found[0]


@pytest.mark.parametrize("careful", [False, True], ids=["fast", "careful"])
def test_scalars_follow_the_yaml_1_2_core_schema(careful: bool) -> None:
    data = (
        b"i: 0x1f\no: 0o17\nd: 010\nf: 1.5e+3\ng: 1e3\nb: yes\nt: True\nn: ~\ns: '3.10'\n"
        b"ts: 2024-01-01\ninf: -.inf\nsix: 1:30\nno: NO\n"
    )
    if careful:
        data += b"a: &x 1\n"  # an anchor sends the file down the careful path
    [doc] = parse_bytes(data, "f").documents
    assert doc.data == {
        "i": 31, "o": 15, "d": 10, "f": 1500.0, "g": 1000.0, "b": "yes", "t": True, "n": None,
        "s": "3.10", "ts": "2024-01-01", "inf": float("-inf"), "six": "1:30", "no": "NO",
    } | ({"a": 1} if careful else {})  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a: !!int 1_000\n", "'1_000' is not a YAML 1.2 integer"),
        (b"a: !!bool yes\n", "'yes' is not a YAML 1.2 boolean"),
        (b"a: !!float 1:30\n", "'1:30' is not a YAML 1.2 number"),
    ],
)
def test_explicit_core_tags_must_hold_their_type(data: bytes, message: str) -> None:
    assert any(message in m for m in messages(data))


def test_empty_documents_and_comments_are_skipped() -> None:
    parsed = parse_bytes(b"# only a comment\n---\n---\na: 1\n", "f")
    assert parsed.problems == []
    assert [d.data for d in parsed.documents] == [{"a": 1}]
    assert parsed.documents[0].position == parsing.Position(4, 1)


def test_invalid_utf8_is_a_located_problem() -> None:
    assert messages(b"a: 1\nb: \xff\xfe\n") == [
        "2:4: invalid text: invalid leading UTF-8 octet (byte 0xff); manifests must be UTF-8 "
        "without control characters"
    ]


def test_nul_byte_is_a_problem() -> None:
    found = messages(b"a: \x00\n")
    assert found == [
        "1:4: invalid text: control characters are not allowed (byte 0x00); manifests must be "
        "UTF-8 without control characters"
    ]


def test_collection_as_key_is_refused() -> None:
    found = messages(b"? [a, b]\n: 1\n")
    assert found == ["1:3: a mapping key must be a plain value, not a mapping or list"]


def test_locate_walks_to_values_keys_and_missing_fields() -> None:
    data = b"---\nkind: Node\nspec:\n  items:\n    - name: a\n    - name: b\n"
    doc = parsing.Position(2, 1)
    assert parsing.locate(data, doc, ["spec", "items", 1, "name"]) == parsing.Position(6, 13)
    assert parsing.locate(data, doc, ["spec", "items"], key=True) == parsing.Position(4, 3)
    # a missing field is shown at the key of its nearest parent that exists
    assert parsing.locate(data, doc, ["spec", "absent", "deeper"]) == parsing.Position(3, 1)
    assert parsing.locate(data, doc, ["kind"]) == parsing.Position(2, 7)
