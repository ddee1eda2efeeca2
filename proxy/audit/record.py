"""A query audit record sealed from pre-encoded bytes: the lean audit stage.

A query event's canonical JSON (sorted keys, proxy.audit.chain) interleaves fields that never
change in a session (user, database, client address…), fields that repeat with the statement
(class, command, fingerprint, tables, the decision) and a handful that are new every time
(duration, rows, timestamp, text). :class:`proxy.audit.events.SessionEvents` keeps the first
two kinds as encoded byte fragments and builds a :class:`QueryRecord` for the common event:
the bytes around ``chain``, ``prev_hash`` and ``seq`` (which the trail fills in) plus the
typed fields the trail, the metrics listener and the store read. The sealer joins the bytes
and hashes them; no 30-key dict is built or serialised for it (docs/benchmarks.md, "The lean
audit stage").

Anything else that reads a record gets the dict the record stands for (:meth:`as_dict`: the
same bytes parsed, so what it reads is what was written); anything that changes a field other
than the chain's marks the record *dirty*, and a dirty record is sealed from that dict by the
canonical path. The bytes are proven equal to the canonical path's in tests/test_audit_lean.py.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import orjson

NULL = b"null"
_dumps = orjson.dumps
_loads = orjson.loads
_sha256 = hashlib.sha256
_SORT = orjson.OPT_SORT_KEYS
_INT_RANGE = (-(2**63), 2**64 - 1)
# The keys every clean record has (``hash`` once sealed; ``params``, ``identity`` and
# ``identity_source`` when the session keeps them).
BASE_KEYS = frozenset(
    (
        "application_name",
        "backend_pid",
        "chain",
        "class",
        "client_addr",
        "client_port",
        "command",
        "command_tag",
        "database",
        "decision",
        "duration_ms",
        "duration_scope",
        "error",
        "fingerprint",
        "portal",
        "prev_hash",
        "protocol",
        "proxy_id",
        "rows",
        "seq",
        "session_id",
        "sqlstate",
        "statement",
        "statement_name",
        "tables",
        "ts",
        "tx_status",
        "type",
        "user",
        "v",
    )
)


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


def enc(value: Any) -> bytes:
    """One JSON value exactly as the canonical path spells it inside a record (sorted keys;
    what orjson refuses goes through the trail's :func:`jsonable`, as the whole record
    would)."""
    try:
        return _dumps(value, option=_SORT)
    except (TypeError, orjson.JSONEncodeError):
        return _dumps(jsonable(value), option=_SORT)


def enc_text(value: str | None) -> bytes:
    """A text field: ``null`` for None, else :func:`enc`."""
    if value is None:
        return NULL
    try:
        return _dumps(value)
    except orjson.JSONEncodeError:
        return _dumps(jsonable(value))


class QueryRecord:
    """A query event as bytes around the chain's fields, with what readers need typed.

    ``front`` ends with ``"chain":``, ``middle`` runs from ``,"class":`` to
    ``"prev_hash":``, ``after_prev`` from ``,"protocol":`` to ``"seq":``, ``back`` from
    ``,"session_id":`` to the closing brace.
    """

    __slots__ = (
        "_dict",
        "action",
        "after_prev",
        "back",
        "chain",
        "client_addr",
        "dirty",
        "duration_ms",
        "front",
        "hash",
        "middle",
        "prev_hash",
        "seq",
        "statement",
        "statement_class",
    )

    def __init__(
        self,
        front: bytes,
        middle: bytes,
        after_prev: bytes,
        back: bytes,
        statement_class: str | None,
        action: str,
        duration_ms: float,
        client_addr: str | None,
        statement: str | None,
    ) -> None:
        self.front = front
        self.middle = middle
        self.after_prev = after_prev
        self.back = back
        self.statement_class = statement_class
        self.action = action
        self.duration_ms = duration_ms
        self.client_addr = client_addr
        self.statement = statement
        self.seq: int | None = None
        self.prev_hash: str | None = None
        self.chain: str | None = None
        self.hash: str | None = None
        self.dirty = False
        self._dict: dict[str, Any] | None = None

    def body(self, chain: bytes, prev_hash: bytes, seq: bytes) -> bytes:
        """The canonical bytes with the chain's fields given already encoded."""
        return b"".join(
            (self.front, chain, self.middle, prev_hash, self.after_prev, seq, self.back)
        )

    def as_dict(self) -> dict[str, Any]:
        """The record as the dict the canonical path would hold (read it, do not change it:
        change the record, which then seals from this dict)."""
        found = self._dict
        if found is None:
            chain, prev, seq = self.chain, self.prev_hash, self.seq
            found = _loads(
                self.body(
                    NULL if chain is None else enc_text(chain),
                    NULL if prev is None else enc_text(prev),
                    NULL if seq is None else str(seq).encode(),
                )
            )
            if self.hash is not None:
                found["hash"] = self.hash
            self._dict = found
        return found

    # --- the mapping protocol of an event dict -------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        if key == "type":
            return "query"
        if key == "seq":
            return self.seq
        if key == "hash":
            return default if self.hash is None else self.hash
        if key == "prev_hash":
            return self.prev_hash
        if key == "chain":
            return self.chain
        found = self._dict
        if found is not None:
            return found.get(key, default)
        if key == "statement":
            return self.statement
        if key == "error" or key == "sqlstate":
            return None
        if key == "client_addr":
            return self.client_addr
        if key == "class":
            return self.statement_class
        if key == "duration_ms":
            return self.duration_ms
        return self.as_dict().get(key, default)

    def __getitem__(self, key: str) -> Any:
        found = self._dict
        if found is not None:
            return found[key]  # (kept in step with the chain's fields by __setitem__)
        if key == "hash" and self.hash is None:
            raise KeyError(key)
        if key in BASE_KEYS or key == "hash":
            return self.get(key)
        return self.as_dict()[key]

    def __contains__(self, key: object) -> bool:
        if key == "hash":
            return self.hash is not None
        if self._dict is None and key in BASE_KEYS:
            return True
        return key in self.as_dict()  # (and the optional ones: params, identity…)

    def __setitem__(self, key: str, value: Any) -> None:
        found = self._dict
        if key == "seq":
            self.seq = value
        elif key == "prev_hash":
            self.prev_hash = value
        elif key == "chain":
            self.chain = value
        elif key == "hash":
            self.hash = value
        else:
            found = self.as_dict()
            self.dirty = True
            if key == "statement":
                self.statement = value
        if found is not None:
            found[key] = value

    def __delitem__(self, key: str) -> None:
        if key == "hash":
            if self.hash is None:
                raise KeyError(key)
            self.hash = None
            if self._dict is not None:
                self._dict.pop("hash", None)
            return
        self.as_dict()
        self.dirty = True
        assert self._dict is not None
        del self._dict[key]


def sha256_hex(body: bytes) -> str:
    """The plain chain's hash of canonical bytes."""
    return _sha256(body).hexdigest()


def seal_into(
    record: QueryRecord,
    chain: str,
    chain_bytes: bytes,
    prev_hash: str,
    digest: Callable[[bytes], str],
    parts: list[bytes],
) -> str:
    """Seal a clean ``record`` after ``prev_hash``: its line goes to ``parts`` exactly as the
    canonical path writes it (proxy.audit.chain.Chainer); returns its hash."""
    body = record.body(chain_bytes, b'"%s"' % prev_hash.encode(), str(record.seq).encode())
    digested = digest(body)
    record.chain = chain
    record.prev_hash = prev_hash
    record.hash = digested
    record._dict = None  # (made again from the bytes, with these fields, when asked)
    parts.append(body[:-1])
    parts.append(b',"hash":"')
    parts.append(digested.encode())
    parts.append(b'"}\n')
    return digested


# An audit event on its way to the trail: a dict, or a query record standing for one.
Event = dict[str, Any] | QueryRecord
