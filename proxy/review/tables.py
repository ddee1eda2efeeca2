"""The report as titled tables of display strings, shared by the text, Markdown and HTML renderers.

Each renderer decides only how a table looks; what the sections are, their order, their columns
and how numbers read is decided once here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxy.review.report import GroupRow, Report, SessionRow, ShapeRow

ColumnKind = Literal["text", "num", "code"]  # code: SQL text, shortened by the renderer


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    kind: ColumnKind = "text"


@dataclass(frozen=True, slots=True)
class Table:
    key: str  # stable id (HTML anchor)
    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""  # what the section means, or why it is empty
    empty: str = "none"


def fmt_int(value: int) -> str:
    return f"{value:,}"


def fmt_ms(value: float | None) -> str:
    """Durations for humans: ``0.42 ms``, ``12.3 ms``, ``4.56 s``, ``3.2 min``, ``1.5 h``."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} ms"
    if value < 1000:
        return f"{value:.1f} ms"
    seconds = value / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_ts(value: str | None) -> str:
    """``2026-11-26T07:40:00.123456Z`` → ``2026-11-26 07:40:00``."""
    if not value:
        return "-"
    return value[:19].replace("T", " ")


def one_line(text: str, limit: int) -> str:
    """SQL on one line (whitespace runs collapsed), cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _users(users: tuple[str, ...], limit: int = 5) -> str:
    shown = ", ".join(u or "(none)" for u in users[:limit])
    return shown + (f" +{len(users) - limit}" if len(users) > limit else "")


def _group_table(key: str, title: str, name: str, rows: tuple[GroupRow, ...]) -> Table:
    return Table(
        key=key,
        title=title,
        columns=(
            Column(name),
            Column("statements", "num"),
            Column("errors", "num"),
            Column("blocked", "num"),
            Column("flagged", "num"),
            Column("total time", "num"),
            Column("p95", "num"),
        ),
        rows=tuple(
            (
                r.key or "(none)",
                fmt_int(r.statements),
                fmt_int(r.errors),
                fmt_int(r.blocked),
                fmt_int(r.flagged),
                fmt_ms(r.total_ms),
                fmt_ms(r.p95_ms),
            )
            for r in rows
        ),
    )


def _shape_table(key: str, title: str, rows: tuple[ShapeRow, ...], note: str) -> Table:
    return Table(
        key=key,
        title=title,
        note=note,
        columns=(
            Column("count", "num"),
            Column("total", "num"),
            Column("p50", "num"),
            Column("p95", "num"),
            Column("p99", "num"),
            Column("errors", "num"),
            Column("fingerprint"),
            Column("example", "code"),
        ),
        rows=tuple(
            (
                fmt_int(r.count),
                fmt_ms(r.total_ms),
                fmt_ms(r.p50_ms),
                fmt_ms(r.p95_ms),
                fmt_ms(r.p99_ms),
                fmt_int(r.errors),
                r.fingerprint,
                r.example or "(statement text not recorded)",
            )
            for r in rows
        ),
    )


def _session_table(key: str, title: str, rows: tuple[SessionRow, ...]) -> Table:
    return Table(
        key=key,
        title=title,
        columns=(
            Column("session"),
            Column("user"),
            Column("database"),
            Column("application"),
            Column("client"),
            Column("first event"),
            Column("statements", "num"),
            Column("errors", "num"),
            Column("total time", "num"),
        ),
        rows=tuple(
            (
                r.session_id,
                r.user,
                r.database,
                r.application,
                r.client,
                fmt_ts(r.first_ts),
                fmt_int(r.statements),
                fmt_int(r.errors),
                fmt_ms(r.total_ms),
            )
            for r in rows
        ),
    )


def summary_items(report: Report) -> tuple[tuple[str, str], ...]:
    """(label, value) pairs for the summary block / cards."""
    t = report.totals
    return (
        ("events", fmt_int(t.events)),
        ("statements", fmt_int(t.statements)),
        ("sessions", fmt_int(t.sessions)),
        ("users", fmt_int(t.users)),
        ("errors", fmt_int(t.errors)),
        ("blocked", fmt_int(t.blocks)),
        ("flagged", fmt_int(t.flags)),
        ("auth failures", fmt_int(t.auth_failures)),
        ("total time", fmt_ms(t.total_ms)),
        ("p50", fmt_ms(t.p50_ms)),
        ("p95", fmt_ms(t.p95_ms)),
        ("p99", fmt_ms(t.p99_ms)),
        ("untimed", fmt_int(t.untimed) + " (duration covers more than the statement: left out)"),
        *(
            [("outcome unknown", fmt_int(t.unknown_outcomes) + " (forwarded, end never seen)")]
            if t.unknown_outcomes
            else []
        ),
        ("query shapes", fmt_int(report.shapes)),
    )


def window_text(report: Report) -> str:
    since = fmt_ts(report.since) if report.since else "beginning of the trail"
    until = fmt_ts(report.until) if report.until else "now"
    return f"{since} → {until} UTC"


def report_tables(report: Report) -> tuple[Table, ...]:
    top = report.top
    new_note = (
        f"{fmt_int(report.new_shapes_total)} shape(s) with no occurrence before the window"
        + (f"; first {top} shown" if report.new_shapes_total > top else "")
        if report.new_shapes_checked
        else "not computed (--no-first-seen, or no window start)"
    )
    return (
        _group_table("users", "By user", "user", report.by_user),
        _group_table("databases", "By database", "database", report.by_database),
        _group_table("applications", "By application", "application", report.by_application),
        _group_table("identities", "By end identity", "identity (source)", report.by_identity),
        _shape_table(
            "shapes-count",
            f"Top {top} query shapes by count",
            report.shapes_by_count,
            f"{fmt_int(report.shapes)} distinct shapes; latency percentiles within 1 %",
        ),
        _shape_table(
            "shapes-time",
            f"Top {top} query shapes by total time",
            report.shapes_by_time,
            "",
        ),
        Table(
            key="errors",
            title="Errors by SQLSTATE",
            columns=(
                Column("sqlstate"),
                Column("condition"),
                Column("count", "num"),
                Column("users"),
                Column("example error"),
                Column("example statement", "code"),
            ),
            rows=tuple(
                (
                    e.sqlstate,
                    e.condition,
                    fmt_int(e.count),
                    _users(e.users),
                    one_line(e.example_error, 120),
                    e.example_statement,
                )
                for e in report.errors
            ),
        ),
        Table(
            key="rules",
            title="Blocks and flags by rule",
            note="every blocked or flagged statement, under each rule its decision named",
            columns=(
                Column("rule"),
                Column("action"),
                Column("severity"),
                Column("count", "num"),
                Column("blocked", "num"),
                Column("flagged", "num"),
                Column("users"),
                Column("last seen"),
                Column("example", "code"),
            ),
            rows=tuple(
                (
                    r.rule,
                    r.action,
                    r.severity,
                    fmt_int(r.count),
                    fmt_int(r.blocked),
                    fmt_int(r.flagged),
                    _users(r.users),
                    fmt_ts(r.last_ts),
                    r.example or "(statement text not recorded)",
                )
                for r in report.rules
            ),
        ),
        Table(
            key="new-shapes",
            title="Query shapes seen for the first time",
            note=new_note,
            empty="none" if report.new_shapes_checked else "not computed",
            columns=(
                Column("first seen"),
                Column("user"),
                Column("count", "num"),
                Column("fingerprint"),
                Column("example", "code"),
            ),
            rows=tuple(
                (
                    fmt_ts(n.first_ts),
                    n.first_user,
                    fmt_int(n.count),
                    n.fingerprint,
                    n.example or "(statement text not recorded)",
                )
                for n in report.new_shapes
            ),
        ),
        _session_table(
            "sessions-statements", "Busiest sessions by statements", report.sessions_by_statements
        ),
        _session_table("sessions-time", "Busiest sessions by total time", report.sessions_by_time),
        *(_review_tables(report) if report.reviews else ()),
    )


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _review_tables(report: Report) -> tuple[Table, ...]:
    return (
        Table(
            key="approvals-rules",
            title="Approval requests by rule",
            note="approval rate: approved of approved, denied and expired; time to decide: "
            "from the request to the final approval or denial",
            columns=(
                Column("rule"),
                Column("requests", "num"),
                Column("approved", "num"),
                Column("denied", "num"),
                Column("expired", "num"),
                Column("withdrawn", "num"),
                Column("pending", "num"),
                Column("break-glass", "num"),
                Column("approval rate", "num"),
                Column("median time to decide", "num"),
            ),
            rows=tuple(
                (
                    r.rule,
                    fmt_int(r.requests),
                    fmt_int(r.approved),
                    fmt_int(r.denied),
                    fmt_int(r.expired),
                    fmt_int(r.withdrawn),
                    fmt_int(r.pending),
                    fmt_int(r.break_glass),
                    _rate(r.approval_rate),
                    _seconds(r.median_decide_s),
                )
                for r in report.reviews
            ),
        ),
        Table(
            key="approvals-people",
            title="Approval decisions by approver",
            columns=(
                Column("approver"),
                Column("approved", "num"),
                Column("denied", "num"),
                Column("break-glass", "num"),
                Column("median time to decide", "num"),
            ),
            rows=tuple(
                (
                    a.approver,
                    fmt_int(a.approvals),
                    fmt_int(a.denials),
                    fmt_int(a.break_glass),
                    _seconds(a.median_decide_s),
                )
                for a in report.approvers
            ),
        ),
    )
