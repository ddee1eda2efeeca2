"""The report as ONE self-contained HTML file: inline CSS, inline SVG, no script, no network.

Statement text, user names and error messages are attacker-controlled: every value is passed
through :func:`html.escape` (quotes included), and the page's Content-Security-Policy forbids
scripts and remote loads, so even a missed escape could not run code or phone home.
"""

from __future__ import annotations

from html import escape
from importlib import resources
from string import Template

from proxy.review import svg
from proxy.review.report import Report
from proxy.review.tables import (
    Table,
    fmt_int,
    fmt_ms,
    fmt_ts,
    one_line,
    report_tables,
    summary_items,
    window_text,
)

_CODE_WIDTH = 240
_CARD_CLASS = {"errors": "errors", "blocked": "block", "flagged": "flag"}


def render_html(report: Report) -> str:
    template = Template(
        resources.files("proxy.review").joinpath("templates/report.html").read_text("utf-8")
    )
    tables = report_tables(report)
    t = report.totals
    return template.substitute(
        title=escape(f"pgwarden report: {window_text(report)}"),
        header=_header(report),
        cards="\n".join(
            f'<div class="card {_CARD_CLASS.get(label, "")}"><div class="label">{escape(label)}'
            f'</div><div class="value">{escape(value)}</div></div>'
            for label, value in summary_items(report)
        ),
        timeline_note=escape(
            f"{fmt_int(t.statements)} statements in {_bucket_text(report.timeline_bucket_seconds)}"
            " buckets (UTC)"
        ),
        timeline_chart=svg.timeline_chart(report.timeline, report.timeline_bucket_seconds),
        latency_note=escape(
            f"p50 {fmt_ms(t.p50_ms)} · p95 {fmt_ms(t.p95_ms)} · p99 {fmt_ms(t.p99_ms)}"
            + (
                f" · {fmt_int(t.untimed)} statements without their own duration left out"
                if t.untimed
                else ""
            )
        ),
        latency_chart=svg.latency_chart(report.latency_bins),
        nav=" ".join(f'<a href="#{escape(tb.key)}">{escape(tb.title)}</a>' for tb in tables),
        sections="\n".join(section_html(tb) for tb in tables),
        generated_at=escape(fmt_ts(report.generated_at)),
    )


def _header(report: Report) -> str:
    rows = [
        ("window", window_text(report)),
        ("events", f"{fmt_ts(report.first_event)} … {fmt_ts(report.last_event)} UTC"),
        ("proxies", ", ".join(report.proxy_ids) or "-"),
    ]
    if report.filters:
        rows.append(("filters", " ".join(report.filters)))
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
    return f"<dl>{items}</dl>"


def section_html(table: Table) -> str:
    """One report table as an HTML section (every value escaped)."""
    parts = [f'<section id="{escape(table.key)}"><h2>{escape(table.title)}</h2>']
    if table.note:
        parts.append(f'<p class="note">{escape(table.note)}</p>')
    if not table.rows:
        parts.append(f'<p class="empty">{escape(table.empty)}</p></section>')
        return "".join(parts)
    head = "".join(f'<th class="{c.kind}">{escape(c.title)}</th>' for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for col, cell in zip(table.columns, row, strict=True):
            if col.kind == "code":
                short = one_line(cell, _CODE_WIDTH)
                cells.append(
                    f'<td class="code"><code title="{escape(cell)}">{escape(short)}</code></td>'
                )
            else:
                cells.append(f'<td class="{col.kind}">{escape(cell)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    parts.append(
        f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )
    return "\n".join(parts)


def _bucket_text(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400}-day"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}-hour"
    return f"{seconds // 60}-minute"
