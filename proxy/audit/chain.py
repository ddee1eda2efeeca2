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

import hmac
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.record import Event, QueryRecord, jsonable, seal_into, sha256_hex
from proxy.errors import AuditError

GENESIS = "0" * 64
SHA256 = "sha256"
HMAC_SHA256 = "hmac-sha256"
_SORT = orjson.OPT_SORT_KEYS


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers: sorted keys, no whitespace, without ``hash``."""
    if "hash" in record:
        record = {k: v for k, v in record.items() if k != "hash"}
    try:
        return orjson.dumps(record, option=_SORT)
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(jsonable(record), option=_SORT)


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
        return sha256_hex  # (compiled, with the lean record's sealing)
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

    __slots__ = ("_hash", "_kind_bytes", "kind", "last_seq", "prev_hash")

    def __init__(self, key: bytes | None = None, last_seq: int = 0, prev_hash: str = GENESIS):
        self._hash = hasher(key)
        self.kind = SHA256 if key is None else HMAC_SHA256
        self._kind_bytes = b'"%s"' % self.kind.encode()
        self.last_seq = last_seq
        self.prev_hash = prev_hash

    def seal(self, events: Sequence[Event]) -> bytes:
        """All ``events`` as consecutive JSONL lines, chained to what came before."""
        dumps = orjson.dumps
        digest = self._hash
        kind = self.kind
        kind_bytes = self._kind_bytes
        prev = self.prev_hash
        parts: list[bytes] = []
        append = parts.append
        for event in events:
            if type(event) is QueryRecord and not event.dirty:
                # The lean record: its bytes around the chain's fields (proxy.audit.record).
                prev = seal_into(event, kind, kind_bytes, prev, digest, parts)
                continue
            if "hash" in event:  # a re-submitted record: its old hash is not part of it
                del event["hash"]
            event["prev_hash"] = prev
            event["chain"] = kind
            # (a changed lean record seals from the dict it stands for)
            record = event.as_dict() if isinstance(event, QueryRecord) else event
            try:
                # (orjson's sort is cheapest on a record already in order: a query event,
                # see proxy.audit.events)
                body = dumps(record, option=_SORT)
            except (TypeError, orjson.JSONEncodeError):
                record = _replace_contents(record)
                body = dumps(record, option=_SORT)
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
