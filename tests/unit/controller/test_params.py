"""Query parameters parsed once: a wait is finite seconds within its range."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from mlsm.controller.params import seconds


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("", 5.0, id="absent-is-the-default"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("2.5", 2.5, id="fraction"),
        pytest.param("1e9", 30.0, id="longer-is-cut-to-the-bound"),
    ],
)
def test_a_wait_within_range(raw: str, expected: float) -> None:
    assert seconds(QueryParams({"wait": raw}), "wait", default=5.0, high=30.0) == expected


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "-1", "soon", "1e400"])
def test_a_wait_that_is_not_finite_seconds_is_refused_naming_the_range(raw: str) -> None:
    with pytest.raises(ValueError, match=rf"'wait' must be seconds from 0 to 30, got '{raw}'"):
        seconds(QueryParams({"wait": raw}), "wait", default=5.0, high=30.0)
