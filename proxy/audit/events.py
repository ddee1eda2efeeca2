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
from proxy.relay.statement import Via

if TYPE_CHECKING:
    from proxy.gate import Gate
    from proxy.relay.statement import Completion
    from proxy.relay.transactions import TransactionEnd

SCHEMA_VERSION = 1

_iso_second = -1
_iso_prefix = ""


def iso(ts: float) -> str:
    """UTC ISO-8601 with microseconds; the per-second prefix is formatted once a second."""
    global _iso_second, _iso_prefix
    second = int(ts)
    if second != _iso_second:
        _iso_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _iso_second = second
    return f"{_iso_prefix}.{int((ts - second) * 1e6):06d}Z"


class SessionEvents:
    """Builds the events of one session; the identity fields are those at event time."""

    __slots__ = (
        "_base",
        "_gate",
        "_proxy_id",
        "_transactions",
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
        self._base = {
            "v": SCHEMA_VERSION,
            "proxy_id": self._proxy_id,
            "session_id": ident.session_id,
            "user": ident.user,
            "database": ident.database,
            "application_name": ident.application_name,
            "client_addr": ident.client_addr,
            "client_port": ident.client_port,
        }
        if ident.end_identity:
            self._base["identity"] = ident.end_identity
            if ident.identity_source is not None:
                self._base["identity_source"] = ident.identity_source.value

    def event(self, kind: str, ts: float, **fields: Any) -> dict[str, Any]:
        event = self._base.copy()
        event["type"] = kind
        event["ts"] = iso(ts)
        if fields:
            event.update(fields)
        return event

    def statement(self, done: Completion, tx_status: str | None = None) -> dict[str, Any]:
        """The ``query`` event of a finished or refused statement."""
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
        event = self._base.copy()
        event["type"] = "query"
        event["ts"] = iso(done.started_wall)
        gate.record_statement(event, text, stmt, statement.facts if statement is not None else None)
        event["protocol"] = done.via.value
        event["statement_name"] = (
            (statement.name or None) if statement is not None and done.index < 0 else None
        )
        event["portal"] = done.portal or None
        event["duration_ms"] = round((done.ended_ns - done.started_ns) / 1e6, 3)
        event["duration_scope"] = done.scope.value
        event["command_tag"] = done.tag or None
        event["rows"] = done.rows
        event["sqlstate"] = (error.get("C") or "XX000") if error is not None else None
        if error is not None:
            raw_params: tuple[bytes | None, ...] = done.bind_values
            event["error"] = gate.audit_error(
                error.get("M", ""),
                statement.text if statement is not None else text,
                raw_params,
                done.via is Via.EXTENDED,
                statement.facts if statement is not None else None,
            )
        else:
            event["error"] = None
        event["tx_status"] = tx_status or chr(done.tx_after)
        event["backend_pid"] = self.backend_pid
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
            event["statements"] = [e["seq"] for e in refs if "seq" in e]
