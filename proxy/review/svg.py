"""Inline SVG charts for the HTML report, drawn here so the page needs no script and no network.

Every text that reaches the markup goes through :func:`html.escape`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from html import escape

from proxy.review.report import LatencyBin, TimeBucket

ACTION_COLORS = {"allow": "#4c78a8", "flag": "#f2a93b", "block": "#e45756"}
_BAR_COLOR = "#5b8def"
_AXIS = "#8a94a6"
_GRID = "#e6e9ef"
_TEXT = "#4a5568"
_W, _H = 720, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 16, 44


def nice_ceiling(value: float) -> tuple[float, float]:
    """(top of the y axis, tick step): 1-2-5 steps, about five ticks."""
    if value <= 0:
        return 1.0, 1.0
    raw = value / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step: float = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(step, 1.0)
    return math.ceil(value / step) * step, step


def _count_label(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _frame(title: str, body: list[str], y_top: float, y_step: float) -> str:
    plot_h = _H - _TOP - _BOTTOM
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {_W} {_H}" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    ticks = round(y_top / y_step)
    for i in range(ticks + 1):
        value = i * y_step
        y = _TOP + plot_h - plot_h * value / y_top
        parts.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{_GRID}" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{_TEXT}">{_count_label(value)}</text>'
        )
    parts.extend(body)
    base = _TOP + plot_h
    parts.append(
        f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{base}" y2="{base}" stroke="{_AXIS}"/>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def timeline_chart(buckets: Sequence[TimeBucket], bucket_seconds: int) -> str:
    """Statements per time bucket, stacked by the action the proxy took."""
    title = "Statements over time by action"
    if not buckets:
        return f'<p class="empty">{escape(title)}: no statements</p>'
    peak = max(b.allow + b.flag + b.block for b in buckets)
    y_top, y_step = nice_ceiling(peak)
    plot_w = _W - _LEFT - _RIGHT
    plot_h = _H - _TOP - _BOTTOM
    slot = plot_w / len(buckets)
    gap = min(2.0, slot * 0.2)
    body: list[str] = []
    label_every = max(1, math.ceil(len(buckets) / 6))
    for i, bucket in enumerate(buckets):
        x = _LEFT + i * slot + gap / 2
        y: float = _TOP + plot_h
        total = bucket.allow + bucket.flag + bucket.block
        when = _short_time(bucket.start, bucket_seconds)
        tip = (
            f"{when}: {total} statements ({bucket.allow} allowed, {bucket.flag} flagged, "
            f"{bucket.block} blocked)"
        )
        body.append(f"<g><title>{escape(tip)}</title>")
        for action, count in (
            ("allow", bucket.allow),
            ("flag", bucket.flag),
            ("block", bucket.block),
        ):
            if not count:
                continue
            height = plot_h * count / y_top
            y -= height
            body.append(
                f'<rect class="bar-{action}" x="{x:.1f}" y="{y:.1f}" width="{slot - gap:.1f}" '
                f'height="{height:.1f}" fill="{ACTION_COLORS[action]}"/>'
            )
        body.append("</g>")
        if i % label_every == 0:
            body.append(
                f'<text x="{x + (slot - gap) / 2:.1f}" y="{_TOP + plot_h + 16}" font-size="11" '
                f'text-anchor="middle" fill="{_TEXT}">{escape(when)}</text>'
            )
    legend_x = _LEFT
    for action, label in (("allow", "allowed"), ("flag", "flagged"), ("block", "blocked")):
        body.append(
            f'<rect x="{legend_x}" y="{_H - 14}" width="10" height="10" rx="2" '
            f'fill="{ACTION_COLORS[action]}"/>'
            f'<text x="{legend_x + 14}" y="{_H - 5}" font-size="11" fill="{_TEXT}">{label}</text>'
        )
        legend_x += 84
    return _frame(title, body, y_top, y_step)


def latency_chart(bins: Sequence[LatencyBin]) -> str:
    """Statements per duration bin (1-2-5 scale, so the x axis is logarithmic)."""
    title = "Latency distribution"
    if not bins:
        return f'<p class="empty">{escape(title)}: no statements</p>'
    y_top, y_step = nice_ceiling(max(b.count for b in bins))
    plot_w = _W - _LEFT - _RIGHT
    plot_h = _H - _TOP - _BOTTOM
    slot = plot_w / len(bins)
    gap = min(4.0, slot * 0.15)
    body: list[str] = []
    label_every = max(1, math.ceil(len(bins) / 12))
    for i, b in enumerate(bins):
        x = _LEFT + i * slot + gap / 2
        height = plot_h * b.count / y_top
        tip = f"{_ms_label(b.lower_ms)} to {_ms_label(b.upper_ms)}: {b.count} statements"
        body.append(
            f'<g><title>{escape(tip)}</title><rect class="bar-latency" x="{x:.1f}" '
            f'y="{_TOP + plot_h - height:.1f}" width="{slot - gap:.1f}" height="{height:.1f}" '
            f'rx="2" fill="{_BAR_COLOR}"/></g>'
        )
        if i % label_every == 0:
            body.append(
                f'<text x="{x + (slot - gap) / 2:.1f}" y="{_TOP + plot_h + 16}" font-size="11" '
                f'text-anchor="middle" fill="{_TEXT}">≤{escape(_ms_label(b.upper_ms))}</text>'
            )
    body.append(
        f'<text x="{_LEFT}" y="{_H - 5}" font-size="11" fill="{_TEXT}">'
        "statement duration (upper bound of each bin)</text>"
    )
    return _frame(title, body, y_top, y_step)


def _ms_label(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:g} s"
    return f"{ms:g} ms"


def _short_time(iso: str, bucket_seconds: int) -> str:
    moment = datetime.fromisoformat(iso)
    if bucket_seconds >= 86400:
        return moment.strftime("%m-%d")
    return moment.strftime("%m-%d %H:%M")
