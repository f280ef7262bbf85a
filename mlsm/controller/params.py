"""Numeric query parameters, parsed once: a long poll's `wait` is a finite number of
seconds within a range, or the request is refused with the range named. Used by the
read API (`api.py`) and the agent API (`agents.py`), which each turn the ValueError
into their 400."""

from __future__ import annotations

import math

from starlette.datastructures import QueryParams

__all__ = ["seconds"]


def seconds(params: QueryParams, name: str, *, default: float, high: float) -> float:
    """`name` as seconds from 0 to `high` (a longer wait is cut to `high`). NaN,
    infinities, negatives and text raise ValueError with the message for the user."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"query parameter '{name}' must be seconds from 0 to {high:g}, got '{raw}'"
        )
    return min(value, high)
