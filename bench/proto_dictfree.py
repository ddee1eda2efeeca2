"""A measured prototype, not project code: a query record sealed from pre-encoded fragments.

No per-event dict: the session's constant fields, each Decision's ``decision`` object and each
StatementFacts' ``class``/``command``/``fingerprint``/``tables`` are encoded once; a record is
three byte strings around ``prev_hash`` and ``seq`` plus the typed fields the metrics listener
reads. Only the common record shape is covered (no error, params, end identity, refusal, row
guard, per-statement rules, review request, suspension, capped text, multi-statement message):
``build`` asserts it. docs/benchmarks.md ("A dict-free query record, measured") says what it
saved; the relay's own record, built on it, is proxy/audit/record.py (stop 19). Compile it
with mypyc to count it as the compiled build would run it (bench/count_dictfree.py's
docstring has the commands).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from typing import Any

import orjson

from proxy.audit.chain import jsonable
from proxy.audit.events import duration_ms, iso
from proxy.identity import Identity
from proxy.metrics import LATENCY_BUCKETS, Metrics
from proxy.policy.decision import ALLOW, Decision
from proxy.relay.statement import Completion, Scope, Via
from proxy.sql.facts import StatementFacts

_NULL = b"null"
_dumps = orjson.dumps


def enc(value: Any) -> bytes:
    """One JSON value as orjson spells it (lone surrogates: the trail's jsonable fallback)."""
    try:
        return _dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return _dumps(jsonable(value))


def enc_str(value: str) -> bytes:
    if not value:
        return _NULL
    try:
        return _dumps(value)
    except orjson.JSONEncodeError:
        return _dumps(jsonable(value))


def _via(via: Via) -> bytes:
    if via is Via.SIMPLE:
        return b'"simple"'
    if via is Via.EXTENDED:
        return b'"extended"'
    return b'"function_call"'


class Record:
    """A sealed-to-be query record: bytes around prev_hash and seq, plus what metrics reads."""

    __slots__ = ("action", "cls", "duration", "head", "mid", "seq", "sqlstate", "tail")

    def __init__(
        self,
        head: bytes,
        mid: bytes,
        tail: bytes,
        cls: str | None,
        action: str,
        duration: float,
        sqlstate: str | None,
    ) -> None:
        self.head = head
        self.mid = mid
        self.tail = tail
        self.seq = 0
        self.cls = cls
        self.action = action
        self.duration = duration
        self.sqlstate = sqlstate


class Frags:
    """One session's constant fragments, and caches for decisions and statement facts."""

    def __init__(self, proxy_id: str, ident: Identity, backend_pid: int | None) -> None:
        self.s1 = (
            b'{"application_name":'
            + enc(ident.application_name)
            + b',"backend_pid":'
            + enc(backend_pid)
            + b',"chain":"sha256","class":'
        )
        self.s2 = (
            b',"client_addr":'
            + enc(ident.client_addr)
            + b',"client_port":'
            + enc(ident.client_port)
            + b',"command":'
        )
        self.s3 = b',"database":' + enc(ident.database) + b',"decision":'
        self.s4 = b',"proxy_id":' + enc(proxy_id) + b',"rows":'
        self.s5 = b',"session_id":' + enc(ident.session_id) + b',"sqlstate":'
        self.s6 = b',"user":' + enc(ident.user) + b',"v":1}'
        self.decisions: dict[int, tuple[Decision, bytes]] = {}
        self.facts: dict[int, tuple[StatementFacts, bytes, bytes, bytes, bytes, str]] = {}
        self.vias = {
            Via.SIMPLE: b'"simple"',
            Via.EXTENDED: b'"extended"',
            Via.FUNCTION_CALL: b'"function_call"',
        }
        self.scopes = {Scope.STATEMENT: b'"statement"', Scope.MESSAGE: b'"message"'}

    def decision(self, decision: Decision) -> bytes:
        hit = self.decisions.get(id(decision))
        if hit is not None and hit[0] is decision:
            return hit[1]
        out = _dumps(decision.as_audit(), option=orjson.OPT_SORT_KEYS)
        self.decisions[id(decision)] = (decision, out)
        return out

    def stmt(self, stmt: StatementFacts) -> tuple[StatementFacts, bytes, bytes, bytes, bytes, str]:
        hit = self.facts.get(id(stmt))
        if hit is not None and hit[0] is stmt:
            return hit
        tables = list(dict.fromkeys(r.qualified for r in stmt.relations))
        made = (
            stmt,
            enc(stmt.statement_class),
            enc(stmt.command),
            enc(stmt.fingerprint),
            enc(tables),
            stmt.statement_class,
        )
        self.facts[id(stmt)] = made
        return made

    def build(self, done: Completion, text: str, tx_status: str | None) -> Record:
        """The common case only: no error, no params, no end identity, one statement."""
        statement = done.statement
        assert statement is not None and done.error is None and done.refusal is None
        stmt = statement.stmt
        decision = statement.decision or ALLOW
        if stmt is not None:
            facts = self.stmt(stmt)
            cls_b, cmd_b, fp_b, tab_b, cls = facts[1], facts[2], facts[3], facts[4], facts[5]
        else:
            cls_b = cmd_b = fp_b = _NULL
            tab_b = b"[]"
            cls = None
        duration = duration_ms(done.ended_ns - done.started_ns)
        name = (statement.name or None) if done.index < 0 else None
        head = b"".join(
            (
                self.s1,
                cls_b,
                self.s2,
                cmd_b,
                b',"command_tag":',
                enc_str(done.tag),
                self.s3,
                self.decision(decision),
                b',"duration_ms":',
                _dumps(duration),
                b',"duration_scope":',
                (b'"statement"' if done.scope is Scope.STATEMENT else b'"message"'),
                b',"error":null,"fingerprint":',
                fp_b,
                b',"portal":',
                enc_str(done.portal),
                b',"prev_hash":"',
            )
        )
        mid = b"".join(
            (
                b'","protocol":',
                _via(done.via),
                self.s4,
                _NULL if done.rows is None else str(done.rows).encode(),
                b',"seq":',
            )
        )
        tail = b"".join(
            (
                self.s5,
                b'null,"statement":',
                enc_str(text),
                b',"statement_name":',
                _NULL if name is None else enc_str(name),
                b',"tables":',
                tab_b,
                b',"ts":"',
                iso(done.started_wall).encode(),
                b'","tx_status":"',
                (tx_status or chr(done.tx_after)).encode(),
                b'","type":"query"',
                self.s6,
            )
        )
        return Record(head, mid, tail, cls, decision.action, duration, None)


class Sealer:
    def __init__(self) -> None:
        self.prev = "0" * 64

    def seal(self, records: list[Record]) -> bytes:
        sha = hashlib.sha256
        prev = self.prev
        parts: list[bytes] = []
        append = parts.append
        for r in records:
            body = b"".join((r.head, prev.encode(), r.mid, str(r.seq).encode(), r.tail))
            prev = sha(body).hexdigest()
            append(body[:-1])
            append(b',"hash":"')
            append(prev.encode())
            append(b'"}\n')
        self.prev = prev
        return b"".join(parts)


def observe_typed(metrics: Metrics, records: list[Record]) -> None:
    """What Metrics._query does, from the record's typed fields."""
    counts = metrics.statement_counts
    for r in records:
        key = (r.cls or "unknown", r.action or "allow")
        counts[key] = counts.get(key, 0) + 1
        seconds = r.duration / 1000.0
        index = bisect_left(LATENCY_BUCKETS, seconds)
        if index < len(LATENCY_BUCKETS):
            metrics.latency_buckets[index] += 1
        metrics.latency_sum += seconds
        metrics.latency_count += 1


def lazy_dicts(lines: bytes) -> list[dict[str, Any]]:
    """The dicts a dict-reading listener would need: parsed back from the written lines."""
    return [orjson.loads(line) for line in lines.splitlines()]
