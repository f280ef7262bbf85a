"""Charts drawn on the server as SVG: no build chain, no script, nothing fetched from
the internet. One chart per metric name (loss, accuracy, ...), one line per split
(train, val, test), a point per epoch with its value in a tooltip.

The SVG scales to its container's width (phone to desktop); colours and strokes come
from the site's stylesheet through classes, since the Content-Security-Policy
allows no inline style. Every text is escaped.
"""

from __future__ import annotations

import math
from typing import Any

from markupsafe import Markup, escape

__all__ = ["metric_charts"]

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 26, 30
CHARTED = ("loss", "accuracy")
"""Metric names charted first, in this order; others follow by name."""


def metric_charts(columns: list[str], epochs: dict[int | None, dict[str, Any]]) -> list[Markup]:
    """An SVG per metric name found in `columns` (`split/name`), from the per-epoch
    values (`mlsm.scores.per_epoch`)."""
    by_name: dict[str, list[str]] = {}
    for column in columns:
        name = column.rpartition("/")[2]
        by_name.setdefault(name, []).append(column)
    names = sorted(by_name, key=lambda n: (CHARTED.index(n) if n in CHARTED else 99, n))
    charts = []
    for name in names:
        series = {}
        for column in by_name[name]:
            points = [
                (float(epoch), float(values[column]))
                for epoch, values in epochs.items()
                if epoch is not None
                and isinstance(values.get(column), int | float)
                and math.isfinite(float(values[column]))
            ]
            if points:
                series[column.partition("/")[0] if "/" in column else column] = points
        if series:
            charts.append(_chart(name, series))
    return charts


def _chart(name: str, series: dict[str, list[tuple[float, float]]]) -> Markup:
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    if name == "accuracy" and y_low >= 0 and y_high <= 1:
        y_low, y_high = min(y_low, 0.0), 1.0
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            LEFT + (x - x_low) / (x_high - x_low) * plot_w,
            TOP + (1 - (y - y_low) / (y_high - y_low)) * plot_h,
        )

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(name)} per epoch" data-metric="{escape(name)}">',
        f'<text class="chart-title" x="{LEFT}" y="16">{escape(name)} per epoch</text>',
    ]
    for i in range(5):
        value = y_low + (y_high - y_low) * i / 4
        _, y = at(x_low, value)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{_number(value)}</text>'
        )
    for epoch in _epoch_ticks(x_low, x_high):
        x, _ = at(epoch, y_low)
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 10}" '
            f'text-anchor="middle">{epoch:g}</text>'
        )
    parts.append(
        f'<text class="tick" x="{LEFT - 6}" y="{HEIGHT - 10}" text-anchor="end">epoch</text>'
    )
    legend_x = LEFT + 150
    for split, points in sorted(series.items(), key=lambda kv: _colour(kv[0])):
        css = f"series-{_colour(split)}"
        coords = [at(x, y) for x, y in sorted(points)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline class="line {css}" points="{path}"/>')
        for (x, y), (epoch, value) in zip(coords, sorted(points), strict=True):
            parts.append(
                f'<circle class="point {css}" cx="{x:.1f}" cy="{y:.1f}" r="3" '
                f'data-split="{escape(split)}" data-epoch="{epoch:g}" data-value="{value:.6g}">'
                f"<title>{escape(split)} {escape(name)}, epoch {epoch:g}: "
                f"{_number(value)}</title></circle>"
            )
        parts.append(f'<rect class="swatch {css}" x="{legend_x}" y="8" width="10" height="10"/>')
        parts.append(f'<text class="legend" x="{legend_x + 14}" y="17">{escape(split)}</text>')
        legend_x += 24 + 8 * len(split)
    parts.append("</svg>")
    return Markup("".join(parts))


SPLIT_COLOURS = {"train": 0, "val": 1, "test": 2}
"""A split keeps its colour in every chart (others share the fourth)."""


def _colour(split: str) -> int:
    return SPLIT_COLOURS.get(split, 3)


def _epoch_ticks(low: float, high: float) -> list[float]:
    span = high - low
    step = max(1.0, 10 ** math.floor(math.log10(span / 5)) if span > 5 else 1.0)
    while span / step > 8:
        step *= 2
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _number(value: float) -> str:
    if value != 0 and abs(value) < 0.01:
        return f"{value:.1e}"  # a learning rate: short enough for the axis
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
