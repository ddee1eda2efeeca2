"""The report as aligned plain-text tables for a terminal."""

from __future__ import annotations

from proxy.review.report import Report
from proxy.review.tables import (
    Table,
    fmt_int,
    fmt_ts,
    one_line,
    report_tables,
    summary_items,
    window_text,
)

_CODE_WIDTH = 60


def render_text(report: Report) -> str:
    lines = [
        "pgwarden report",
        f"  window     {window_text(report)}",
        f"  events     {_span(report)}",
        f"  proxies    {', '.join(report.proxy_ids) or '-'}",
    ]
    if report.filters:
        lines.append(f"  filters    {' '.join(report.filters)}")
    lines.append("")
    lines.append("Summary")
    items = summary_items(report)
    width = max(len(label) for label, _ in items)
    lines.extend(f"  {label.ljust(width)}  {value}" for label, value in items)
    for table in report_tables(report):
        lines.append("")
        lines.extend(render_table(table))
    if report.timeline:
        lines.append("")
        lines.extend(_sparkline(report))
    return "\n".join(lines) + "\n"


def render_table(table: Table) -> list[str]:
    out = [table.title]
    if table.note:
        out.append(f"  ({table.note})")
    if not table.rows:
        out.append(f"  {table.empty}")
        return out
    rows = [
        tuple(
            one_line(cell, _CODE_WIDTH) if col.kind == "code" else one_line(cell, 40)
            for col, cell in zip(table.columns, row, strict=True)
        )
        for row in table.rows
    ]
    headers = tuple(c.title for c in table.columns)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    last = len(headers) - 1

    def line(cells: tuple[str, ...]) -> str:
        parts = []
        for i, (col, cell) in enumerate(zip(table.columns, cells, strict=True)):
            if col.kind == "num":
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell if i == last else cell.ljust(widths[i]))
        return "  " + "  ".join(parts).rstrip()

    out.append(line(headers))
    out.append("  " + "  ".join("-" * w for w in widths))
    out.extend(line(r) for r in rows)
    return out


def _span(report: Report) -> str:
    if not report.first_event:
        return "none in the window"
    first = report.first_event[:19].replace("T", " ")
    last = (report.last_event or "")[:19].replace("T", " ")
    return f"{first} … {last} UTC"


_BLOCKS = "▁▂▃▄▅▆▇█"


def _sparkline(report: Report) -> list[str]:
    """Statements per bucket as one line of block characters (the HTML report draws it)."""
    totals = [b.allow + b.flag + b.block for b in report.timeline]
    peak = max(totals) or 1
    bars = "".join(
        " " if n == 0 else _BLOCKS[min(len(_BLOCKS) - 1, n * len(_BLOCKS) // (peak + 1))]
        for n in totals
    )
    minutes = report.timeline_bucket_seconds // 60
    return [
        f"Statements over time ({fmt_int(minutes)}-minute buckets, peak {fmt_int(peak)})",
        f"  {fmt_ts(report.timeline[0].start)} |{bars}| {fmt_ts(report.timeline[-1].start)}",
    ]
