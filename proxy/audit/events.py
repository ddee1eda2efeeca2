"""Audit events of one session, built in one place from typed records.

The relay produces :class:`~proxy.relay.statement.Completion` records and session facts; this
module turns them into the documented event objects (docs/audit-log.md). Field names are a
versioned contract: change them here, in the schema doc and in the readers together.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from proxy.identity import Identity
from proxy.relay.rowguard import monitored
from proxy.relay.statement import Scope, Via

if TYPE_CHECKING:
    from proxy.gate import Gate
    from proxy.relay.statement import Completion
    from proxy.relay.transactions import TransactionEnd

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


_VIA = tuple((via, via.value) for via in Via)
_SCOPE = tuple((scope, scope.value) for scope in Scope)


def _via_value(via: Via) -> str:
    # ``Enum.value`` is a Python-level property: ~900 instructions even from compiled code.
    for member, value in _VIA:
        if member is via:
            return value
    return via.value


def _scope_value(scope: Scope) -> str:
    for member, value in _SCOPE:
        if member is scope:
            return value
    return scope.value


class SessionEvents:
    """Builds the events of one session; the identity fields are those at event time."""

    __slots__ = (
        "_app",
        "_base",
        "_database",
        "_end_identity",
        "_gate",
        "_host",
        "_port",
        "_proxy_id",
        "_session_id",
        "_transactions",
        "_user",
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
        self._transactions: dict[int, tuple[dict[str, Any], ...]] = {}
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
            "duration_scope": _scope_value(done.scope),
            "error": message,
            "fingerprint": None,
            "portal": done.portal or None,
            "prev_hash": None,
            "protocol": _via_value(done.via),
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

    def before_submit(self, event: dict[str, Any]) -> None:
        """Called for every event right before it enters the trail, in order: the statements
        a transaction event names were submitted before it, so their seq is known."""
        refs = self._transactions.pop(id(event), None)
        if refs is not None:
            # (a query event holds ``seq: None`` until it is submitted)
            event["statements"] = [e["seq"] for e in refs if e.get("seq") is not None]
