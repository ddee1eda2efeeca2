"""Audit events as rows of ``audit_events``: the filterable fields pulled out into columns.

The full event always goes into ``event`` (jsonb) untouched, so nothing is lost when a field
has no column; the columns exist only so the ``logs`` filters can use indexes.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import Any

import orjson

# Column order of the staging table and of the tuples built by :func:`event_row`.
COLUMNS: tuple[str, ...] = (
    "trail_id",
    "proxy_id",
    "seq",
    "ts",
    "type",
    "session_id",
    "user_name",
    "database_name",
    "application_name",
    "client_addr",
    "command",
    "command_tag",
    "class",
    "tables",
    "action",
    "rules",
    "sqlstate",
    "duration_ms",
    "fingerprint",
    "statement",
    "hash",
    "event",
)

# The staging table holds text where the target has inet/timestamptz/jsonb: the casts happen
# in the INSERT … SELECT, inside the server, instead of in Python per value.
STAGING_TYPES: dict[str, str] = {
    "seq": "bigint",
    "tables": "text[]",
    "rules": "text[]",
    "duration_ms": "double precision",
}

# How each column is read out of the staging table into audit_events.
SELECT_EXPRESSIONS: dict[str, str] = {
    "ts": "ts::timestamptz",
    "client_addr": "client_addr::inet",
    "event": "event::jsonb",
}


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value).replace("\x00", "\ufffd")


def _inet(value: Any) -> str | None:
    """Client addresses that are IPs; ``unix`` (socket clients) and junk stay only in ``event``."""
    if not isinstance(value, str) or not value:
        return None
    return _canonical_ip(value)


@functools.lru_cache(maxsize=4096)
def _canonical_ip(value: str) -> str | None:
    # The same few client addresses recur in every batch: parse each once.
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _str_list(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [str(v).replace("\x00", "\ufffd") for v in value]


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_strip_nul(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip_nul(v) for k, v in value.items()}
    return value


def event_json(event: Mapping[str, Any], raw: str | None = None) -> str:
    """The event as JSON text PostgreSQL accepts: jsonb rejects ``\\u0000``, so NULs (which a
    binary bind parameter can carry) become U+FFFD there; the local trail keeps the original."""
    text = raw if raw is not None else orjson.dumps(event).decode()
    if "\\u0000" in text:
        text = orjson.dumps(_strip_nul(dict(event))).decode()
    return text


def event_row(event: Mapping[str, Any], trail_id: str, raw: str | None = None) -> tuple[Any, ...]:
    """One staging-table row for ``event`` of the trail ``trail_id`` (``raw`` is its JSON
    line, reused when given)."""
    decision = event.get("decision")
    action = rules = None
    if isinstance(decision, Mapping):
        action = _text(decision.get("action"))
        rule_list = decision.get("rules")
        if isinstance(rule_list, list):
            rules = [str(r.get("id")) for r in rule_list if isinstance(r, Mapping) and r.get("id")]
    return (
        trail_id,
        str(event["proxy_id"]),
        int(event["seq"]),
        str(event["ts"]),
        str(event.get("type") or ""),
        _text(event.get("session_id")),
        _text(event.get("user")),
        _text(event.get("database")),
        _text(event.get("application_name")),
        _inet(event.get("client_addr")),
        _text(event.get("command")),
        _text(event.get("command_tag")),
        _text(event.get("class")),
        _str_list(event.get("tables")),
        action,
        rules,
        _text(event.get("sqlstate")),
        _float(event.get("duration_ms")),
        _text(event.get("fingerprint")),
        _text(event.get("statement")),
        str(event["hash"]),
        event_json(event, raw),
    )
