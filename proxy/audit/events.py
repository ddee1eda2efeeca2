"""Audit events of one session, built in one place from typed records.

The relay produces :class:`~proxy.relay.statement.Completion` records and session facts; this
module turns them into the documented event objects (docs/audit-log.md). Field names are a
versioned contract: change them here, in the schema doc and in the readers together.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from proxy.audit.record import NULL, Event, QueryRecord, enc, enc_text
from proxy.identity import Identity
from proxy.policy.decision import ALLOW, Decision
from proxy.relay.rowguard import monitored
from proxy.relay.statement import Scope, Via

if TYPE_CHECKING:
    from proxy.gate import Gate
    from proxy.relay.statement import Completion
    from proxy.relay.transactions import TransactionEnd
    from proxy.sql.facts import StatementFacts

SCHEMA_VERSION = 1

_iso_second = -1
_iso_prefix = ""
_PAD = "000000"


def iso(ts: float) -> str:
    """UTC ISO-8601 with microseconds; the per-second prefix is formatted once a second."""
    global _iso_second, _iso_prefix
    second = int(ts)
    if second != _iso_second:
        _iso_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _iso_second = second
    # Zero-padded by hand: a format spec (``:06d``) is a generic call even compiled.
    micros = str(int((ts - second) * 1e6))
    return f"{_iso_prefix}.{_PAD[len(micros) :]}{micros}Z"


def duration_ms(elapsed_ns: int) -> float:
    """``round(elapsed_ns / 1e6, 3)``, without ``round``'s decimal conversion when the
    answer does not depend on it.

    Away from a tie (``elapsed_ns % 1000 != 500``) the double ``elapsed_ns / 1e6`` lies on
    the same side of the rounding boundary as the exact quotient (it is within half an ulp of
    it; the boundary is at least 1e-6 away), so ``round`` picks the same decimal, and the
    double nearest to that decimal is the correctly rounded ``micros / 1000``.
    """
    if 0 <= elapsed_ns < 1 << 52 and elapsed_ns % 1000 != 500:
        return ((elapsed_ns + 500) // 1000) / 1000
    return round(elapsed_ns / 1e6, 3)


_VALUES: tuple[tuple[Via | Scope, str, bytes], ...] = tuple(
    (member, member.value, enc(member.value)) for member in (*Via, *Scope)
)


def _value_of(member: Via | Scope) -> tuple[str, bytes]:
    """``member.value`` and its JSON. (``Enum.value`` is a Python-level property: ~900
    instructions even from compiled code.)"""
    for known, value, encoded in _VALUES:
        if known is member:
            return value, encoded
    return member.value, enc(member.value)


_TX_BYTES = {status: enc(status) for status in ("I", "T", "E")}
# Statement shapes whose record bytes are kept (shared by every session of the process),
# and the longest text whose encoding a shape keeps for the next statement with that text.
_SHAPES_MAX = 4096
_TEXT_KEPT_MAX = 2048


class _Shape:
    """What a statement shape contributes to query records, encoded once."""

    __slots__ = (
        "after_fingerprint",
        "before_address",
        "before_tag",
        "command",
        "fingerprint",
        "relations",
        "statement_class",
        "tables",
        "text",
        "text_bytes",
    )

    def __init__(self, stmt: StatementFacts | None) -> None:
        statement_class = stmt.statement_class if stmt is not None else None
        command = stmt.command if stmt is not None else None
        fingerprint = stmt.fingerprint if stmt is not None else None
        relations = stmt.relations if stmt is not None else ()
        self.statement_class = statement_class
        self.command = command
        self.fingerprint = fingerprint
        self.relations = relations
        self.before_address = b',"class":' + enc_text(statement_class) + b',"client_addr":'
        self.before_tag = enc_text(command) + b',"command_tag":'
        self.after_fingerprint = b',"error":null,"fingerprint":' + enc_text(fingerprint)
        # A table both read and written is listed once (as Gate.add_facts lists them).
        tables = list(dict.fromkeys(r.qualified for r in relations))
        self.tables = b',"tables":' + enc(tables) + b',"ts":"'
        self.text: str | None = None  # the last text recorded with this shape, and its bytes
        self.text_bytes = NULL

    def fits(self, stmt: StatementFacts | None) -> bool:
        """Whether ``stmt`` has this shape (a new literal's facts share the objects)."""
        if stmt is None:
            return self.fingerprint is None and self.statement_class is None
        return (
            stmt.relations is self.relations
            and stmt.statement_class is self.statement_class
            and stmt.command is self.command
            and stmt.fingerprint == self.fingerprint
        )


_SHAPES: dict[str | None, _Shape] = {}


def _new_shape(stmt: StatementFacts | None) -> _Shape:
    if len(_SHAPES) >= _SHAPES_MAX:
        _SHAPES.clear()
    shape = _SHAPES[stmt.fingerprint if stmt is not None else None] = _Shape(stmt)
    return shape


class SessionEvents:
    """Builds the events of one session; the identity fields are those at event time."""

    __slots__ = (
        "_address_bytes",
        "_app",
        "_base",
        "_database",
        "_database_bytes",
        "_decision",
        "_decision_bytes",
        "_end_identity",
        "_front",
        "_front_pid",
        "_gate",
        "_host",
        "_identity_bytes",
        "_port",
        "_proxy_bytes",
        "_proxy_id",
        "_session_bytes",
        "_session_id",
        "_transactions",
        "_user",
        "_user_bytes",
        "backend_pid",
        "identity",
        "statements",
    )

    def __init__(self, proxy_id: str, gate: Gate, identity: Identity) -> None:
        self._proxy_id = proxy_id
        self._gate = gate
        self.identity = identity
        self.backend_pid: int | None = None
        self.statements = 0
        self._base: dict[str, Any] = {}
        # transaction events waiting for their statements' seq (given at submission)
        self._transactions: dict[int, tuple[Event, ...]] = {}
        self._decision: Decision | None = None  # the last decision recorded, and its bytes
        self._decision_bytes = NULL
        self._rebuild()

    def set_identity(self, identity: Identity) -> None:
        if identity != self.identity:
            self.identity = identity
            self._rebuild()

    def _rebuild(self) -> None:
        ident = self.identity
        # The session's fields as plain attributes, read for every query event (a compiled
        # attribute read is far cheaper than the frozen dataclass's).
        self._app = ident.application_name
        self._host = ident.client_addr
        self._port = ident.client_port
        self._database = ident.database
        self._session_id = ident.session_id
        self._user = ident.user
        end: dict[str, Any] = {}
        if ident.end_identity:
            end["identity"] = ident.end_identity
            if ident.identity_source is not None:
                end["identity_source"] = ident.identity_source.value
        self._end_identity = end
        # (its canonical place: between "fingerprint" and "params")
        self._identity_bytes = b"".join(b',"%s":%s' % (k.encode(), enc(v)) for k, v in end.items())
        # The session's fields of a query record, encoded (proxy.audit.record).
        self._front_pid: int | None = -1  # (the front is made when backend_pid is known)
        self._front = b""
        self._address_bytes = b"".join(
            (
                enc_text(ident.client_addr),
                b',"client_port":',
                enc(ident.client_port),
                b',"command":',
            )
        )
        self._database_bytes = b',"database":' + enc_text(ident.database) + b',"decision":'
        self._proxy_bytes = b',"proxy_id":' + enc_text(self._proxy_id) + b',"rows":'
        self._session_bytes = (
            b',"session_id":' + enc_text(ident.session_id) + b',"sqlstate":null,"statement":'
        )
        self._user_bytes = (
            b',"type":"query","user":' + enc_text(ident.user) + b',"v":%d}' % SCHEMA_VERSION
        )
        self._base = {
            "v": SCHEMA_VERSION,
            "proxy_id": self._proxy_id,
            "session_id": ident.session_id,
            "user": ident.user,
            "database": ident.database,
            "application_name": ident.application_name,
            "client_addr": ident.client_addr,
            "client_port": ident.client_port,
            **end,
        }

    def event(self, kind: str, ts: float, **fields: Any) -> dict[str, Any]:
        event = self._base.copy()
        event["type"] = kind
        event["ts"] = iso(ts)
        if fields:
            event.update(fields)
        return event

    def record(self, done: Completion, tx_status: str | None = None) -> Event:
        """The ``query`` event of ``done``: a :class:`QueryRecord` for the common event (a
        statement that ran without error, was not refused, suspended, guarded, reviewed or
        dispatched ahead, with a text recorded on the loop), else the dict of
        :meth:`statement`. Both seal to the same bytes."""
        statement = done.statement
        if (
            statement is None
            or done.error is not None
            or done.refusal is not None
            or done.suspended
            or done.guard is not None
            or done.dispatch
            or statement.review_id
            or (statement.per_statement and done.index >= 0)
        ):
            return self.statement(done, tx_status)
        decision = statement.decision
        if decision is not None and decision.guard is not None and statement.stmt is not None:
            return self.statement(done, tx_status)  # a max_rows guard watched it
        stmt = done.stmt
        text = done.text
        gate = self._gate
        if gate.made_text(text, stmt, statement.facts) is not None:
            return self.statement(done, tx_status)  # a long text, recorded off the loop
        shape = _SHAPES.get(stmt.fingerprint if stmt is not None else None)
        if shape is None or not shape.fits(stmt):
            shape = _new_shape(stmt)
        recorded = gate.audit_text(text, stmt)
        if recorded is not None and gate.caps(recorded):
            return self.statement(done, tx_status)  # the trail caps it: a dict to change
        if recorded is shape.text:
            text_bytes = shape.text_bytes
        else:
            text_bytes = enc_text(recorded)
            if recorded is None or len(recorded) <= _TEXT_KEPT_MAX:
                shape.text = recorded
                shape.text_bytes = text_bytes
        self.statements += 1
        if decision is None:
            decision = ALLOW
        if decision is not self._decision:
            self._decision = decision
            self._decision_bytes = decision.as_audit_json()
        if self._front_pid != self.backend_pid:
            self._make_front()
        duration = duration_ms(done.ended_ns - done.started_ns)
        tag = done.tag
        portal = done.portal
        rows = done.rows
        params = done.params
        name = statement.name if done.index < 0 else ""
        status = tx_status or chr(done.tx_after)
        status_bytes = _TX_BYTES.get(status)
        if status_bytes is None:
            status_bytes = enc(status)
        middle = b"".join(
            (
                shape.before_address,
                self._address_bytes,
                shape.before_tag,
                enc_text(tag) if tag else NULL,
                self._database_bytes,
                self._decision_bytes,
                b',"duration_ms":',
                enc(duration),
                b',"duration_scope":',
                _value_of(done.scope)[1],
                shape.after_fingerprint,
                self._identity_bytes,
                b"" if params is None else b',"params":' + enc(params),
                b',"portal":',
                enc_text(portal) if portal else NULL,
                b',"prev_hash":',
            )
        )
        after_prev = b"".join(
            (
                b',"protocol":',
                _value_of(done.via)[1],
                self._proxy_bytes,
                NULL if rows is None else enc(rows),
                b',"seq":',
            )
        )
        back = b"".join(
            (
                self._session_bytes,
                text_bytes,
                b',"statement_name":',
                enc_text(name) if name else NULL,
                shape.tables,
                iso(done.started_wall).encode(),
                b'","tx_status":',
                status_bytes,
                self._user_bytes,
            )
        )
        return QueryRecord(
            self._front,
            middle,
            after_prev,
            back,
            shape.statement_class,
            decision.action,
            duration,
            self._host,
            recorded,
        )

    def _make_front(self) -> None:
        pid = self.backend_pid
        self._front_pid = pid
        self._front = b"".join(
            (
                b'{"application_name":',
                enc_text(self._app),
                b',"backend_pid":',
                enc(pid),
                b',"chain":',
            )
        )

    def statement(self, done: Completion, tx_status: str | None = None) -> dict[str, Any]:
        """The ``query`` event of a finished or refused statement.

        Built as one dict display (sized once) with its keys in canonical (sorted) order,
        ``chain``, ``prev_hash`` and ``seq`` reserved (None) where the trail fills them in:
        orjson's sort at sealing costs least on a record already in order (16,000 -> 12,000
        instructions an event, docs/benchmarks.md). The bytes written do not depend on it.
        """
        self.statements += 1
        gate = self._gate
        stmt = done.stmt
        statement = done.statement
        text = done.text
        refusal = done.refusal
        single = True
        if refusal is not None and done.index < 0 and statement is not None:
            # A refused message: its one statement, or the whole text when it held several.
            facts = statement.facts
            single = facts is not None and len(facts.statements) == 1
            stmt = facts.statements[0] if facts is not None and facts.statements else None
            text = done.text if single else statement.text
        # (A field added here beyond the base ones must also send its completions to this
        # path in record(), whose bytes stand for this dict.)
        error = done.error
        sqlstate: str | None = None
        message: str | None = None
        if error is not None:
            sqlstate = error.get("C") or "XX000"
            raw_params: tuple[bytes | None, ...] = done.bind_values
            message = gate.audit_error(
                error.get("M", ""),
                statement.text if statement is not None else text,
                raw_params,
                done.via is Via.EXTENDED,
                statement.facts if statement is not None else None,
            )
        event: dict[str, Any] = {
            "application_name": self._app,
            "backend_pid": self.backend_pid,
            "chain": None,
            "class": None,
            "client_addr": self._host,
            "client_port": self._port,
            "command": None,
            "command_tag": done.tag or None,
            "database": self._database,
            "decision": None,
            "duration_ms": duration_ms(done.ended_ns - done.started_ns),
            "duration_scope": _value_of(done.scope)[0],
            "error": message,
            "fingerprint": None,
            "portal": done.portal or None,
            "prev_hash": None,
            "protocol": _value_of(done.via)[0],
            "proxy_id": self._proxy_id,
            "rows": done.rows,
            "seq": None,
            "session_id": self._session_id,
            "sqlstate": sqlstate,
            "statement": None,
            "statement_name": (
                (statement.name or None) if statement is not None and done.index < 0 else None
            ),
            "tables": None,
            "ts": iso(done.started_wall),
            "tx_status": tx_status or chr(done.tx_after),
            "type": "query",
            "user": self._user,
            "v": SCHEMA_VERSION,
        }
        if self._end_identity:  # (out of canonical order: sealed with a sort)
            event.update(self._end_identity)
        gate.record_statement(event, text, stmt, statement.facts if statement is not None else None)
        gate.add_facts(
            event, stmt, refusal or (statement.decision if statement is not None else None)
        )
        if done.params is not None:
            event["params"] = done.params
        if statement is not None and statement.review_id:
            event["review_request"] = statement.review_id
        if statement is not None and statement.per_statement and done.index >= 0:
            per = statement.per_statement
            if done.index < len(per):
                own = per[done.index]
                event["statement_rules"] = own.as_audit()["rules"]
                event["statement_action"] = own.action
        if done.suspended:
            event["suspended"] = True  # no CommandComplete: the client stopped fetching
        if done.guard is not None:
            event["row_guard"] = done.guard.audit()
        elif statement is not None and refusal is None:
            decided = statement.decision
            if decided is not None and decided.guard is not None and statement.stmt is not None:
                event["row_guard"] = monitored(decided.guard, decided.mode, done.rows)
        if not single:
            event["command"] = event["class"] = event["fingerprint"] = None
        return event

    def transaction(self, end: TransactionEnd, ts: float) -> dict[str, Any]:
        """The ``transaction`` event: the outcome of the statements it names (by ``seq``,
        filled in by :meth:`before_submit`)."""
        event = self.event(
            "transaction",
            ts,
            outcome=end.outcome.value,
            reason=end.reason,
            explicit=end.explicit,
            statements=[],
        )
        if end.savepoint is not None:
            event["savepoint"] = end.savepoint
        self._transactions[id(event)] = end.statements
        return event

    def before_submit(self, event: Event) -> None:
        """Called for every event right before it enters the trail, in order: the statements
        a transaction event names were submitted before it, so their seq is known."""
        refs = self._transactions.pop(id(event), None)
        if refs is not None:
            # (a query event holds ``seq: None`` until it is submitted)
            event["statements"] = [e["seq"] for e in refs if e.get("seq") is not None]
