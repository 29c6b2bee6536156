"""Inline SVG charts drawn by hand: histogram, scatter and line charts (no JS, no external assets)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

PALETTE = ("#1f6feb", "#d1495b", "#2a9d8f", "#e9a23b", "#6a4c93", "#444444")
WIDTH, HEIGHT = 640, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 24, 48


def fmt_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.4g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick positions (1, 2, 2.5, 5 x 10^k steps) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw_step = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _padded_range(values: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if high == low:
        return low - 0.5, high + 0.5
    span = high - low
    return low - pad * span, high + pad * span


@dataclass(frozen=True)
class Frame:
    """Maps data coordinates into the plot area of a WIDTH x HEIGHT canvas."""

    x_low: float
    x_high: float
    y_low: float
    y_high: float

    def x(self, value: float) -> float:
        span = (self.x_high - self.x_low) or 1.0
        return MARGIN_LEFT + (value - self.x_low) / span * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)

    def y(self, value: float) -> float:
        span = (self.y_high - self.y_low) or 1.0
        return HEIGHT - MARGIN_BOTTOM - (value - self.y_low) / span * (HEIGHT - MARGIN_TOP - MARGIN_BOTTOM)


def _axes(
    frame: Frame, xlabel: str, ylabel: str, y_tick_label: Callable[[float], str] = fmt_number
) -> list[str]:
    bottom, left = HEIGHT - MARGIN_BOTTOM, MARGIN_LEFT
    parts = [f'<line class="axis" x1="{left}" y1="{bottom}" x2="{WIDTH - MARGIN_RIGHT}" y2="{bottom}"/>',
             f'<line class="axis" x1="{left}" y1="{MARGIN_TOP}" x2="{left}" y2="{bottom}"/>']
    for tick in nice_ticks(frame.x_low, frame.x_high):
        x = frame.x(tick)
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{fmt_number(tick)}</text>')
    for tick in nice_ticks(frame.y_low, frame.y_high):
        y = frame.y(tick)
        right = WIDTH - MARGIN_RIGHT
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>')
        label = escape(y_tick_label(tick))
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    parts.append(f'<text x="{(left + WIDTH - MARGIN_RIGHT) / 2:.0f}" y="{HEIGHT - 8}" '
                 f'text-anchor="middle" class="label">{escape(xlabel)}</text>')
    parts.append(f'<text transform="translate(14 {(MARGIN_TOP + bottom) / 2:.0f}) rotate(-90)" '
                 f'text-anchor="middle" class="label">{escape(ylabel)}</text>')
    return parts


def _svg(title: str, parts: Sequence[str]) -> str:
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" role="img"><title>{escape(title)}</title>'
            + "".join(parts) + "</svg>")


def histogram(values: np.ndarray, *, xlabel: str, title: str, bins: int = 40,
              marker: float | None = None, marker_label: str = "") -> str:
    """Counts of the finite values, with an optional vertical marker (e.g. the 0.95 quantile)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        empty = f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no finite values</text>'
        return _svg(title, [empty])
    counts, edges = np.histogram(finite, bins=bins)
    frame = Frame(float(edges[0]), float(edges[-1]), 0.0, float(counts.max()) * 1.08)
    parts = _axes(frame, xlabel, "samples")
    for count, left_edge, right_edge in zip(counts, edges[:-1], edges[1:], strict=True):
        x0, x1, y = frame.x(float(left_edge)), frame.x(float(right_edge)), frame.y(float(count))
        parts.append(f'<rect class="bar" x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
                     f'height="{frame.y(0) - y:.1f}"><title>{fmt_number(float(left_edge))} to '
                     f'{fmt_number(float(right_edge))}: {int(count)}</title></rect>')
    if marker is not None and math.isfinite(marker):
        x = frame.x(marker)
        bottom = frame.y(0)
        parts.append(f'<line class="marker" x1="{x:.1f}" y1="{MARGIN_TOP}" x2="{x:.1f}" y2="{bottom:.1f}"/>')
        anchor = "end" if x > WIDTH * 0.7 else "start"
        offset = -4 if anchor == "end" else 4
        parts.append(f'<text class="marker-label" x="{x + offset:.1f}" y="{MARGIN_TOP + 12}" '
                     f'text-anchor="{anchor}">{escape(marker_label)}</text>')
    return _svg(title, parts)


def scatter(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, title: str,
            log_y: bool = False, max_points: int = 4000) -> str:
    """Points (x, y); large sets are thinned to an even, deterministic subsample."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if log_y:
        with np.errstate(divide="ignore", invalid="ignore"):
            ys = np.where(ys > 0, np.log10(ys), np.nan)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if xs.size > max_points:
        chosen = np.linspace(0, xs.size - 1, max_points).round().astype(np.int64)
        xs, ys = xs[chosen], ys[chosen]
    frame = Frame(*_padded_range(xs), *_padded_range(ys))
    parts = _axes(frame, xlabel, ylabel, _power_of_ten if log_y else fmt_number)
    parts.extend(f'<circle class="dot" cx="{frame.x(a):.1f}" cy="{frame.y(b):.1f}" r="2"/>'
                 for a, b in zip(xs.tolist(), ys.tolist(), strict=True))
    return _svg(title, parts)


def _power_of_ten(exponent: float) -> str:
    return fmt_number(10.0**exponent)


def line_chart(x: Sequence[float], series: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str,
               title: str) -> str:
    """One polyline per named series over a shared x, with a legend; NaN breaks a line."""
    xs = np.asarray(x, dtype=np.float64)
    all_y = np.concatenate([np.asarray(v, dtype=np.float64) for v in series.values()]) if series else xs[:0]
    frame = Frame(*_padded_range(xs, 0.02), *_padded_range(all_y))
    parts = _axes(frame, xlabel, ylabel)
    for number, (name, values) in enumerate(series.items()):
        color = PALETTE[number % len(PALETTE)]
        ys = np.asarray(values, dtype=np.float64)
        points = [(frame.x(a), frame.y(b)) for a, b in zip(xs.tolist(), ys.tolist(), strict=True)]
        for run in _finite_runs(points):
            coordinates = " ".join(f"{a:.1f},{b:.1f}" for a, b in run)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coordinates}"/>')
            parts.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{color}"/>' for a, b in run)
        legend_y = MARGIN_TOP + 4 + 16 * number
        legend_x = WIDTH - MARGIN_RIGHT - 150
        parts.append(f'<rect x="{legend_x}" y="{legend_y - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{legend_x + 15}" y="{legend_y}">{escape(name)}</text>')
    return _svg(title, parts)


def _finite_runs(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for point in points:
        if math.isfinite(point[0]) and math.isfinite(point[1]):
            runs[-1].append(point)
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


def class_ranges(names: Sequence[str], medians: Sequence[float | None], highs: Sequence[float | None],
                 above: Sequence[int], *, threshold: float | None, ylabel: str, title: str,
                 max_classes: int = 40) -> str:  # fmt: skip
    """Per class (categorical x): a bar from the median to the 0.95 quantile, a dot at the median, the
    count above the threshold written over it, and the threshold as a dashed horizontal line."""
    names, medians, highs, above = (names[:max_classes], medians[:max_classes], highs[:max_classes],
                                    above[:max_classes])  # fmt: skip
    values = np.asarray([v for v in [*medians, *highs, threshold] if v is not None and math.isfinite(v)],
                        dtype=np.float64)  # fmt: skip
    low, high = _padded_range(values if values.size else np.zeros(1), 0.12)
    frame = Frame(-0.5, len(names) - 0.5, min(low, 0.0) if values.size and values.min() >= 0 else low, high)
    bottom, left, right = HEIGHT - MARGIN_BOTTOM, MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    parts = [f'<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>',
             f'<line class="axis" x1="{left}" y1="{MARGIN_TOP}" x2="{left}" y2="{bottom}"/>']
    for tick in nice_ticks(frame.y_low, frame.y_high):
        y = frame.y(tick)
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{escape(fmt_number(tick))}</text>")
    width = max(4.0, (right - left) / max(len(names), 1) * 0.35)
    for index, (name, median, q95, count) in enumerate(zip(names, medians, highs, above, strict=True)):
        x = frame.x(index)
        label = escape(name if len(name) <= 14 else name[:13] + "…")
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{label}</text>')
        if median is None or q95 is None:
            continue
        top_y, low_y = frame.y(q95), frame.y(median)
        parts.append(f'<rect class="bar" x="{x - width / 2:.1f}" y="{top_y:.1f}" width="{width:.1f}" '
                     f'height="{max(low_y - top_y, 1.0):.1f}"><title>{escape(name)}: median '
                     f'{fmt_number(median)}, 0.95 quantile {fmt_number(q95)}, {count} above the threshold'
                     '</title></rect>')
        parts.append(f'<circle class="median" cx="{x:.1f}" cy="{low_y:.1f}" r="3.5" fill="#1b1f24"/>')
        parts.append(f'<text x="{x:.1f}" y="{top_y - 5:.1f}" text-anchor="middle">{count}</text>')
    if threshold is not None and math.isfinite(threshold):
        y = frame.y(threshold)
        parts.append(f'<line class="marker" x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>'
                     f'<text class="marker-label" x="{right - 4}" y="{y - 4:.1f}" text-anchor="end">'
                     f'threshold {escape(fmt_number(threshold))}</text>')
    parts.append(f'<text transform="translate(14 {(MARGIN_TOP + bottom) / 2:.0f}) rotate(-90)" '
                 f'text-anchor="middle" class="label">{escape(ylabel)}</text>')
    parts.append(f'<text x="{(left + right) / 2:.0f}" y="{HEIGHT - 8}" text-anchor="middle" '
                 'class="label">class (bar: median to 0.95 quantile; number: samples above the threshold)'
                 "</text>")
    return _svg(title, parts)
