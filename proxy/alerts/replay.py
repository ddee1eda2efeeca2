"""Run recorded events through alert rules, with each event's own ``ts`` as the clock.

This is what ``pgwarden alerts test`` prints: which alerts would have fired, and when, had
the rules been live while the events were recorded. Nothing is delivered anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from proxy.alerts.engine import AlertEngine, parse_ts
from proxy.alerts.rules import AlertRule


def replay(
    rules: Sequence[AlertRule], events: Iterable[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Yield the alert events ``rules`` fire over ``events`` (in their recorded order)."""
    engine = AlertEngine(rules)
    for event in events:
        ts = event.get("ts")
        if not isinstance(ts, str):
            continue
        try:
            at = parse_ts(ts)
        except ValueError:
            continue
        yield from engine.observe(event, at)


def format_table(alerts: Sequence[Mapping[str, Any]]) -> str:
    """A plain text table: when, alert, severity, group, events, summary."""
    header = ("TIME (UTC)", "ALERT", "SEVERITY", "GROUP", "EVENTS", "SUMMARY")
    rows = [
        (
            str(a["ts"]).replace("T", " ").rstrip("Z")[:23],
            str(a["alert"]),
            str(a["severity"]),
            "" if a.get("group") is None else str(a["group"]),
            _seqs(a.get("events") or []),
            str(a["summary"]),
        )
        for a in alerts
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _seqs(seqs: Sequence[int]) -> str:
    if not seqs:
        return ""
    if len(seqs) <= 3:
        return ",".join(str(s) for s in seqs)
    return f"{seqs[0]}..{seqs[-1]} ({len(seqs)})"
