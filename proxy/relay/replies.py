"""The replies the server still owes, as a pure state machine (DESIGN.md rule 2).

Every client request that the server answers appends a :class:`Pending` entry; server
messages are matched against the head of the FIFO. That is what makes pipelining,
errors-until-Sync, COPY (Sync is ignored during COPY-in), portal suspension and blocking
correct. Unsolicited messages (NoticeResponse, NotificationResponse, ParameterStatus, a FATAL
ErrorResponse) may arrive at any time and never count as answers.

No transport and no clock: times are passed in, finished statements come out as
:class:`~proxy.relay.statement.Completion` records in ``completed``.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Any

from proxy.errors import BackendProtocolError
from proxy.policy.decision import Decision
from proxy.relay import enforce
from proxy.relay.prepared import Change, PreparedStatements
from proxy.relay.statement import Completion, Scope, Statement, Via
from proxy.wire import constants as c
from proxy.wire import messages as m


class Owed(Enum):
    """What the server owes for one client request."""

    QUERY = "query"  # statement completions, then ReadyForQuery
    PARSE = "parse"
    BIND = "bind"
    DESCRIBE_STATEMENT = "describe_statement"  # ParameterDescription, then T or NoData
    DESCRIBE_PORTAL = "describe_portal"  # RowDescription or NoData
    EXECUTE = "execute"
    CLOSE = "close"
    SYNC = "sync"
    FUNCTION = "function"  # FunctionCallResponse (or error), then ReadyForQuery
    COPY_END = "copy_end"  # marker: where the client's CopyDone/CopyFail sits


_ANSWERED_BY = {49: Owed.PARSE, 50: Owed.BIND, 51: Owed.CLOSE}  # '1' '2' '3'


class Pending:
    """One entry of the reply FIFO."""

    __slots__ = (
        "block",
        "block_error",
        "block_fields",
        "changes",
        "dispatch",
        "index",
        "owed",
        "params",
        "portal",
        "started_ns",
        "started_wall",
        "statement",
        "values",
    )

    def __init__(
        self,
        owed: Owed,
        statement: Statement | None = None,
        started_ns: int = 0,
        started_wall: float = 0.0,
    ) -> None:
        self.owed = owed
        self.statement = statement
        self.started_ns = started_ns
        self.started_wall = started_wall
        self.block: Decision | None = None  # a poisoned request: replace the server's error
        self.block_error = b""  # the error the client gets instead (default: the policy's)
        self.block_fields: dict[str, str] | None = None  # and what its record says
        self.index = 0  # next statement of a multi-statement Query
        self.portal = b""
        self.params: list[Any] | None = None
        self.values: tuple[bytes | None, ...] = ()  # raw Bind values, when they were read
        # Prepared-statement changes this request makes: (statement index, change).
        self.changes: list[tuple[int, Change]] | None = None
        self.dispatch = 0  # seq of its dispatch record (audit.write_ahead)


class Portal:
    """A bound portal. One that was suspended (Execute with a row limit) is one statement
    until it completes or is destroyed, however many Executes it takes."""

    __slots__ = (
        "dispatch",
        "name",
        "params",
        "rows",
        "started_ns",
        "started_wall",
        "statement",
        "suspended",
        "values",
    )

    def __init__(
        self,
        name: bytes,
        statement: Statement | None,
        params: list[Any] | None,
        values: tuple[bytes | None, ...] = (),
    ) -> None:
        self.name = name
        self.statement = statement
        self.params = params
        self.values = values
        self.rows = 0
        self.suspended = False
        self.started_ns = 0
        self.started_wall = 0.0
        self.dispatch = 0  # of its first Execute (audit.write_ahead)


class ReplyQueue:
    """Owed replies, portals and transaction status of one session."""

    __slots__ = (
        "_ignore_syncs_in_copy",
        "_last_done_ns",
        "_open_exec",
        "completed",
        "copy_in",
        "discarding",
        "exact_timings",
        "fatal",
        "passthrough",
        "pending",
        "portals",
        "predicted",
        "prepared",
        "rows",
        "tx_status",
    )

    def __init__(self, prepared: PreparedStatements) -> None:
        self.pending: deque[Pending] = deque()
        self.portals: dict[bytes, Portal] = {}
        self.prepared = prepared
        self.completed: list[Completion] = []
        self.tx_status = c.TX_IDLE
        self.predicted = c.TX_IDLE  # the status after the last completion (see tx_after)
        self.copy_in = False
        # An extended-protocol error with no Sync sent after it: the server discards what the
        # client sends until its next Sync.
        self.discarding = False
        self.passthrough = False  # CopyBoth: the rest of the connection is a raw stream
        self.fatal = False  # the server sent FATAL/PANIC: the connection is ending
        self.rows = 0  # DataRows since the last completion
        self._ignore_syncs_in_copy = False
        self._last_done_ns = 0  # when the last completion (or ReadyForQuery) was seen
        # Index in ``completed`` of the last Execute completion of the current server chunk,
        # until a ReadyForQuery: if another follows it in the same chunk, the server buffered
        # both and the first one's end is not what the wire shows.
        self._open_exec: int | None = None
        # The relay asks the server to flush after every Execute: each completion is seen
        # when it is produced, so pipelined statements are timed on their own.
        self.exact_timings = False

    # --- client side ------------------------------------------------------------------

    def expect(self, entry: Pending) -> None:
        self.pending.append(entry)

    def sync(self) -> bool:
        """A Sync goes to the server; False when the server ignores it (inside COPY-in)."""
        if self._ignore_syncs_in_copy:
            return False
        self.discarding = False
        self.pending.append(Pending(Owed.SYNC))
        return True

    def copy_end(self) -> None:
        """The client's CopyDone/CopyFail."""
        if self._ignore_syncs_in_copy:
            self._ignore_syncs_in_copy = False
        else:
            self.pending.append(Pending(Owed.COPY_END))

    def new_chunk(self) -> None:
        """A new read from the server: completions from here on were sent separately."""
        self._open_exec = None

    def bind_portal(self, portal: Portal, now_ns: int) -> None:
        self.abandon(self.portals.get(portal.name), now_ns)
        self.portals[portal.name] = portal

    def close_portal(self, name: bytes, now_ns: int) -> None:
        self.abandon(self.portals.pop(name, None), now_ns)

    def abandon(self, portal: Portal | None, now_ns: int) -> None:
        """The client closes or rebinds a suspended portal: its statement ends now."""
        if portal is not None and portal.suspended:
            self.completed.append(self._portal_completion(portal, now_ns))

    @property
    def in_flight(self) -> bool:
        return bool(self.pending)

    # --- server side ------------------------------------------------------------------

    def on_message(self, kind: int, body: bytes, now_ns: int) -> bytes | None:
        """React to one watched server message after startup. Returns None to forward it
        unchanged, or the bytes to send in its place (b"" to swallow it)."""
        pending = self.pending
        head = pending[0] if pending else None
        while head is not None and head.owed is Owed.COPY_END:
            pending.popleft()
            head = pending[0] if pending else None
        if kind == 67 or kind == 73:  # 'C' CommandComplete / 'I' EmptyQueryResponse
            if head is None:
                raise BackendProtocolError("CommandComplete with no statement in flight")
            tag = m.decode_command_tag(body) if kind == 67 else ""
            self.copy_in = False
            if head.owed is Owed.QUERY:
                self._complete_query_statement(head, tag, None, now_ns)
            elif head.owed is Owed.EXECUTE:
                pending.popleft()
                self._complete_execute(head, tag, None, now_ns)
            else:
                raise BackendProtocolError("CommandComplete does not answer the request in flight")
            return None
        if kind == 90:  # 'Z'
            if len(body) != 1 or body[0] not in b"ITE":
                raise BackendProtocolError("invalid ReadyForQuery message")
            self.tx_status = self.predicted = body[0]
            self.copy_in = False
            self._last_done_ns = now_ns
            self._open_exec = None
            while pending:
                entry = pending.popleft()
                if entry.owed is Owed.SYNC or entry.owed is Owed.QUERY:
                    self._settle(entry, entry.index if entry.owed is Owed.QUERY else 1 << 30)
                    break
                self._settle(entry, 0)
            if self.tx_status == c.TX_IDLE and self.portals:
                # Portals die with their transaction; a suspended one ends as a statement here.
                for portal in self.portals.values():
                    if portal.suspended:
                        self.completed.append(self._portal_completion(portal, now_ns))
                self.portals.clear()
            return None
        if kind == 69:  # 'E'
            return self._on_error(head, body, now_ns)
        if kind == 115:  # 's' PortalSuspended
            if head is None or head.owed is not Owed.EXECUTE:
                raise BackendProtocolError("PortalSuspended does not answer an Execute")
            pending.popleft()
            info = self.portals.get(head.portal)
            if info is not None:
                info.rows += self.rows
                if not info.suspended:
                    info.suspended = True
                    info.started_ns = head.started_ns
                    info.started_wall = head.started_wall
            self.rows = 0
            return None
        if kind == 71:  # 'G' CopyInResponse: the server now ignores Sync and Flush
            self.copy_in = True
            self._drop_syncs_until_copy_end()
            return None
        if kind == 87:  # 'W' CopyBothResponse: replication stream, relay blindly
            self.passthrough = True
            return None
        if kind in _ANSWERED_BY:  # ParseComplete, BindComplete, CloseComplete
            if head is None or head.owed is not _ANSWERED_BY[kind]:
                raise BackendProtocolError(f"unexpected {chr(kind)!r} message from server")
            pending.popleft()
            self._settle(head, 1 << 30)
            return None
        if kind == 116:  # 't' ParameterDescription
            if head is None or head.owed is not Owed.DESCRIBE_STATEMENT:
                raise BackendProtocolError("unexpected ParameterDescription")
            if head.statement is not None:
                # The types the server resolved: how it will read the Bind values.
                head.statement.param_types = m.decode_parameter_description(body)
            return None
        if kind == 110 or kind == 84:  # NoData / RowDescription
            if head is not None and (
                head.owed is Owed.DESCRIBE_STATEMENT or head.owed is Owed.DESCRIBE_PORTAL
            ):
                pending.popleft()
            return None
        if kind == 86:  # 'V' FunctionCallResponse
            if head is None or head.owed is not Owed.FUNCTION:
                raise BackendProtocolError("unexpected FunctionCallResponse")
            pending.popleft()
            self._complete_execute(head, "", None, now_ns, via=Via.FUNCTION_CALL)
            return None
        if kind in b"KRv":
            raise BackendProtocolError(f"unexpected {chr(kind)!r} message after startup")
        return None  # H CopyOutResponse, S (handled by the caller)

    def _settle(self, entry: Pending, completed_before: int) -> None:
        """Settle the prepared-statement changes of a finished request: those of statements
        before ``completed_before`` took effect, the rest did not."""
        if entry.changes:
            for index, change in entry.changes:
                self.prepared.settle(change, index < completed_before)

    def _on_error(self, head: Pending | None, body: bytes, now_ns: int) -> bytes | None:
        fields = m.decode_fields(body)
        severity = fields.get("V") or fields.get("S") or "ERROR"
        if severity in ("FATAL", "PANIC"):
            self.fatal = True
        if head is None:
            return None  # unsolicited (e.g. FATAL on termination): relay
        self.copy_in = False
        self._ignore_syncs_in_copy = False
        replacement: bytes | None = None
        if head.block is not None:
            replacement = head.block_error or enforce.policy_error(head.block)
            self.completed.append(self._refused(head, now_ns, head.block))
            fields = {}
        if head.owed is Owed.QUERY:
            if head.block is None:
                self._complete_query_statement(head, "", fields, now_ns)
            self._settle(head, head.index - 1 if head.block is None else 0)
            head.changes = None
            head.index = 1 << 30  # the rest of the string is not executed
            return replacement
        if head.owed is Owed.SYNC:
            return replacement
        # Extended protocol: the server now discards everything up to Sync.
        pending = self.pending
        entry = pending.popleft()
        self._settle(entry, 0)
        discarded = []
        while pending and pending[0].owed is not Owed.SYNC:
            later = pending.popleft()
            self._settle(later, 0)
            discarded.append(later)
        if not pending:
            self.discarding = True
        if entry.block is None:
            failed = _failed_statement(entry, discarded)
            if failed is not None:
                via = Via.FUNCTION_CALL if failed.owed is Owed.FUNCTION else Via.EXTENDED
                self._complete_execute(failed, "", fields, now_ns, via=via)
        return replacement

    def _drop_syncs_until_copy_end(self) -> None:
        # The head is the Query/Execute that started the copy; look at what follows it.
        items = list(self.pending)
        kept = items[:1]
        found_end = False
        for entry in items[1:]:
            if found_end:
                kept.append(entry)
            elif entry.owed is Owed.COPY_END:
                found_end = True
            elif entry.owed is not Owed.SYNC:  # Syncs are ignored by the server in COPY IN
                kept.append(entry)
        if not found_end:
            self._ignore_syncs_in_copy = True
        self.pending.clear()
        self.pending.extend(kept)

    # --- completions ------------------------------------------------------------------

    def _start(self, started_ns: int, started_wall: float) -> tuple[int, float, Scope]:
        """When a statement can have started, and what its duration will cover: it cannot
        start before the completion of what was in flight ahead of it."""
        if started_ns >= self._last_done_ns:
            return started_ns, started_wall, Scope.STATEMENT
        wall = started_wall + (self._last_done_ns - started_ns) / 1e9
        scope = Scope.STATEMENT if self.exact_timings else Scope.PIPELINE
        return self._last_done_ns, wall, scope

    def _complete_query_statement(
        self, entry: Pending, tag: str, error: dict[str, str] | None, now_ns: int
    ) -> None:
        statement = entry.statement
        facts = statement.facts if statement is not None else None
        multi = facts is not None and len(facts.statements) > 1
        if entry.index == 0:
            # The message starts when it arrived, or when what was ahead of it completed.
            entry.started_ns, entry.started_wall, scope = self._start(
                entry.started_ns, entry.started_wall
            )
        else:
            scope = Scope.STATEMENT
        done = Completion(
            statement,
            Via.SIMPLE,
            entry.started_wall,
            entry.started_ns,
            now_ns,
            tag,
            error,
            None if error is not None else _rows(tag, self.rows),
            index=entry.index,
            scope=Scope.MESSAGE if multi else scope,
            dispatch=entry.dispatch,
        )
        self.completed.append(self._predict(done))
        self._last_done_ns = now_ns
        entry.index += 1
        self.rows = 0

    def _complete_execute(
        self,
        entry: Pending,
        tag: str,
        error: dict[str, str] | None,
        now_ns: int,
        via: Via = Via.EXTENDED,
    ) -> None:
        rows = self.rows
        info = self.portals.get(entry.portal) if entry.owed is Owed.EXECUTE else None
        started_ns, started_wall, scope = self._start(entry.started_ns, entry.started_wall)
        counted: int | None = None
        dispatch = entry.dispatch
        if info is not None and info.suspended:
            # The last Execute of a suspended portal: one statement from its first Execute.
            rows += info.rows
            counted = rows
            started_ns, started_wall = info.started_ns, info.started_wall
            dispatch = info.dispatch
            info.rows = 0
            info.suspended = False
        if error is not None:
            result_rows = None
        elif counted is not None:
            result_rows = counted
        else:
            result_rows = _rows(tag, rows)
        done = Completion(
            entry.statement,
            via,
            started_wall,
            started_ns,
            now_ns,
            tag,
            error,
            result_rows,
            portal=entry.portal.decode("utf-8", "replace"),
            params=entry.params,
            scope=scope,
            bind_values=entry.values,
            dispatch=dispatch,
        )
        completed = self.completed
        previous = self._open_exec
        if previous is not None and previous < len(completed):
            earlier = completed[previous]
            if earlier.scope is Scope.STATEMENT:
                completed[previous] = earlier.with_scope(Scope.PIPELINE)
        self._open_exec = len(completed)
        completed.append(self._predict(done))
        self._last_done_ns = now_ns
        self.rows = 0

    def _portal_completion(self, portal: Portal, now_ns: int) -> Completion:
        """A suspended portal that ends without completing (closed, replaced, or destroyed
        with its transaction): the rows the client fetched, no command tag."""
        portal.suspended = False
        return Completion(
            portal.statement,
            Via.EXTENDED,
            portal.started_wall,
            portal.started_ns,
            now_ns,
            rows=portal.rows,
            portal=portal.name.decode("utf-8", "replace"),
            params=portal.params,
            suspended=True,
            dispatch=portal.dispatch,
        )

    def _predict(self, done: Completion) -> Completion:
        after = tx_status_after(self.predicted, done)
        self.predicted = after
        return done.with_tx_after(after) if after != done.tx_after else done

    def refused(self, entry: Pending, now_ns: int, refusal: Decision) -> None:
        """A request answered locally: its record, nothing of it ran."""
        self.completed.append(self._refused(entry, now_ns, refusal))

    def _refused(self, entry: Pending, now_ns: int, refusal: Decision) -> Completion:
        if entry.owed is Owed.QUERY:
            via = Via.SIMPLE
        elif entry.owed is Owed.FUNCTION:
            via = Via.FUNCTION_CALL
        else:
            via = Via.EXTENDED
        return self._predict(
            Completion(
                entry.statement,
                via,
                entry.started_wall,
                entry.started_ns or now_ns,
                now_ns,
                error=entry.block_fields or enforce.refused_error(refusal),
                portal=entry.portal.decode("utf-8", "replace"),
                refusal=refusal,
            )
        )

    def end_suspended(self, now_ns: int) -> None:
        """The session ends: suspended portals end as statements."""
        for portal in self.portals.values():
            if portal.suspended:
                self.completed.append(self._portal_completion(portal, now_ns))


def _rows(tag: str, counted: int) -> int | None:
    """Rows of a completed statement: the command tag's count, else the DataRows relayed."""
    from_tag = m.rows_from_tag(tag)
    if from_tag is not None:
        return from_tag
    return counted if counted else None


def _failed_statement(entry: Pending, discarded: list[Pending]) -> Pending | None:
    """Which statement an extended-protocol error belongs to. An Execute or FunctionCall
    failed itself. A Parse or Bind that fails (syntax error, bad parameter, a constant folded
    at Bind) takes down the Execute queued behind it, which is the statement the client meant
    to run; with no Execute behind it, the failed Parse/Bind is recorded."""
    if entry.owed is Owed.EXECUTE or entry.owed is Owed.FUNCTION:
        return entry
    if entry.owed is not Owed.PARSE and entry.owed is not Owed.BIND:
        return None
    for later in discarded:
        if later.owed is Owed.EXECUTE:
            return later
    return entry if entry.statement is not None else None


_CHAINED = ("COMMIT", "ROLLBACK", "END", "ABORT")


def tx_status_after(before: int, done: Completion) -> int:
    """The transaction status after ``done`` by PostgreSQL's rules: an error fails an explicit
    transaction (an implicit one just ends), BEGIN opens one, COMMIT/ROLLBACK end it (unless
    AND CHAIN), ROLLBACK TO SAVEPOINT recovers a failed one; anything else keeps it."""
    if done.refusal is not None or done.error is not None:
        return c.TX_FAILED if before != c.TX_IDLE else c.TX_IDLE
    tag = done.tag
    if tag == "BEGIN" or tag == "START TRANSACTION":
        return c.TX_IN_BLOCK
    if tag in ("COMMIT", "ROLLBACK", "PREPARE TRANSACTION"):
        # Audit metadata, not a decision: the words are enough to tell the variants apart.
        words = done.text.upper().replace(";", " ").split()
        if tag == "ROLLBACK" and "TO" in words[:3] and before != c.TX_IDLE:
            return c.TX_IN_BLOCK  # ROLLBACK TO SAVEPOINT
        if words and words[0] in _CHAINED and "CHAIN" in words and "NO" not in words:
            return c.TX_IN_BLOCK
        return c.TX_IDLE
    return before
