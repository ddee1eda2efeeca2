"""A cap on the statement text an audit event stores, so a huge statement cannot fill the disk.

Past ``audit.statement_max`` UTF-8 bytes the event keeps the first ``audit.statement_max``
bytes (cut at a character boundary) and records what was dropped as numbers: the full text's
length in bytes and its SHA-256, so a copy of the statement can still be matched to the event.
"""

from __future__ import annotations

import hashlib
from typing import Any


def cap_statement(event: dict[str, Any], limit: int) -> None:
    """Cap ``event["statement"]`` in place at ``limit`` bytes (0: no cap)."""
    text = event.get("statement")
    # A character is at most 4 bytes in UTF-8: most texts are decided without encoding them.
    if not limit or not isinstance(text, str) or len(text) * 4 <= limit:
        return
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return
    event["statement"] = encoded[:limit].decode("utf-8", "ignore")
    event["statement_truncated"] = True
    event["statement_length"] = len(encoded)
    event["statement_sha256"] = hashlib.sha256(encoded).hexdigest()
