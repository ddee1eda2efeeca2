"""The runtime row guard: a rule's ``max_rows: N`` (issue 10 §2, docs/policies.md).

No parser can tell how many rows ``UPDATE t SET … WHERE id > 0`` touches. So pgwarden runs a
guarded statement inside a savepoint it creates (inside a transaction it opens when the client
has none), reads the command tag, and

* with at most N rows, releases the savepoint (or leaves its transaction to end where the
  client's implicit one would) and the client gets the result it was held back from;
* with more — or a reply that counts no rows — rolls back to the savepoint and answers a
  policy error, leaving the client's transaction as a blocked statement leaves it: failed
  inside a transaction block, ended outside one;
* a statement that fails by itself is left failed: the savepoint is never used to recover a
  transaction the server failed.

The requests of its own go through :mod:`proxy.relay.inject`; what the client would see of
the statement is held in the backend scanner's capture until the guard decides. While a
guard runs, the client's later messages wait in the relay core's backlog, so nothing behind
a guarded statement runs before it is decided.

One :class:`RowGuard` follows one guarded statement (or the end of a transaction the guard
opened) through its :class:`Phase` values; the relay core calls it from its hooks.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from proxy.policy.decision import Decision, RowLimit
from proxy.relay.inject import Answer, Injected, Injector
from proxy.relay.statement import GuardOutcome, GuardResult
from proxy.wire import constants as c
from proxy.wire import messages as m

if TYPE_CHECKING:
    from proxy.relay.core import RelayCore
    from proxy.relay.replies import Pending

SAVEPOINT = "pgwarden_row_guard"
POISON_NAME = b"pgwarden_row_guard"
# Outcomes whose reply the client gets as the server sent it.
DELIVERED = frozenset({GuardOutcome.WITHIN, GuardOutcome.FAILED})
_U32 = struct.Struct("!I")
# Command tags that count the rows a write changed ("INSERT 0 n" for INSERT … ON CONFLICT).
_COUNTED = ("UPDATE ", "DELETE ", "MERGE ", "INSERT ")
# Fails at run time, after the statements before it in the same Query ran: it fails the
# client's transaction where the refused statement would have failed it.
_FAIL = "SELECT 'pgwarden: the row guard refused the statement'::pg_catalog.int4"


class Phase(Enum):
    DRAIN = "drain"  # replies owed for earlier requests arrive first
    OPEN = "open"  # BEGIN / SAVEPOINT sent
    RUN = "run"  # the statement sent; its reply is captured
    CLOSE = "close"  # decided; RELEASE / COMMIT / ROLLBACK (TO) sent
    SETTLE = "settle"  # the client's Sync ends a transaction the guard opened
    PROBE = "probe"  # not a guard: a question to the server while a statement is held
    DONE = "done"  # what was held goes to the client at the end of this server chunk


def counted(tag: str) -> int | None:
    """Rows a write's command tag reports; None when the tag counts none."""
    if tag.startswith(_COUNTED):
        return m.rows_from_tag(tag)
    return None


def refusal(decision: Decision, limit: RowLimit, rows: int | None) -> Decision:
    """The block the client is answered with when the statement changed too many rows."""
    if rows is None:
        reason = f"max_rows {limit.limit}: the reply did not count the rows changed"
    else:
        reason = f"max_rows {limit.limit}: the statement changed {rows} rows"
    return replace(
        decision,
        action="block",
        intended="block",
        reason=reason,
        message=limit.message,
        sqlstate=limit.sqlstate,
        guard=limit,
    )


def multi_statement_refusal(decision: Decision, limit: RowLimit) -> Decision:
    """A guarded statement inside a Query of several: refused, never run unguarded (its rows
    could not be told apart from the others', nor undone alone)."""
    return replace(
        decision,
        action="block",
        intended="block",
        reason=f"max_rows {limit.limit}: a guarded statement must be sent alone",
        message=f"{limit.message} (pgwarden guards max_rows only for a statement sent on its "
        "own, not inside a Query of several statements)",
        sqlstate=limit.sqlstate,
    )


def unavailable(decision: Decision, limit: RowLimit, answer: Answer | None = None) -> Decision:
    """A guarded statement the guard cannot wrap: refused, never run unguarded."""
    why = "this session cannot hold replies back"
    if answer is not None and answer.error is not None:
        why = f"the server refused {answer.request.sql}: {answer.error.get('M', '')}"
    return replace(
        decision,
        action="block",
        intended="block",
        reason=f"max_rows {limit.limit}: the row guard could not start ({why})",
        message=f"{limit.message} (pgwarden could not guard it: {why})",
        sqlstate=limit.sqlstate,
    )


def error_for(limit: RowLimit, rows: int | None) -> bytes:
    if rows is None:
        detail = "its reply did not say how many rows it changed"
    else:
        detail = f"it changed {rows} rows"
    return m.error_response(
        limit.sqlstate,
        limit.message,
        detail=f"pgwarden rule: {limit.rule_id} (max_rows {limit.limit}); {detail}, so pgwarden "
        "rolled it back",
    )


def monitored(limit: RowLimit, mode: str, rows: int | None) -> dict[str, Any]:
    """The ``row_guard`` of a statement a max_rows rule matched but did not guard."""
    outcome = GuardOutcome.MONITOR if mode == "monitor" else GuardOutcome.SKIPPED
    out = GuardResult(limit.limit, limit.rule_id, outcome, rows).audit()
    if mode == "monitor" and rows is not None:
        out["would_refuse"] = rows > limit.limit
    return out


def keep_async(data: bytes) -> bytes:
    """Of server bytes, the messages that belong to no request (NotificationResponse,
    ParameterStatus): a refused statement's own reply is dropped, they are not."""
    out = []
    pos = 0
    end = len(data)
    while end - pos >= 5:
        kind = data[pos]
        (length,) = _U32.unpack_from(data, pos + 1)
        if kind == 65 or kind == 83:
            out.append(data[pos : pos + 1 + length])
        pos += 1 + length
    return b"".join(out)


IDLE_TIMEOUT_SETTING = "idle_in_transaction_session_timeout"
_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def setting_seconds(text: str) -> float | None:
    """A time setting as SHOW prints it ("0", "500ms", "10s", "5min") in seconds."""
    text = text.strip()
    digits = len(text) - len(text.lstrip("0123456789"))
    if not digits:
        return None
    unit = text[digits:].strip() or "ms"
    scale = _UNITS.get(unit)
    return int(text[:digits]) * scale if scale is not None else None


def first_value(data: bytes) -> str | None:
    """The first column of the first DataRow in server bytes (a SHOW's answer)."""
    pos = 0
    end = len(data)
    while end - pos >= 5:
        kind = data[pos]
        (length,) = _U32.unpack_from(data, pos + 1)
        if kind == 68 and length >= 10:
            (size,) = struct.unpack_from("!i", data, pos + 7)
            if size < 0:
                return None
            return data[pos + 11 : pos + 11 + size].decode("utf-8", "replace")
        pos += 1 + length
    return None


class RowGuard:
    """One guarded statement from its first injected request to its release."""

    __slots__ = (
        "before_query",
        "decision",
        "entry",
        "extra",
        "injector",
        "limit",
        "outcome",
        "phase",
        "probing",
        "raw",
        "released",
        "returned",
        "rows",
        "savepoint",
        "simple",
        "status",
        "tx",
    )

    def __init__(
        self,
        phase: Phase,
        simple: bool = False,
        tx: int = c.TX_IDLE,
        limit: RowLimit | None = None,
        decision: Decision | None = None,
        entry: Pending | None = None,
        raw: bytes = b"",
        owned: bool = False,
    ) -> None:
        self.phase = phase
        self.simple = simple
        self.tx = tx  # the client's transaction status when the guard began
        # A savepoint inside a block: the client's, or the one an earlier guard of the same
        # pipeline batch opened (``owned``; undoing still rolls back that whole block).
        self.savepoint = tx != c.TX_IDLE or owned
        self.limit = limit
        self.decision = decision
        self.entry = entry
        self.raw = raw  # the client's message, sent once the savepoint is there
        self.injector = Injector()
        self.outcome: GuardOutcome | None = None
        self.rows: int | None = None
        self.extra = b""  # what the client gets after the held reply
        self.status = 0  # the ReadyForQuery status the client gets (simple)
        self.released = False  # what was held went to the client
        self.probing = False  # a question of pgwarden's own, not a guard
        self.before_query = False  # a COMMIT before a Query, not at the client's Sync
        self.returned = 0  # DataRows of the statement so far (RETURNING)

    # --- starting -------------------------------------------------------------------------

    def probe(self) -> bytes:
        """Ask the server for its idle_in_transaction_session_timeout (a review hold inside a
        transaction warns when it is shorter than the review's timeout). SHOW takes no
        snapshot, so it changes nothing of the client's transaction."""
        self.phase = Phase.PROBE
        self.probing = True
        return self.injector.send(Injected(f"SHOW {IDLE_TIMEOUT_SETTING}", False))

    def open(self) -> bytes:
        """The BEGIN or SAVEPOINT that starts the guard."""
        self.phase = Phase.OPEN
        sql = f"SAVEPOINT {SAVEPOINT}" if self.savepoint else "BEGIN"
        return self.injector.send(Injected(sql, self.simple))

    # --- server messages --------------------------------------------------------------------

    def on_server(self, core: RelayCore, kind: int, body: bytes, rows: int) -> bytes | None:
        """One watched server message while the guard runs: the bytes to send in its place,
        or None to relay it."""
        phase = self.phase
        if phase is Phase.DONE:
            return core.plain_server(kind, body, rows)
        if self.injector.busy and kind != 83:
            answer = self.injector.on_message(kind, body, rows)
            if answer is not None:
                self._answered(core, answer)
            if kind == 69 and phase is Phase.SETTLE and answer is not None:
                # COMMIT failed: what the client's Sync would have reported directly.
                return m.message(69, body)
            return b""
        if phase is Phase.SETTLE and kind == 90:
            return self.on_settle_ready(core, body)
        if phase is Phase.RUN:
            return self._run(core, kind, body, rows)
        if phase is Phase.CLOSE and kind == 90:
            return self._ready_after_decision(core, body)
        result = core.plain_server(kind, body, rows)
        if phase is Phase.DRAIN and not core.queue.pending:
            core.guard_finished(None)  # drained: the waiting message is handled again
        return result

    def _run(self, core: RelayCore, kind: int, body: bytes, rows: int) -> bytes | None:
        queue = core.queue
        if rows:
            self.returned += rows
            limit = self.limit
            capture = core.scanner.capture if core.scanner is not None else None
            if limit is not None and self.returned > limit.limit and capture:
                # More RETURNING rows than the limit allows: this reply will be refused, so
                # what was held of it need not stay in memory.
                capture[:] = [keep_async(b"".join(capture))]
        if kind == 67 or kind == 73 or kind == 115:  # CommandComplete / empty / suspended
            before = len(queue.completed)
            result = core.plain_server(kind, body, rows)
            tag = m.decode_command_tag(body) if kind == 67 else ""
            self._decide(core, counted(tag), before)
            return result
        if kind == 69:  # the statement failed by itself
            result = core.plain_server(kind, body, rows)
            self.outcome = GuardOutcome.FAILED
            self._mark(core, -1, GuardOutcome.FAILED, None)
            if self.simple:
                self.phase = Phase.CLOSE  # its ReadyForQuery follows
            elif self.tx == c.TX_IDLE:
                core.owned = True  # the client's Sync ends the block the guard opened
                self._done()
            else:
                self._done()
            return result
        return core.plain_server(kind, body, rows)

    def _decide(self, core: RelayCore, rows: int | None, before: int) -> None:
        limit = self.limit
        assert limit is not None and self.decision is not None
        self.rows = rows
        queue = core.queue
        index = len(queue.completed) - 1 if len(queue.completed) > before else -1
        if rows is not None and rows <= limit.limit and self.returned <= limit.limit:
            self.outcome = GuardOutcome.WITHIN
            self._mark(core, index, GuardOutcome.WITHIN, rows)
            if self.simple:
                self.phase = Phase.CLOSE  # decided at its ReadyForQuery
                return
            if not self.savepoint:
                core.owned = True
                self._done()
                return
            self.phase = Phase.CLOSE
            core.upstream_later(
                self.injector.send(Injected(f"RELEASE SAVEPOINT {SAVEPOINT}", False))
            )
            return
        self.outcome = GuardOutcome.EXCEEDED if rows is not None else GuardOutcome.UNCOUNTED
        refused = refusal(self.decision, limit, rows)
        result = GuardResult(limit.limit, limit.rule_id, self.outcome, rows)
        after = c.TX_FAILED if self.tx != c.TX_IDLE else c.TX_IDLE  # as after a block
        if index >= 0:
            done = queue.completed[index]
            queue.completed[index] = done.refused_by_guard(
                {"C": limit.sqlstate, "M": limit.message}, refused, result, after
            )
        elif self.entry is not None:
            entry = self.entry
            entry.block_fields = {"C": limit.sqlstate, "M": limit.message}
            queue.refused(entry, entry.started_ns, refused)
            queue.completed[-1] = queue.completed[-1].with_guard(result, after)
            info = queue.portals.get(entry.portal)
            if info is not None:
                info.suspended = False
                info.rows = 0
        queue.predicted = after
        self.phase = Phase.CLOSE
        self.extra = error_for(limit, rows)
        if self.simple:
            return  # undone at its ReadyForQuery
        core.owned = False  # undone with the whole implicit transaction, as a block undoes it
        core.upstream_later(self.injector.send(*self._undo()))

    def _undo(self) -> tuple[Injected, ...]:
        simple = self.simple
        if self.tx == c.TX_IDLE:
            return (Injected("ROLLBACK", simple),)
        if simple:
            return (
                Injected(
                    f"ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}; {_FAIL}",
                    True,
                ),
            )
        return (
            Injected(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}", False),
            Injected(f"RELEASE SAVEPOINT {SAVEPOINT}", False),
            # Parsed by the server, fails there: the transaction fails where the refused
            # statement would have failed it, and the server discards up to the client's Sync.
            Injected("PGWARDEN ROW GUARD REFUSED", False, fails=True),
        )

    def _ready_after_decision(self, core: RelayCore, body: bytes) -> bytes | None:
        """The ReadyForQuery that ends the client's guarded Query (simple protocol)."""
        outcome = self.outcome
        if outcome is GuardOutcome.WITHIN and self.tx != c.TX_IDLE:
            result = core.plain_server(90, body, 0)
            core.upstream_later(
                self.injector.send(Injected(f"RELEASE SAVEPOINT {SAVEPOINT}", True))
            )
            return result
        if outcome is GuardOutcome.FAILED and self.tx != c.TX_IDLE:
            result = core.plain_server(90, body, 0)  # failed inside the client's block
            self._done()
            return result
        # Held back: the transaction the guard opened ends first (or the savepoint is undone).
        request: tuple[Injected, ...]
        if outcome is GuardOutcome.WITHIN:
            request = (Injected("COMMIT", True),)
        elif outcome is GuardOutcome.FAILED:
            request = (Injected("ROLLBACK", True),)
        else:
            request = self._undo()
        core.upstream_later(self.injector.send(*request))
        return b""

    def _answered(self, core: RelayCore, answer: Answer) -> None:
        phase = self.phase
        if phase is Phase.PROBE:
            self._done()  # the value is read from the held bytes when they are released
            return
        if phase is Phase.OPEN:
            if not answer.ok:
                # The server refused BEGIN/SAVEPOINT: the statement is not run unguarded.
                core.guard_failed(self, answer)
                return
            self.phase = Phase.RUN
            core.guard_run(self)
            return
        if phase is Phase.SETTLE:
            self._settled(core, answer)
            return
        if self.injector.busy:
            return  # more of the undo to come
        # CLOSE: RELEASE, COMMIT, ROLLBACK or the undo answered.
        if self.simple:
            status = answer.status or c.TX_IDLE
            if self.outcome is GuardOutcome.WITHIN and self.tx == c.TX_IDLE and not answer.ok:
                # COMMIT failed (a deferred constraint): the client gets that error.
                self.extra = m.error_response(
                    (answer.error or {}).get("C", "XX000"), (answer.error or {}).get("M", "")
                )
            if self.outcome is not GuardOutcome.WITHIN or self.tx == c.TX_IDLE:
                core.plain_server(90, bytes((status,)), 0)
                self.extra += m.ready_for_query(status)
        elif self.outcome is not GuardOutcome.WITHIN:
            core.skip_until_sync()
        self._done()

    # --- a transaction the guard opened ends at the client's Sync ----------------------------

    def settle(self, core: RelayCore, raw: bytes) -> bytes:
        """The client's Sync ends the implicit transaction the guard made explicit: COMMIT
        before it, or (the server failed it meanwhile) ROLLBACK after its ReadyForQuery."""
        self.phase = Phase.SETTLE
        if core.queue.discarding:
            self.outcome = GuardOutcome.FAILED
            return raw
        self.outcome = GuardOutcome.WITHIN
        return self.injector.send(Injected("COMMIT", False)) + raw

    def commit_before_query(self) -> bytes:
        """COMMIT the transaction the guard opened before a Query the client sends inside
        that batch (which would have ended it)."""
        self.phase = Phase.SETTLE
        self.outcome = GuardOutcome.WITHIN
        self.before_query = True
        return self.injector.send(Injected("COMMIT", False))

    def on_settle_ready(self, core: RelayCore, body: bytes) -> bytes | None:
        if self.outcome is GuardOutcome.FAILED and body == b"E":
            core.upstream_later(self.injector.send(Injected("ROLLBACK", True)))
            return b""
        result = core.plain_server(90, body, 0)
        self._done()
        return result

    def _settled(self, core: RelayCore, answer: Answer) -> None:
        if self.before_query:
            if not answer.ok:
                # A deferred constraint failed the COMMIT (its error went to the client): the
                # server now discards up to a Sync, so it gets one before the Query.
                core.upstream_later(self.injector.send(Injected("", False, sync=True)))
                return
            self._done()
            return
        if answer.request.sql == "ROLLBACK":
            core.plain_server(90, bytes((c.TX_IDLE,)), 0)
            self.extra = m.ready_for_query(c.TX_IDLE)
            self._done()

    # --- helpers --------------------------------------------------------------------------

    def _mark(self, core: RelayCore, index: int, outcome: GuardOutcome, rows: int | None) -> None:
        limit = self.limit
        assert limit is not None
        completed = core.queue.completed
        if index < 0:
            index = len(completed) - 1
        if 0 <= index < len(completed):
            completed[index] = completed[index].with_guard(
                GuardResult(limit.limit, limit.rule_id, outcome, rows)
            )

    def _done(self) -> None:
        self.phase = Phase.DONE
