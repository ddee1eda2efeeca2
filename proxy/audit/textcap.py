"""A cap on the statement text an audit event stores, so a huge statement cannot fill the disk.

Past ``audit.statement_max`` UTF-8 bytes the event keeps the first ``audit.statement_max``
bytes (cut at a character boundary) and records what was dropped as numbers: the full text's
length in bytes and its SHA-256, so a copy of the statement can still be matched to the event.
"""

from __future__ import annotations

import hashlib

from proxy.audit.record import Event


def may_cap(text: str, limit: int) -> bool:
    """Whether ``text`` may be longer than ``limit`` UTF-8 bytes (``limit`` 0: no cap). A
    character is at most 4 bytes: most texts are decided without encoding them."""
    return len(text) * 4 > limit > 0


def cap_text(text: str, limit: int) -> tuple[str, int, str] | None:
    """``(kept start, whole length in bytes, whole SHA-256)`` when ``text`` is longer than
    ``limit`` UTF-8 bytes; None when it is kept whole (``limit`` 0: no cap)."""
    if not may_cap(text, limit):
        return None
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return None
    kept = encoded[:limit].decode("utf-8", "ignore")
    return kept, len(encoded), hashlib.sha256(encoded).hexdigest()


def cap_statement(event: Event, limit: int) -> None:
    """Cap ``event["statement"]`` in place at ``limit`` bytes (0: no cap)."""
    text = event.get("statement")
    if not isinstance(text, str):
        return
    capped = cap_text(text, limit)
    if capped is not None:
        mark_capped(event, *capped)


def mark_capped(event: Event, kept: str, length: int, sha256: str) -> None:
    """The fields of a capped statement text (docs/audit-log.md)."""
    event["statement"] = kept
    event["statement_truncated"] = True
    event["statement_length"] = length
    event["statement_sha256"] = sha256
