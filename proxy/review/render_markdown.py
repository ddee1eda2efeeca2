"""The report as GitHub-flavoured Markdown (for tickets, wikis, pull requests)."""

from __future__ import annotations

from proxy.review.report import Report
from proxy.review.tables import Table, one_line, report_tables, summary_items, window_text

_CODE_WIDTH = 100


def render_markdown(report: Report) -> str:
    lines = [
        "# pgwarden report",
        "",
        f"- **Window:** {_escape(window_text(report))}",
        f"- **Proxies:** {_escape(', '.join(report.proxy_ids) or '-')}",
    ]
    if report.filters:
        lines.append(f"- **Filters:** {_code(' '.join(report.filters))}")
    lines += ["", "## Summary", "", "| | |", "|---|---:|"]
    lines.extend(f"| {label} | {_escape(value)} |" for label, value in summary_items(report))
    for table in report_tables(report):
        lines.append("")
        lines.extend(render_table(table))
    return "\n".join(lines) + "\n"


def render_table(table: Table) -> list[str]:
    out = [f"## {table.title}", ""]
    if table.note:
        out += [f"_{_escape(table.note)}_", ""]
    if not table.rows:
        out.append(f"_{table.empty}_")
        return out
    out.append("| " + " | ".join(c.title for c in table.columns) + " |")
    out.append("|" + "|".join("---:" if c.kind == "num" else "---" for c in table.columns) + "|")
    for row in table.rows:
        cells = [
            _code(one_line(cell, _CODE_WIDTH))
            if col.kind == "code"
            else _escape(one_line(cell, 80))
            for col, cell in zip(table.columns, row, strict=True)
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _escape(text: str) -> str:
    """Neutralise Markdown and HTML syntax in untrusted text (user names, SQL, error messages):
    backslash escapes for Markdown punctuation (``\\|`` keeps a table cell whole), entities for
    the HTML specials."""
    out = []
    for ch in text:
        if ch in _MARKDOWN_SPECIALS:
            out.append("\\" + ch)
        elif ch in _HTML_ENTITIES:
            out.append(_HTML_ENTITIES[ch])
        else:
            out.append(ch)
    return "".join(out)


_MARKDOWN_SPECIALS = frozenset("\\`*_[]|~$")
_HTML_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def _code(text: str) -> str:
    """SQL in a ``<code>`` span: inline HTML, so the escapes above still apply inside it and a
    backtick or pipe in the statement cannot end the span or the table cell."""
    if not text:
        return ""
    return "<code>" + _escape(text) + "</code>"
