"""Audit events as rows of ``audit_events``: the filterable fields pulled out into columns.

The full event always goes into ``event`` (jsonb) untouched, so nothing is lost when a field
has no column; the columns exist only so the ``logs`` filters can use indexes.

The proxy sends each event as the JSON line it wrote to the trail (no re-encoding, no
per-field work in Python) and the store's ``INSERT`` pulls the columns out of the jsonb it
parses anyway. Only the client address is prepared in Python, because what counts as an IP
(and its canonical spelling) is :mod:`ipaddress`'s, which a SQL cast would not match: a
``unix`` client or junk there must become NULL, never a failed batch.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.audit.record import Event, QueryRecord

# The columns of audit_events, in the order of the INSERT below.
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


def _field(key: str) -> str:
    # An absent, null or empty field is NULL in its column (and stays as it is in ``event``).
    return f"nullif(e->>'{key}', '')"


# How each column is computed from the event ``e`` (jsonb) and its client address ``addr``.
_EXPRESSIONS: dict[str, str] = {
    "trail_id": "$1",
    "proxy_id": "e->>'proxy_id'",
    "seq": "(e->>'seq')::bigint",
    "ts": "(e->>'ts')::timestamptz",
    "type": "coalesce(e->>'type', '')",
    "session_id": _field("session_id"),
    "user_name": _field("user"),
    "database_name": _field("database"),
    "application_name": _field("application_name"),
    "client_addr": "addr::inet",
    "command": _field("command"),
    "command_tag": _field("command_tag"),
    "class": _field("class"),
    "tables": "CASE WHEN jsonb_typeof(e->'tables') = 'array'"
    " THEN ARRAY(SELECT jsonb_array_elements_text(e->'tables')) END",
    "action": "nullif(e->'decision'->>'action', '')",
    "rules": "CASE WHEN jsonb_typeof(e->'decision'->'rules') = 'array'"
    " THEN ARRAY(SELECT r->>'id' FROM jsonb_array_elements(e->'decision'->'rules') AS r"
    " WHERE jsonb_typeof(r) = 'object' AND nullif(r->>'id', '') IS NOT NULL) END",
    "sqlstate": _field("sqlstate"),
    "duration_ms": "CASE WHEN jsonb_typeof(e->'duration_ms') = 'number'"
    " THEN (e->>'duration_ms')::double precision END",
    "fingerprint": _field("fingerprint"),
    "statement": _field("statement"),
    "hash": "e->>'hash'",
    "event": "e",
}


def insert_sql(quoted_schema: str) -> str:
    """One statement that stores a batch: ``$1`` the trail id, ``$2`` the events' JSON texts
    and ``$3`` their client addresses (empty: none), one per line (a :class:`Batch`; JSON
    text never holds a raw newline). A record already stored (same trail, seq and hash: a
    batch whose commit acknowledgement was lost) is skipped, never doubled."""
    columns = ", ".join(COLUMNS)
    select = ", ".join(_EXPRESSIONS[c] for c in COLUMNS)
    return (
        f"INSERT INTO {quoted_schema}.audit_events ({columns}) SELECT {select}"
        " FROM unnest(string_to_array($2, E'\\n')::jsonb[], string_to_array($3, E'\\n', ''))"
        " AS u(e, addr) ON CONFLICT (trail_id, seq, hash) DO NOTHING"
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """``count`` consecutive events of one trail from seq ``first_seq``, as the store takes
    them: kept as two strings, so nothing is encoded per event on the way out."""

    first_seq: int
    count: int
    texts: str  # the events' JSON texts as written, one per line (NULs made U+FFFD)
    addrs: str  # their client addresses for the inet column, one per line ("" for none)

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    def window(self, first_seq: int, limit: int) -> Batch:
        """The events from ``first_seq`` on (at most ``limit``)."""
        start = max(0, first_seq - self.first_seq)
        stop = min(self.count, start + limit)
        if start == 0 and stop == self.count:
            return self
        texts = self.texts.split("\n")[start:stop]
        addrs = self.addrs.split("\n")[start:stop]
        return Batch(self.first_seq + start, stop - start, "\n".join(texts), "\n".join(addrs))


def joined(batches: Sequence[Batch]) -> Batch:
    """Consecutive batches as one."""
    if len(batches) == 1:
        return batches[0]
    return Batch(
        batches[0].first_seq,
        sum(b.count for b in batches),
        "\n".join(b.texts for b in batches),
        "\n".join(b.addrs for b in batches),
    )


def written_batch(events: Sequence[Event], data: bytes) -> Batch | None:
    """The batch the trail just wrote (its events and their lines), or None if the lines do
    not match the events one to one (then the shipper reads them back from the files)."""
    if not events:
        return None
    first, last = events[0].get("seq"), events[-1].get("seq")
    if not isinstance(first, int) or not isinstance(last, int) or last - first + 1 != len(events):
        return None
    # One sealed line per event, each ending with its hash: check both ends (cheaply; the
    # middle follows from how the trail seals a batch).
    first_tail = b'"hash":"%s"}' % str(events[0].get("hash")).encode()
    if not (
        data.endswith(b'"hash":"%s"}\n' % str(events[-1].get("hash")).encode())
        and data.startswith(first_tail, data.find(b"\n") - len(first_tail))
    ):
        return None
    text = data[:-1].decode("utf-8", "replace")
    if _has_nul_escape(data):
        lines = text.split("\n")
        text = "\n".join(
            event_json(e.as_dict() if isinstance(e, QueryRecord) else e, t)
            for e, t in zip(events, lines, strict=True)
        )
    return Batch(first, len(events), text, _addr_lines([e.get("client_addr") for e in events]))


def _has_nul_escape(data: bytes) -> bool:
    """Whether the JSON ``data`` holds a ``\\u0000`` escape. Jumps from backslash to
    backslash (memchr): most lines hold none, and a plain substring search costs more than
    everything else the batch needs."""
    find = data.find
    pos = find(b"\\")
    while pos >= 0:
        if data.startswith(b"u0000", pos + 1):
            return True
        pos = find(b"\\", pos + 2)  # skip the escaped character (it may be a backslash)
    return False


def lines_batch(first_seq: int, lines: Sequence[tuple[Mapping[str, Any], str]]) -> Batch:
    """A batch of consecutive events read back from the files: (event, JSON line) each."""
    return Batch(
        first_seq,
        len(lines),
        "\n".join(event_json(event, raw) for event, raw in lines),
        _addr_lines([event.get("client_addr") for event, _raw in lines]),
    )


def _addr_lines(values: list[Any]) -> str:
    try:
        return "\n".join(map(_addr_text, values))
    except TypeError:  # an unhashable value (not an address at all)
        return "\n".join(client_inet(v) or "" for v in values)


@functools.lru_cache(maxsize=4096)
def _addr_text(value: Any) -> str:
    # The same few client addresses recur in every batch: parse each once.
    return client_inet(value) or ""


def client_inet(value: Any) -> str | None:
    """Client addresses that are IPs; ``unix`` (socket clients) and junk stay only in ``event``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_strip_nul(v) for v in value]
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    return value


def event_json(event: Mapping[str, Any], raw: str | None = None) -> str:
    """The event as JSON text PostgreSQL accepts: jsonb rejects ``\\u0000``, so NULs (which a
    binary bind parameter can carry) become U+FFFD there; the local trail keeps the original."""
    text = raw if raw is not None else orjson.dumps(event).decode()
    if "\\u0000" in text:
        # (sorted keys: the same text whether ``event`` came from memory or from the file)
        text = orjson.dumps(_strip_nul(dict(event)), option=orjson.OPT_SORT_KEYS).decode()
    return text
