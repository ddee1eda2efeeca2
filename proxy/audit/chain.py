"""The hash chain that makes the audit trail tamper-evident.

Every record carries ``seq`` (per proxy, from 1, strictly +1), ``prev_hash`` (the previous
record's ``hash``; 64 zeros for the first), ``chain`` (``sha256`` or ``hmac-sha256``) and
``hash``: the hex SHA-256 (or HMAC-SHA256 with the key of ``audit.hmac_key_file``) of the
record's *canonical form* -- orjson with sorted keys, no whitespace, the record without its
``hash`` key. The line written is that canonical form with ``,"hash":"…"`` added before the
closing brace, so ``verify`` (or a person with ``sha256sum``) can recompute every hash.

Editing a record breaks its hash; deleting, inserting or reordering records breaks the
``seq`` sequence and the ``prev_hash`` links. With a plain SHA-256 chain someone able to
rewrite the files can rewrite the whole chain consistently; an HMAC key kept away from them
(and the central store, or an external copy of ``audit.head``) closes that gap.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from proxy.errors import AuditError

GENESIS = "0" * 64
SHA256 = "sha256"
HMAC_SHA256 = "hmac-sha256"
_SORT = orjson.OPT_SORT_KEYS
_INT_RANGE = (-(2**63), 2**64 - 1)


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers: sorted keys, no whitespace, without ``hash``."""
    if "hash" in record:
        record = {k: v for k, v in record.items() if k != "hash"}
    try:
        return orjson.dumps(record, option=_SORT)
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(jsonable(record), option=_SORT)


def jsonable(value: Any) -> Any:
    """``value`` made serializable without loss of anything a reader could rely on.

    Used only when orjson refuses an event (lone surrogates in text decoded from the wire,
    integers beyond 64 bits, non-string keys, unknown types): never drop an event over it.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, int):
        return value if _INT_RANGE[0] <= value <= _INT_RANGE[1] else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {
            jsonable(k) if isinstance(k, str) else str(k): jsonable(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return str(value)
    return value


def sealed_line(record: dict[str, Any]) -> bytes:
    """The exact line the writer produces for ``record`` (which carries its ``hash``).

    ``verify`` compares every line with this: a line that parses to the same record but is
    spelled differently (JSON escapes, a duplicate key, spacing, key order) is an edit, because
    readers that match on bytes (grep, ``logs``) and readers that parse would disagree on it.
    """
    body = canonical(record)
    return b"".join((body[:-1], b',"hash":"', str(record.get("hash")).encode(), b'"}\n'))


def head_mac(key: bytes, seq: int, digest: str) -> str:
    """The MAC that makes ``audit.head`` unforgeable without the key."""
    return hmac.digest(key, f"pgwarden audit.head {seq} {digest}".encode(), "sha256").hex()


def load_hmac_key(path: str | Path) -> bytes:
    """The HMAC key from ``audit.hmac_key_file`` (surrounding whitespace ignored)."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise AuditError(
            f"cannot read audit.hmac_key_file {str(path)!r}: {exc.strerror or exc}"
        ) from None
    if not key:
        raise AuditError(f"audit.hmac_key_file {str(path)!r} is empty")
    return key


def hasher(key: bytes | None) -> Callable[[bytes], str]:
    """The function from canonical bytes to the hex hash: SHA-256, or HMAC-SHA256 with ``key``."""
    if key is None:
        sha256 = hashlib.sha256

        def plain(body: bytes) -> str:
            return sha256(body).hexdigest()

        return plain
    digest = hmac.digest

    def keyed(body: bytes) -> str:
        return digest(key, body, "sha256").hex()

    return keyed


def record_hash(record: dict[str, Any], key: bytes | None = None) -> str:
    """What ``record["hash"]`` must be (for verification and by-hand checks)."""
    return hasher(key)(canonical(record))


class Chainer:
    """Seals records in order: sets ``prev_hash``, ``chain`` and ``hash``, returns JSONL bytes.

    ``seq`` is assigned earlier (at submit); the chainer only links what it is given.
    """

    __slots__ = ("_hash", "kind", "last_seq", "prev_hash")

    def __init__(self, key: bytes | None = None, last_seq: int = 0, prev_hash: str = GENESIS):
        self._hash = hasher(key)
        self.kind = SHA256 if key is None else HMAC_SHA256
        self.last_seq = last_seq
        self.prev_hash = prev_hash

    def seal(self, events: list[dict[str, Any]]) -> bytes:
        """All ``events`` as consecutive JSONL lines, chained to what came before."""
        dumps = orjson.dumps
        digest = self._hash
        kind = self.kind
        prev = self.prev_hash
        parts: list[bytes] = []
        append = parts.append
        for event in events:
            if "hash" in event:  # a re-submitted record: its old hash is not part of it
                del event["hash"]
            event["prev_hash"] = prev
            event["chain"] = kind
            try:
                # (orjson's sort is cheapest on a record already in order: a query event,
                # see proxy.audit.events)
                body = dumps(event, option=_SORT)
            except (TypeError, orjson.JSONEncodeError):
                event = _replace_contents(event)
                body = dumps(event, option=_SORT)
            prev = digest(body)
            event["hash"] = prev
            append(body[:-1])
            append(b',"hash":"')
            append(prev.encode())
            append(b'"}\n')
        if events:
            self.last_seq = events[-1]["seq"]
        self.prev_hash = prev
        return b"".join(parts)


def _replace_contents(event: dict[str, Any]) -> dict[str, Any]:
    """Make ``event`` serializable in place (listeners hold the same dict)."""
    cleaned = jsonable(event)
    event.clear()
    event.update(cleaned)
    return event
