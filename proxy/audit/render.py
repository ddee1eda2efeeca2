"""Audit events for people: aligned table rows and CSV records (``pgwarden logs``)."""

from __future__ import annotations

from typing import Any

CSV_COLUMNS = (
    "seq",
    "ts",
    "type",
    "user",
    "database",
    "application_name",
    "client_addr",
    "session_id",
    "action",
    "duration_ms",
    "rows",
    "sqlstate",
    "command_tag",
    "statement",
)

# (header, width) of the fixed columns; the statement takes what the terminal has left.
TABLE_COLUMNS = (
    ("TIME (UTC)", 23),
    ("USER@DB", 20),
    ("APP", 12),
    ("CLIENT", 15),
    ("ACTION", 6),
    ("MS", 9),
    ("RESULT", 9),
)
_MIN_STATEMENT = 20


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())  # statements span lines; a table row must not
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def action_of(event: dict[str, Any]) -> str:
    decision = event.get("decision")
    if isinstance(decision, dict) and isinstance(decision.get("action"), str):
        return str(decision["action"])
    return "allow" if event.get("type") == "query" else ""


def _result(event: dict[str, Any]) -> str:
    outcome = event.get("outcome")
    if isinstance(outcome, str):
        return outcome  # unknown / skipped: closed without a completion (write_ahead)
    if event.get("sqlstate"):
        return str(event["sqlstate"])
    rows = event.get("rows")
    return f"{rows} rows" if isinstance(rows, int) else ""


def _what(event: dict[str, Any]) -> str:
    kind = event.get("type")
    if kind == "query":
        text = str(event.get("statement") or "")
        if event.get("outcome"):
            return f"{text}  -- outcome {event['outcome']}: {event.get('reason')}"
        return f"{text}  -- {event['error']}" if event.get("error") else text
    if kind == "dispatch":
        return f"[dispatch] {event.get('statement') or ''}"
    if kind == "dispatch_closed":
        return f"[dispatch {event.get('dispatch')} closed: {event.get('outcome')}]"
    if kind == "dispatch_recovery":
        closed = event.get("closed")
        count = len(closed) if isinstance(closed, list) else 0
        return f"[dispatch recovery: {count} statement(s) closed with outcome unknown]"
    if kind == "session_start":
        tls = " tls" if event.get("tls") else ""
        return f"[session start{tls} pid={event.get('backend_pid')}]"
    if kind == "session_end":
        return (
            f"[session end: {event.get('reason')}, {event.get('statements')} statements, "
            f"{event.get('bytes_from_client')}B in / {event.get('bytes_to_client')}B out]"
        )
    if kind == "auth_failure":
        return f"[auth failure {event.get('sqlstate')}: {event.get('error')}]"
    if kind == "alert":
        return f"[alert {event.get('alert')} ({event.get('severity')}): {event.get('summary')}]"
    summary = review_summary(event)
    return f"[{kind}: {summary}]" if summary else f"[{kind}]"


REVIEW_PREVIEW = 200  # characters of statement text in a review summary


def review_summary(event: dict[str, Any]) -> str:
    """One line for people about an approval step ("" for other events)."""
    kind = event.get("type")
    rid, rule, user = event.get("request_id"), event.get("rule"), event.get("user")
    if kind == "review_requested":
        statement = " ".join(str(event.get("statement") or "(text not recorded)").split())
        links = event.get("links") if isinstance(event.get("links"), dict) else {}
        text = (
            f"{user} asks to run on {event.get('database')}: {statement[:REVIEW_PREVIEW]} "
            f"(request {rid}, rule {rule}, {event.get('approvals_needed')} approval(s) needed)"
        )
        if links:
            text += f" approve: {links.get('approve')} deny: {links.get('deny')}"
        return text
    if kind == "review_decided":
        who = event.get("approver") or "pgwarden"
        verb = "approved" if event.get("verdict") == "approve" else "denied"
        reason = f": {event['reason']}" if event.get("reason") else ""
        if event.get("break_glass"):
            return (
                f"BREAK-GLASS: {who} force-approved request {rid} of {user} (rule {rule}){reason}"
            )
        return (
            f"{who} {verb} request {rid} of {user} (rule {rule}), now {event.get('state')}{reason}"
        )
    if kind == "review_expired":
        return f"request {rid} of {user} (rule {rule}) expired without a decision"
    if kind == "review_withdrawn":
        return f"request {rid} of {user} (rule {rule}) withdrawn: {event.get('reason')}"
    return ""


def table_header(width: int) -> str:
    cells = [name.ljust(size) for name, size in TABLE_COLUMNS]
    return " ".join([*cells, "STATEMENT"])[:width]


def table_row(event: dict[str, Any], width: int) -> str:
    ts = str(event.get("ts") or "")
    when = ts[:23].replace("T", " ")
    who = f"{event.get('user') or '?'}@{event.get('database') or '?'}"
    duration = event.get("duration_ms")
    ms = f"{duration:.1f}" if isinstance(duration, int | float) else ""
    values = (
        when,
        who,
        str(event.get("application_name") or ""),
        str(event.get("client_addr") or "local"),
        action_of(event),
        ms,
        _result(event),
    )
    cells = []
    for (_, size), value in zip(TABLE_COLUMNS, values, strict=True):
        clipped = _clip(value, size)
        cells.append(clipped.rjust(size) if size == 9 else clipped.ljust(size))
    fixed = " ".join(cells)
    room = max(_MIN_STATEMENT, width - len(fixed) - 1)
    return f"{fixed} {_clip(_what(event), room)}"


def csv_record(event: dict[str, Any]) -> list[str]:
    out = []
    for column in CSV_COLUMNS:
        value = action_of(event) if column == "action" else event.get(column)
        out.append("" if value is None else str(value))
    return out
