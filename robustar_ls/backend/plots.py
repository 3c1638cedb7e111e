"""Small inline-SVG line plots for the backend's page: no JavaScript, no CDN, no matplotlib.

:func:`line_plot` draws named series over labelled x positions (None = no point there), with
axes, ticks, a legend and a ``<title>`` per point (the browser shows it on hover). Every text
is escaped. The SVG carries ``data-plot`` and each series ``data-series``, for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
# fixed colours for the splits: out-of-domain test red, in-distribution blue/green
SPLIT_COLOURS = {"test": "#d62728", "val": "#1f77b4", "train": "#2ca02c"}


@dataclass(frozen=True)
class Frame:
    width: int = 600
    height: int = 280
    left: int = 56
    right: int = 110  # room for the legend
    top: int = 28
    bottom: int = 52

    @property
    def plot_w(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> int:
        return self.height - self.top - self.bottom


def _y_range(series: dict[str, list[float | None]], fixed: tuple[float, float] | None):
    if fixed is not None:
        return fixed
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.08
    return (0.0 if low >= 0 else low - pad), high + pad  # losses, accuracies: from 0


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _axes(frame: Frame, labels: list[str], low: float, high: float, y_label: str) -> list[str]:
    f, parts = frame, []
    x0, y0, y1 = f.left, f.top + f.plot_h, f.top
    parts.append(
        f'<rect x="{x0}" y="{y1}" width="{f.plot_w}" height="{f.plot_h}" fill="#fafafa" '
        'stroke="#999"/>'
    )
    for value in _ticks(low, high):
        y = y0 - (value - low) / (high - low) * f.plot_h
        parts.append(
            f'<line x1="{x0}" x2="{x0 + f.plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
        )
        parts.append(
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{value:.2f}</text>"
        )
    for i, label in enumerate(labels):
        x = _x(frame, i, len(labels))
        short = label if len(label) <= 12 else label[:11] + "…"
        parts.append(
            f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle" font-size="11">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
        )
    parts.append(
        f'<text x="14" y="{f.top + f.plot_h / 2:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {f.top + f.plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    return parts


def _x(frame: Frame, index: int, count: int) -> float:
    if count <= 1:
        return frame.left + frame.plot_w / 2
    return frame.left + 16 + index * (frame.plot_w - 32) / (count - 1)


def _series(frame: Frame, name: str, values, labels, low, high, colour) -> str:
    points = []
    for i, value in enumerate(values):
        if value is None or not math.isfinite(value):
            continue
        y = frame.top + frame.plot_h - (value - low) / (high - low) * frame.plot_h
        points.append((_x(frame, i, len(labels)), y, labels[i], value))
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}">'
        f"<title>{escape(name)} {escape(label)}: {value:.4g}</title></circle>"
        for x, y, label, value in points
    )
    return (
        f'<g class="series" data-series="{escape(name)}">'
        f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>{dots}</g>'
    )


def line_plot(
    name: str,
    title: str,
    labels: list[str],
    series: dict[str, list[float | None]],
    *,
    y_label: str = "",
    y_range: tuple[float, float] | None = None,
    colours: dict[str, str] | None = None,
    frame: Frame = Frame(),
) -> str:
    """An ``<svg>`` with one line per entry of ``series`` (values aligned with ``labels``)."""
    low, high = _y_range(series, y_range)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-plot="{escape(name)}" '
        f'width="{frame.width}" height="{frame.height}" viewBox="0 0 {frame.width} '
        f'{frame.height}" role="img" font-family="sans-serif">',
        f"<title>{escape(title)}</title>",
        f'<text x="{frame.left}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
        *_axes(frame, labels, low, high, y_label),
    ]
    for i, (key, values) in enumerate(series.items()):
        colour = (colours or {}).get(key, COLOURS[i % len(COLOURS)])
        parts.append(_series(frame, key, values, labels, low, high, colour))
        y = frame.top + 8 + 18 * i
        x = frame.left + frame.plot_w + 12
        parts.append(
            f'<line x1="{x}" x2="{x + 18}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="3"/>'
            f'<text x="{x + 24}" y="{y + 4}" font-size="12">{escape(key)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
