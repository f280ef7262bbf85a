"""Names, labels, quantities and durations: what is accepted, and the error wording."""

from __future__ import annotations

import pytest

from mlsm.schemas import fields


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("16Gi", 16 * 2**30, id="binary-gi"),
        pytest.param("512Mi", 512 * 2**20, id="binary-mi"),
        pytest.param("2G", 2 * 10**9, id="decimal-g"),
        pytest.param("1.5Gi", 3 * 2**29, id="fraction-exact"),
        pytest.param("1000", 1000, id="plain-string"),
        pytest.param(4096, 4096, id="integer"),
    ],
)
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert fields.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["16Gb", "lots", "-1Gi", "1.0000001k", ""])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a|whole number"):
        fields.parse_bytes(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(16 * 2**30, "16Gi"), (512 * 2**20, "512Mi"), (1000, 1000), (0, 0)],
)
def test_format_bytes(value: int, expected: str | int) -> None:
    assert fields.format_bytes(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("500m", 0.5), ("2", 2.0), ("1500m", 1.5), (4, 4), (0.25, 0.25)],
)
def test_parse_cores(text: str | float, expected: float) -> None:
    assert fields.parse_cores(text) == expected


def test_parse_cores_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="millicores"):
        fields.parse_cores("two")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("6h30m", 23400, id="hours-minutes"),
        pytest.param("90s", 90, id="seconds"),
        pytest.param("2d", 172800, id="days"),
        pytest.param("1h0m30s", 3630, id="all-units"),
        pytest.param("250ms", 0.25, id="millis"),
        pytest.param(3600, 3600, id="number"),
    ],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert fields.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["6h30", "soon", "1 h", "h", ""])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        fields.parse_duration(text)


@pytest.mark.parametrize("seconds", [23400, 90, 0.25, 172800 + 61, 1.5])
def test_format_duration_round_trips(seconds: float) -> None:
    assert fields.parse_duration(fields.format_duration(seconds)) == seconds


@pytest.mark.parametrize("name", ["a", "vit-small", "x" * 63, "0abc", "a-1-b"])
def test_names_accepted(name: str) -> None:
    assert fields.check_name(name) == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        pytest.param("", "must not be empty", id="empty"),
        pytest.param("x" * 64, "at most 63 characters, got 64", id="too-long"),
        pytest.param("ViT_Small", "try 'vit-small'", id="suggests-fix"),
        pytest.param("-a", "starting and ending", id="leading-dash"),
        pytest.param("a.b", "DNS-1123", id="dot"),
    ],
)
def test_names_rejected(name: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        fields.check_name(name)


@pytest.mark.parametrize("key", ["gpu", "example.com/team", "app.kubernetes.io/name", "A_b.c-D"])
def test_label_keys_accepted(key: str) -> None:
    assert fields.check_label_key(key) == key


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("Example.com/team", "prefix"),
        ("/team", "prefix"),
        ("team!", "name part"),
        ("x" * 64, "name part"),
        ("a/", "name part"),
    ],
)
def test_label_keys_rejected(key: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        fields.check_label_key(key)


@pytest.mark.parametrize("value", ["", "a100", "v1.2_rc-3"])
def test_label_values_accepted(value: str) -> None:
    assert fields.check_label_value(value) == value


@pytest.mark.parametrize("value", ["has space", "-x", "x" * 64])
def test_label_values_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="label value"):
        fields.check_label_value(value)
