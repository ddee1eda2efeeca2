"""Dispatch records (``audit.write_ahead``) and how the ones that never finished are closed.

With write-ahead a ``dispatch`` record is in the trail before a statement is forwarded; the
statement's own ``query`` record names it later (``dispatch``: the dispatch record's seq).
A dispatch that no record names was forwarded and never seen to finish: the proxy closes it
with a ``query`` record of ``outcome: unknown`` when the server connection is lost, and the
next start closes those a crash (kill -9, power loss) left open.

Each start with write-ahead ends its recovery with a ``dispatch_recovery`` record. Every
dispatch before such a record is settled (nothing is in flight when a proxy starts), so the
recovery only reads the trail back to the newest one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.jsonl import iter_raw_lines, trail_files

DISPATCH = "dispatch"
CLOSED = "dispatch_closed"
RECOVERY = "dispatch_recovery"

# A record's own keys, never copied into the record that closes a dispatch.
_OWN = frozenset({"type", "seq", "prev_hash", "hash", "chain", "trail_id", "statements"})
_SESSION = (
    "v",
    "proxy_id",
    "session_id",
    "user",
    "database",
    "application_name",
    "client_addr",
    "client_port",
    "identity",
    "identity_source",
)

# Byte patterns on canonical lines (sorted keys, no whitespace). A quote inside a JSON string
# is escaped, so none of them can come from statement text.
_IS_DISPATCH = b'"type":"dispatch",'
_IS_RECOVERY = b'"type":"dispatch_recovery",'
_NAMES = b'"dispatch":'
_SEQ = re.compile(rb'"seq":(\d+)')
_NAMED = re.compile(rb'"dispatch":(\d+)')
_COUNT = re.compile(rb'"statements":(\d+)')
_SETTLES = (b'"outcome":', b'"sqlstate":"')  # a closure, or an error: the rest did not run


def closing_record(dispatch: dict[str, Any], outcome: str, reason: str) -> dict[str, Any]:
    """The ``query`` record that closes ``dispatch`` (which carries its ``seq``) without a
    completion: ``outcome: unknown``, it may have run."""
    event = {k: v for k, v in dispatch.items() if k not in _OWN}
    event["type"] = "query"
    event["dispatch"] = dispatch["seq"]
    event["outcome"] = outcome
    event["reason"] = reason
    event["command_tag"] = None
    event["rows"] = None
    event["sqlstate"] = None
    event["error"] = None
    return event


def skipped_record(dispatch: dict[str, Any], ts: str) -> dict[str, Any]:
    """The ``dispatch_closed`` record of a dispatched statement the server skipped (an
    earlier statement of its pipeline failed): nothing of it ran, so it is no ``query``."""
    event = {k: dispatch[k] for k in _SESSION if k in dispatch}
    event["type"] = CLOSED
    event["ts"] = ts
    event["dispatch"] = dispatch["seq"]
    event["outcome"] = "skipped"
    event["reason"] = "earlier_error"
    return event


@dataclass(frozen=True, slots=True)
class Scan:
    """What the recovery found: the dispatch records without a finishing record, oldest
    first, and how many records (after the newest recovery record) it examined."""

    unfinished: tuple[dict[str, Any], ...]
    records_read: int


def _since_recovery(directory: Path) -> Iterator[bytes]:
    """The complete lines after the newest recovery record, oldest first, streamed (a first
    start with write-ahead on a long trail reads it all, holding only open dispatches)."""
    files = trail_files(directory)
    first, skip = 0, 0
    for index in range(len(files) - 1, -1, -1):
        marker = -1
        for number, raw in enumerate(iter_raw_lines(files[index].path)):
            if _IS_RECOVERY in raw and raw.endswith(b"\n"):
                marker = number
        if marker >= 0:
            first, skip = index, marker + 1
            break
    for position, trail_file in enumerate(files[first:]):
        for number, raw in enumerate(iter_raw_lines(trail_file.path)):
            if position == 0 and number < skip:
                continue
            if raw.endswith(b"\n"):
                yield raw


def scan(directory: str | Path) -> Scan:
    """The dispatches since the newest ``dispatch_recovery`` record that nothing finished.

    A torn last line is not a record: a dispatch cut off by a crash was never completely
    written, so its statement was never forwarded.
    """
    open_: dict[int, tuple[bytes, int]] = {}  # seq -> (line, records it needs)
    named: dict[int, int] = {}
    read = 0
    for raw in _since_recovery(Path(directory)):
        read += 1
        if _IS_DISPATCH in raw:
            match = _SEQ.search(raw)
            if match is not None:
                count = _COUNT.search(raw)
                # A multi-statement Query gets one record per statement; fewer without an
                # error means the rest may have run.
                open_[int(match.group(1))] = (raw, int(count.group(1)) if count else 1)
        elif _NAMES in raw:
            match = _NAMED.search(raw)
            if match is None:
                continue
            seq = int(match.group(1))
            if seq not in open_:
                continue
            seen = named[seq] = named.get(seq, 0) + 1
            if seen >= open_[seq][1] or any(marker in raw for marker in _SETTLES):
                del open_[seq]
                named.pop(seq, None)
    unfinished = []
    for raw, _needed in open_.values():
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # not a record (verify reports it)
        if isinstance(record, dict) and record.get("type") == DISPATCH:
            unfinished.append(record)
    return Scan(tuple(unfinished), read)


def recovery_record(proxy_id: str, ts: str, closed: list[int], records_read: int) -> dict[str, Any]:
    """The record that ends a start's recovery: every dispatch before it is settled."""
    return {
        "v": 1,
        "type": RECOVERY,
        "proxy_id": proxy_id,
        "ts": ts,
        "closed": closed,
        "records_read": records_read,
    }
