"""The relay of one session after startup, sans-IO: client bytes and server bytes in; bytes to
forward, local answers and audit events out.

Client→server: messages are framed and decoded (they carry SQL), each request is judged,
then forwarded as received (or replaced by a poison request, or answered locally), and what
the server owes for it is queued (:mod:`proxy.relay.replies`). Server→client: the
:class:`~proxy.wire.backend.BackendScanner` hands the watched messages to :meth:`on_server`;
finished statements become audit events that the client output waits for (the adapter holds
the bytes until the trail has them).

A message that cannot be judged yet — a Query pipelined behind a statement that may change
how the server lexes SQL — stalls the client stream until the server's ReadyForQuery settles
it; ``stalled`` tells the adapter to stop reading the client meanwhile.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from proxy.audit.dispatch import closing_record, skipped_record
from proxy.audit.events import iso
from proxy.audit.record import Event
from proxy.errors import FrontendProtocolError
from proxy.policy.decision import Decision
from proxy.relay import enforce, rowguard
from proxy.relay.enforce import Action
from proxy.relay.prepared import ALL, PreparedStatements
from proxy.relay.replies import Owed, Pending, Portal, ReplyQueue
from proxy.relay.rowguard import Phase, RowGuard
from proxy.relay.settings import ParserSettingsTracker
from proxy.relay.statement import Statement, Via
from proxy.relay.transactions import TransactionEnd, TransactionTracker
from proxy.relay.writeahead import DispatchGate, dispatch_record
from proxy.sql.catalog import builtin_function_name
from proxy.sql.catalog.resolver import FunctionInfo, invalidates_functions
from proxy.sql.facts import ParserSettings, QueryFacts
from proxy.wire import constants as c
from proxy.wire import messages as m
from proxy.wire.framing import Framer

if TYPE_CHECKING:
    from proxy.audit.events import SessionEvents
    from proxy.config import Config
    from proxy.gate import Gate
    from proxy.policy.decision import RowLimit
    from proxy.relay.inject import Answer
    from proxy.wire.backend import BackendScanner

_FORGET_ALL = frozenset({"DEALLOCATE ALL", "DISCARD ALL"})
_DECIDED = frozenset(b"QPBF")
# What runs or commits something on the server: Query, FunctionCall, Execute, Sync (an
# implicit transaction commits there), CopyDone. None of it is forwarded while the trail
# cannot accept records.
_RUNS = frozenset(b"QFESc")


class TrailState(Protocol):
    """What the relay asks of the audit trail (proxy.audit.trail.AuditTrail)."""

    accepting: bool

    def when_accepting(self, callback: Callable[[], None]) -> None: ...

    def submit(self, event: Event) -> None: ...

    def when_written(self, callback: Callable[[], None]) -> None: ...


class _Unwatched:
    """No trail attached (tests of the core alone): statements are never held for it."""

    accepting = True

    def when_accepting(self, callback: Callable[[], None]) -> None:
        raise AssertionError("an unwatched core never waits for a trail")


class _Offload(Exception):
    """The statement is too long to analyse on the event loop: ask the adapter."""


class _Hold(Exception):
    """The statement waits for people to approve it: ask the adapter."""


class _Lookup(Exception):
    """A FunctionCall names an OID only the server's catalog can name: ask the adapter."""


class _Probe(Exception):
    """The statement waits for pgwarden's own question to the server (the bytes to send)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data


class _Drain(Exception):
    """A guarded statement waits until the server has answered everything before it."""


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    """A statement a ``review`` rule holds: the adapter asks the approvals broker, then hands
    the verdict to :meth:`reviewed`. It is bound to exactly this text and these values."""

    decision: Decision
    text: str
    params: tuple[bytes | None, ...]
    audit_text: str
    fingerprint: str
    # Inside a transaction block: the server's idle_in_transaction_session_timeout in seconds
    # (0: off), asked of the server while the statement is held; None outside one.
    idle_in_transaction_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class ReviewVerdict:
    forward: bool
    request_id: str = ""
    sqlstate: str = ""  # when not forwarded: the error the client gets instead
    message: str = ""
    error: bytes = b""  # that ErrorResponse, as the broker words it (with its HINT)


@dataclass(frozen=True, slots=True)
class AnalysisRequest:
    """A statement the adapter must analyse off the loop, then hand to :meth:`analysed`."""

    sql: bytes
    settings: ParserSettings


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """What the configuration says about relaying, read once when a session becomes ready."""

    max_message_size: int
    parameters: str  # audit.parameters
    offload_size: int = 1 << 62  # statements this long are analysed off the loop
    max_analysis_size: int = 1 << 62  # beyond this, on_unparsable decides
    exact_timings: bool = False
    catalog_lookups: bool = False  # the adapter can ask the catalog (catalog.dsn)
    write_ahead: bool = False  # audit.write_ahead: dispatch records before forwarding

    @classmethod
    def from_config(cls, cfg: Config) -> RelayOptions:
        return cls(
            max_message_size=cfg["limits.max_message_size"],
            parameters=cfg["audit.parameters"],
            offload_size=cfg["limits.analysis_offload_size"],
            max_analysis_size=cfg["limits.max_analysis_size"],
            exact_timings=cfg["audit.exact_timings"],
            catalog_lookups=bool(cfg["catalog.dsn"]),
            write_ahead=cfg["audit.write_ahead"],
        )


class ClientSink(Protocol):
    """Where bytes for the client go: after ``events`` (if any) have reached the trail."""

    def send(self, data: bytes, events: list[Event] | None, *, wait: bool = True) -> None: ...


class RelayCore:
    """Requests, replies, enforcement and events of one ready session."""

    __slots__ = (
        "_analysed",
        "_audit_refusal",
        "_backlog",
        "_deferred_upstream",
        "_dispatches",
        "_events",
        "_framer",
        "_functions",
        "_gate",
        "_guard",
        "_idle_timeout",
        "_max_analysis",
        "_now_ns",
        "_offload_size",
        "_on_parameter",
        "_param_mode",
        "_pending_events",
        "_referenced",
        "_resume_due",
        "_sink",
        "_skip_until_sync",
        "_trail",
        "_trail_wait",
        "_verdict",
        "_wa",
        "_wake",
        "analysis_wanted",
        "catalog_lookups",
        "chunk_needs_audit",
        "function_wanted",
        "identity",
        "owned",
        "prepared",
        "queue",
        "review_wanted",
        "scanner",
        "server_major",
        "settings",
        "terminated",
        "transactions",
    )

    def __init__(
        self,
        gate: Gate,
        events: SessionEvents,
        sink: ClientSink,
        options: RelayOptions,
        *,
        audit_refusal: Callable[[], Decision | None],
        settings: ParserSettingsTracker,
        on_parameter: Callable[[str, str], None],
        tx_status: int = c.TX_IDLE,
        server_version: str = "",
    ) -> None:
        self._gate = gate
        self._events = events
        self._sink = sink
        self._param_mode = options.parameters
        self._audit_refusal = audit_refusal
        self._on_parameter = on_parameter  # ParameterStatus: the adapter follows identity
        self._framer = Framer(
            FrontendProtocolError, large_limit=options.max_message_size, allowed=c.FRONTEND_TYPES
        )
        self.identity = events.identity
        self.prepared = PreparedStatements()
        self.queue = ReplyQueue(self.prepared)
        self.queue.tx_status = tx_status
        self.queue.exact_timings = options.exact_timings
        self.settings = settings
        self._skip_until_sync = False
        # Client messages that wait (created on first use: most sessions never stall).
        self._backlog: deque[tuple[int, bytes | None, bytes]] | None = None
        self._deferred_upstream: list[bytes] = []
        self._now_ns = 0
        self._offload_size = options.offload_size
        self._max_analysis = options.max_analysis_size
        self.analysis_wanted: AnalysisRequest | None = None
        self.review_wanted: ReviewRequest | None = None
        # FunctionCall OIDs named from the server's catalog (None: not a function there).
        self.catalog_lookups = options.catalog_lookups
        self.function_wanted: int | None = None
        self._functions: dict[int, FunctionInfo | None] = {}
        self._verdict: tuple[ReviewRequest, ReviewVerdict] | None = None
        self.server_major = _major(server_version)  # for catalog lookups
        self._analysed: tuple[AnalysisRequest, QueryFacts] | None = None
        self._pending_events: list[Event] = []
        # False while every record of the current server chunk is a refusal because the trail
        # cannot write (audit.fail_closed): the client's bytes must not wait for that trail.
        self.chunk_needs_audit = False
        self._resume_due = False
        self.terminated = False  # the client sent Terminate
        self.transactions = TransactionTracker()
        self._trail: TrailState | _Unwatched = _Unwatched()
        self._trail_wait = False  # statements wait in the backlog for the trail
        self._wake: Callable[[], None] | None = None
        self._wa: DispatchGate | None = None  # audit.write_ahead
        self._dispatches: dict[int, dict[str, Any]] = {}  # not yet known to be finished
        self._referenced: set[int] = set()  # of those, named by a statement's record
        # The row guard (proxy.relay.rowguard): the statement it follows, whether the client's
        # implicit transaction is one the guard made explicit (its Sync ends it), and the
        # backend scanner whose output it holds back (set by the adapter; without it guarded
        # statements are refused).
        self._guard: RowGuard | None = None
        self._idle_timeout: float | None = None  # what the last probe found out
        self.owned = False
        self.scanner: BackendScanner | None = None

    def watch_trail(
        self, trail: TrailState, wake: Callable[[], None], *, write_ahead: bool = False
    ) -> None:
        """Hold statements back while ``trail`` cannot accept records, and with
        ``write_ahead`` forward each only after its dispatch record is written. ``wake`` is
        called when held work may continue: the adapter then calls :meth:`resume`."""
        self._trail = trail
        self._wake = wake
        if write_ahead:
            self._wa = DispatchGate(trail, self._dispatched)

    # --- state for the adapter ------------------------------------------------------------

    @property
    def stalled(self) -> bool:
        return bool(self._backlog) or self._guard is not None

    @property
    def tx_status(self) -> int:
        return self.queue.tx_status

    @property
    def activity(self) -> str:
        """What the session is doing, in pg_stat_activity's words."""
        queue = self.queue
        if queue.copy_in:
            return "copy"
        if queue.in_flight:
            return "active"
        return {c.TX_IDLE: "idle", c.TX_IN_BLOCK: "idle in transaction"}.get(
            queue.tx_status, "idle in transaction (aborted)"
        )

    @property
    def current_text(self) -> str | None:
        """The text of the first statement in flight (unredacted: callers redact)."""
        for entry in self.queue.pending:
            if entry.statement is not None:
                return entry.statement.text
        return None

    @property
    def current_started(self) -> float | None:
        for entry in self.queue.pending:
            if entry.statement is not None and entry.started_wall:
                return entry.started_wall
        return None

    def take_deferred_upstream(self) -> bytes:
        """Bytes for the server produced while handling server data (a stall resolved)."""
        out = b"".join(self._deferred_upstream) if self._deferred_upstream else b""
        self._deferred_upstream.clear()
        wa = self._wa
        if wa is not None:
            released = wa.take()
            return released + wa.forward(out)
        return out

    def _dispatched(self) -> None:
        """Held bytes may go to the server (their dispatch records are written)."""
        self._resume_due = True
        if self._wake is not None:
            self._wake()

    def _wait_for_trail(self, kind: int, body: bytes, raw: bytes) -> None:
        """The trail cannot accept records: this message and all behind it wait."""
        self._wait(kind, body, raw, first=True)
        if not self._trail_wait:
            self._trail_wait = True
            self._trail.when_accepting(self._trail_back)

    def _wait(self, kind: int, body: bytes | None, raw: bytes, *, first: bool = False) -> None:
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        if first:
            backlog.appendleft((kind, body, raw))
        else:
            backlog.append((kind, body, raw))

    def _trail_back(self) -> None:
        self._trail_wait = False
        self._resume_due = True
        if self._wake is not None:
            self._wake()

    # --- client → server --------------------------------------------------------------------

    def client_messages(self, data: bytes, now_ns: int, now_wall: float) -> bytes:
        """Frame, judge and queue client bytes; return what to forward to the server."""
        out: list[bytes] = []
        framer = self._framer
        unchanged = not framer.buffered and not framer.in_stream and not self._backlog
        consumed = 0
        for kind, body, raw in framer.feed(data):
            consumed += len(raw)
            backlog = self._backlog
            if backlog:
                backlog.append((kind, body, raw))
                unchanged = False
                continue
            forward = self._client_message(kind, body, raw, now_ns, now_wall)
            if forward is raw:
                out.append(raw)
            else:
                unchanged = False
                if forward:
                    out.append(forward)
        result = data if unchanged and consumed == len(data) else b"".join(out)
        if self._wa is not None:
            return self._wa.forward(result)
        return result

    def resume(self, now_ns: int, now_wall: float) -> bytes:
        """After a server chunk was relayed: handle client messages that waited for it, and
        return what they forward to the server."""
        if not self._resume_due:
            return b""
        self._resume_due = False
        guard = self._guard
        if guard is not None and guard.phase is Phase.DONE:
            self._guard = None  # released: what waited behind it goes on
        backlog = self._backlog
        while backlog:
            kind, body, raw = backlog[0]
            if self._trail_wait or self._must_wait(kind):
                break
            backlog.popleft()
            forward = self._client_message(kind, body, raw, now_ns, now_wall, resumed=True)
            if forward:
                self._deferred_upstream.append(forward)
        return self.take_deferred_upstream()

    def _must_wait(self, kind: int) -> bool:
        if (
            self.analysis_wanted is not None
            or self.review_wanted is not None
            or self.function_wanted is not None
            or (self._guard is not None and self._guard.phase is not Phase.DONE)
        ):
            return True  # everything waits behind the statement being analysed
        # A Query is lexed by the server under the settings in force when it arrives; wait for
        # the ReadyForQuery that reports them. (Parse is judged under every candidate instead:
        # waiting there could deadlock a client that only sends Sync later.)
        return kind == 81 and self.settings.unsettled

    def _inspect(self, sql: bytes, settings: ParserSettings) -> QueryFacts:
        """Facts of ``sql``: inline for ordinary statements; for long ones (and those beyond
        limits.max_analysis_size, which the analysis pool refuses without analysing) the
        result of the adapter's off-loop analysis (raising :class:`_Offload` until it is
        there)."""
        size = len(sql)
        if size < self._offload_size and size <= self._max_analysis:
            return self._gate.inspect(sql, settings)
        done = self._analysed
        if done is not None and done[0].settings == settings and done[0].sql == sql:
            self._analysed = None
            return done[1]
        self.analysis_wanted = AnalysisRequest(sql, settings)
        raise _Offload

    def _review(
        self, decision: Decision, statement: Statement, params: tuple[bytes | None, ...]
    ) -> ReviewVerdict | None:
        """None unless a review rule holds the statement; then its verdict once people decided
        (raising :class:`_Hold` until they have)."""
        if decision.action != "review" or decision.review is None:
            return None
        done = self._verdict
        if done is not None and done[0].text == statement.text and done[0].params == params:
            self._verdict = None
            return done[1]
        idle_timeout = self._idle_timeout
        queue = self.queue
        if idle_timeout is None and queue.predicted == c.TX_IN_BLOCK and not queue.discarding:
            # Held inside a transaction: first ask the server how long it lets one sit idle.
            if queue.pending:
                self._guard = RowGuard(Phase.DRAIN)
                raise _Drain
            if self.scanner is not None:
                guard = RowGuard(Phase.PROBE)
                self._guard = guard
                self.scanner.capture = []
                raise _Probe(guard.probe())
        self._idle_timeout = None
        stmt = statement.stmt
        self.review_wanted = ReviewRequest(
            decision,
            statement.text,
            params,
            self._gate.audit_text(statement.text, stmt) or "",
            stmt.fingerprint if stmt is not None else "",
            idle_timeout,
        )
        raise _Hold

    def _function(self, oid: int) -> FunctionInfo | None:
        """What the server's catalog says about a non-built-in OID (looked up once)."""
        if not self.catalog_lookups or builtin_function_name(oid, self.server_major):
            return None
        if oid in self._functions:
            return self._functions[oid]
        self.function_wanted = oid
        raise _Lookup

    def looked_up(self, info: FunctionInfo | None) -> None:
        """The adapter's catalog answer for :attr:`function_wanted`."""
        oid = self.function_wanted
        assert oid is not None
        self.function_wanted = None
        self._functions[oid] = info
        self._resume_due = True

    def forget_functions(self) -> None:
        """A statement may have created, dropped or renamed functions."""
        self._functions.clear()

    def reviewed(self, verdict: ReviewVerdict) -> None:
        """The adapter's verdict on :attr:`review_wanted`."""
        request = self.review_wanted
        assert request is not None
        self.review_wanted = None
        self._verdict = (request, verdict)
        self._resume_due = True

    def analysed(self, facts: QueryFacts) -> None:
        """The adapter's analysis of :attr:`analysis_wanted` is ready."""
        request = self.analysis_wanted
        assert request is not None
        self.analysis_wanted = None
        self._analysed = (request, facts)
        self._resume_due = True

    def _client_message(
        self,
        kind: int,
        body: bytes | None,
        raw: bytes,
        now_ns: int,
        now_wall: float,
        resumed: bool = False,
    ) -> bytes:
        """Handle one client message; return the bytes to forward (``raw`` when unchanged)."""
        if body is None or kind == 100:  # 'd' CopyData: never decoded
            return b"" if self._skip_until_sync else raw
        if self._skip_until_sync and kind not in b"SHX":
            # After a blocked request the server discards everything up to Sync; so do we.
            return b""
        if not resumed and self._must_wait(kind):
            self._wait(kind, body, raw)
            return b""
        if not self._trail.accepting and kind in _RUNS and self._audit_refusal() is None:
            # (Under audit.fail_closed statements are refused instead, without waiting.)
            self._wait_for_trail(kind, body, raw)
            return b""
        queue = self.queue
        if kind in _DECIDED:  # Query, Parse, Bind, FunctionCall
            try:
                if kind == 81:
                    if self.owned:
                        return self._commit_owned(kind, body, raw)
                    return self._on_query(body, raw, now_ns, now_wall)
                if kind == 80:
                    return self._on_parse(body, raw, now_ns, now_wall)
                if kind == 66:
                    return self._on_bind(body, raw, now_ns, now_wall)
                call = m.decode_function_call(body)
                facts = self._gate.function_call_facts(
                    call, self.server_major, self.settings.confirmed, self._function(call.oid)
                )
                return self._judge_cycle(Owed.FUNCTION, facts, raw, now_ns, now_wall)
            except (_Offload, _Hold, _Lookup):
                # First in line: later messages queue behind it until its decision.
                self._wait(kind, body, raw, first=True)
                return b""
            except _Drain:
                self._wait(kind, body, raw, first=True)
                return m.FLUSH  # the replies owed before it are sent at once
            except _Probe as probe:
                self._wait(kind, body, raw, first=True)
                return probe.data
        if kind == 69:  # 'E'
            portal, _limit = m.decode_execute(body)
            info = queue.portals.get(portal)
            entry = Pending(Owed.EXECUTE, info.statement if info else None, now_ns, now_wall)
            entry.portal = portal
            if info is not None:
                entry.params = info.params
                entry.values = info.values
                statement = info.statement
                if statement is not None and statement.decision is not None:
                    limit = statement.decision.guard
                    if limit is not None:
                        try:
                            guarded = self._guarded(entry, raw, limit, statement.decision)
                        except _Drain:
                            self._wait(kind, body, raw, first=True)
                            return m.FLUSH
                        if guarded is not None:
                            return guarded
            if self._wa is not None and (info is None or not info.dispatch):
                # One dispatch per bound portal: another Execute of it (a suspended portal,
                # pipelined or not) continues the dispatched statement.
                entry.dispatch = self._dispatch(entry, Via.EXTENDED, now_wall)
                if info is not None:
                    info.dispatch = entry.dispatch
            queue.expect(entry)
            if info is not None and info.statement is not None and info.statement.facts:
                self.settings.forwarded(info.statement.facts)
            if queue.exact_timings:
                return raw + m.FLUSH  # the completion is sent (and seen) when it is produced
            return raw
        if kind == 83:  # 'S'
            self._skip_until_sync = False
            if self.owned:
                return self._end_owned(kind, body, raw)
            queue.sync()
            return raw
        if kind == 68:  # 'D'
            target, described = m.decode_target(body, "Describe")
            if target == 83:
                # Its ParameterDescription tells how the server will read Bind values.
                statement = self.prepared.latest(_name(described))
                queue.expect(Pending(Owed.DESCRIBE_STATEMENT, statement))
            else:
                queue.expect(Pending(Owed.DESCRIBE_PORTAL))
            return raw
        if kind == 67:  # 'C'
            target, name = m.decode_target(body, "Close")
            entry = Pending(Owed.CLOSE)
            if target == 83:
                entry.changes = [(0, self.prepared.change(_name(name), None))]
            else:
                queue.close_portal(name, now_ns)
            queue.expect(entry)
            return raw
        if kind in b"cf":  # CopyDone / CopyFail
            queue.copy_end()
            return raw
        if kind == 88:  # 'X'
            self.terminated = True
            return raw
        if kind == 72:  # 'H'
            return raw
        raise FrontendProtocolError(f"unexpected message type {chr(kind)!r} after authentication")

    def _on_query(self, body: bytes, raw: bytes, now_ns: int, now_wall: float) -> bytes:
        sql = m.query_text(body)
        facts = self._inspect(sql, self.settings.confirmed)
        queue = self.queue
        if queue.portals:
            queue.close_portal(b"", now_ns)
        facts, alternatives = self._resolve_sql_prepared(facts)
        forward = self._judge_cycle(Owed.QUERY, facts, raw, now_ns, now_wall, alternatives)
        if forward is raw:
            self.settings.forwarded(facts)
        return forward

    def _resolve_sql_prepared(self, facts: QueryFacts) -> tuple[QueryFacts, list[QueryFacts]]:
        """See through SQL-level PREPARE/EXECUTE (one namespace with protocol statements):
        EXECUTE runs the body the name holds, and each body it may hold is judged."""
        for s in facts.statements:
            if s.prepare_name or s.execute_name or s.command in _FORGET_ALL:
                break
        else:
            return facts, []  # the common case: nothing prepared or executed by name
        names: dict[str, Any] = {}
        for stmt in facts.statements:
            if stmt.execute_name:
                for candidate in self.prepared.candidates(stmt.execute_name):
                    if candidate.stmt is not None:
                        names.setdefault(stmt.execute_name, []).append(candidate.stmt)
        gate = self._gate
        latest = {name: bodies[0] for name, bodies in names.items()}
        resolved = gate.resolve_prepared(facts, dict(latest))
        alternatives = []
        for name, bodies in names.items():
            for other in bodies[1:]:
                alternatives.append(gate.resolve_prepared(facts, {**latest, name: other}))
        return resolved, alternatives

    def _record_sql_prepared(self, facts: QueryFacts, entry: Pending) -> None:
        """Queue the namespace changes a forwarded Query makes, settled by its replies."""
        changes = []
        for index, stmt in enumerate(facts.statements):
            if stmt.command in _FORGET_ALL:
                changes.append((index, self.prepared.change(ALL, None)))
            elif stmt.command == "DEALLOCATE" and stmt.prepare_name is None:
                target = self._gate.deallocate_name(stmt)
                if target is not None:
                    changes.append((index, self.prepared.change(target, None)))
            if stmt.prepare_name:
                body = self._gate.prepared_body(stmt)
                if body is not None:
                    shown = self._gate.prepared_body_text(stmt)
                    statement = Statement(
                        body.text, QueryFacts(body.text, (body,)), None, stmt.prepare_name
                    )
                    statement.shown = shown
                    changes.append((index, self.prepared.change(stmt.prepare_name, statement)))
        if changes:
            entry.changes = changes

    def _decide(self, facts: QueryFacts, alternatives: list[QueryFacts]) -> Decision:
        gate = self._gate
        decision = gate.decide(self.identity, facts)
        if not alternatives:
            return decision
        return enforce.strictest([decision, *(gate.decide(self.identity, f) for f in alternatives)])

    def _judge_cycle(
        self,
        owed: Owed,
        facts: QueryFacts,
        raw: bytes,
        now_ns: int,
        now_wall: float,
        alternatives: list[QueryFacts] | None = None,
    ) -> bytes:
        """Decide a Query or FunctionCall, each answered by its own ReadyForQuery, and return
        what to forward: the message, a poison Query, or nothing (answered locally)."""
        decision = self._decide(facts, alternatives or [])
        statement = Statement(facts.text, facts, decision)
        if len(facts.statements) > 1:
            gate = self._gate
            statement.per_statement = tuple(
                gate.decide(self.identity, QueryFacts(s.text, (s,))) for s in facts.statements
            )
        verdict = self._review(decision, statement, ())
        entry = Pending(owed, statement, now_ns, now_wall)
        queue = self.queue
        refusal = enforce.refusal(decision, self._audit_refusal())
        if verdict is not None:
            refusal = self._apply_verdict(verdict, statement, entry, decision)
        limit = decision.guard
        if limit is not None and refusal is None and owed is Owed.QUERY:
            if len(facts.statements) > 1:
                refusal = rowguard.multi_statement_refusal(decision, limit)
            else:
                guarded = self._guarded(entry, raw, limit, decision)
                if guarded is not None:
                    self._notify(decision)
                    self._record_sql_prepared(facts, entry)
                    return guarded
        action = enforce.action_for(refusal, in_flight=queue.in_flight, tx_status=queue.tx_status)
        if action is Action.ANSWER_LOCALLY:
            assert refusal is not None
            entry.block = refusal
            queue.refused(entry, now_ns, refusal)
            events = self._take_events(None)
            self._sink.send(
                (entry.block_error or enforce.policy_error(refusal))
                + m.ready_for_query(queue.tx_status),
                events,
                wait=refusal is not self._gate.audit_refusal(),
            )
            return b""
        if action is Action.POISON:
            assert refusal is not None
            # Inside a transaction (or with replies outstanding): make the server fail in the
            # same place so its transaction state matches what the client is told. A failing
            # Query is answered like a failing FunctionCall: ErrorResponse, ReadyForQuery.
            entry.block = refusal
            forward = enforce.poison_query(refusal)
        else:
            self._notify(decision)
            forward = raw
            if owed is Owed.QUERY:
                self._record_sql_prepared(facts, entry)
            if self._wa is not None:
                via = Via.SIMPLE if owed is Owed.QUERY else Via.FUNCTION_CALL
                entry.dispatch = self._dispatch(entry, via, now_wall)
        queue.expect(entry)
        if owed is Owed.FUNCTION:
            queue.expect(Pending(Owed.SYNC))
        return forward

    def _apply_verdict(
        self, verdict: ReviewVerdict, statement: Statement, entry: Pending, decision: Decision
    ) -> Decision | None:
        """What a review's verdict means for enforcement: None to run the statement (unless
        the trail refuses), else the refusal, with the broker's words as the client's error."""
        statement.review_id = verdict.request_id
        if verdict.forward:
            return self._audit_refusal()
        entry.block_error = verdict.error
        entry.block_fields = {"C": verdict.sqlstate, "M": verdict.message}
        return decision

    def _on_parse(self, body: bytes, raw: bytes, now_ns: int, now_wall: float) -> bytes:
        parse = m.decode_parse(body)
        gate = self._gate
        candidates = self.settings.candidates()
        facts = self._inspect(parse.query, candidates[0])
        alternatives = [gate.inspect(parse.query, s) for s in candidates[1:]]
        # A Parse of ``EXECUTE name`` runs the body a SQL PREPARE stored, as a Query of it does.
        facts, bodies = self._resolve_sql_prepared(facts)
        alternatives.extend(bodies)
        decision = self._decide(facts, alternatives)
        name = _name(parse.name)
        statement = Statement(facts.text, facts, decision, name, parse.param_types)
        statement.generation = gate.generation
        entry = Pending(Owed.PARSE, statement, now_ns, now_wall)
        refusal = enforce.refusal(decision, self._audit_refusal())
        if refusal is not None and not _param_sensitive(facts):
            entry.block = refusal
            self.queue.expect(entry)
            self._skip_until_sync = True
            return enforce.poison_parse(parse.name, refusal)
        # A statement whose facts depend on its parameters is decided at Bind, with the values
        # the server will use (Parse alone runs nothing).
        entry.changes = [(0, self.prepared.change(name, statement))]
        if refusal is None:
            self._notify(decision)
        self.queue.expect(entry)
        return raw

    def _on_bind(self, body: bytes, raw: bytes, now_ns: int, now_wall: float) -> bytes:
        mode = self._param_mode
        gate = self._gate
        portal, statement_name = m.bind_names(body)
        candidates = self.prepared.candidates(_name(statement_name))
        # The values are read only when something needs them (audit, or facts that depend on
        # a parameter): most Binds are forwarded by their names alone.
        bind: m.Bind | None = None
        if mode != "none" or _any_param_sensitive(candidates):
            bind = m.decode_bind(body)
        statement = candidates[0] if candidates else None
        params = None
        if bind is not None and mode != "none":
            params = gate.audit_params(bind, mode, statement.facts if statement else None)
        decisions = []
        bound_first: Statement | None = None
        for candidate in candidates:
            if candidate.facts is None:
                continue
            if candidate.decision is None or gate.needs_recheck(candidate):
                candidate.decision = gate.decide(self.identity, candidate.facts)
                candidate.generation = gate.generation
            decision = candidate.decision
            if bind is not None and _param_sensitive(candidate.facts):
                bound = gate.bind_values(
                    candidate.facts,
                    bind,
                    candidate.param_types,
                    self.settings.confirmed,
                    sql_prepared=candidate.shown is not None,
                )
                decision = gate.decide(self.identity, bound)
                if candidate is statement:
                    bound_first = Statement(
                        candidate.text,
                        bound,
                        decision,
                        candidate.name,
                        candidate.param_types,
                        candidate.shown,
                    )
            decisions.append(decision)
        if bound_first is not None:
            statement = bound_first  # this portal runs the statement with these values
        entry = Pending(Owed.BIND, statement, now_ns, now_wall)
        entry.params = params
        if decisions:
            # A body refused at Parse never enters the namespace; what is refused here is a
            # body decided anew (policy reload, SQL PREPARE, bound values) or one of several
            # candidates.
            strictest = enforce.strictest(decisions)
            refusal = enforce.refusal(strictest, self._audit_refusal())
            verdict = None
            if statement is not None and strictest.action == "review":
                values = bind.params if bind is not None else m.decode_bind(body).params
                verdict = self._review(strictest, statement, values)
            if verdict is not None and statement is not None:
                refusal = self._apply_verdict(verdict, statement, entry, strictest)
            if refusal is not None:
                if statement is not None:
                    entry.statement = Statement(
                        statement.text,
                        statement.facts,
                        refusal,
                        statement.name,
                        (),
                        statement.shown,
                    )
                entry.block = refusal
                self.queue.expect(entry)
                self._skip_until_sync = True
                return enforce.poison_bind()
        values = bind.params if bind is not None else ()
        self.queue.bind_portal(Portal(portal, statement, params, values), now_ns)
        self.queue.expect(entry)
        return raw

    def _dispatch(self, entry: Pending, via: Via, now_wall: float) -> int:
        """Submit the dispatch record of a statement about to be forwarded (write_ahead)."""
        assert self._wa is not None
        event = dispatch_record(
            self._events, self._gate, entry.statement, via, now_wall, entry.portal, entry.params
        )
        seq = self._wa.dispatch(event)
        self._dispatches[seq] = event
        return seq

    def _settle_dispatches(self) -> list[dict[str, Any]]:
        """At a ReadyForQuery: a dispatched statement neither in flight nor recorded was
        skipped by the server (an earlier statement of its pipeline failed); say so, so
        that no dispatch stays open."""
        queue = self.queue
        live = {entry.dispatch for entry in queue.pending if entry.dispatch}
        live.update(p.dispatch for p in queue.portals.values() if p.suspended and p.dispatch)
        referenced = self._referenced
        events = []
        now = iso(time.time())
        for seq in [s for s in self._dispatches if s not in live]:
            dispatch = self._dispatches.pop(seq)
            if seq in referenced:
                referenced.discard(seq)
            else:
                events.append(skipped_record(dispatch, now))
        return events

    # --- the row guard (proxy.relay.rowguard) -----------------------------------------------

    def _guarded(
        self, entry: Pending, raw: bytes, limit: RowLimit, decision: Decision
    ) -> bytes | None:
        """Start guarding the statement of ``entry``: the bytes to send the server now, or
        None to forward it as it is (monitor mode; or the server will not run it: its
        transaction failed, or it discards everything up to the client's Sync)."""
        if decision.mode != "enforce":
            return None
        queue = self.queue
        if queue.discarding:
            return None
        if queue.pending:
            self._guard = RowGuard(Phase.DRAIN)
            raise _Drain
        if queue.predicted == c.TX_FAILED:
            return None
        simple = entry.owed is Owed.QUERY
        if self.scanner is None:
            return self._refuse_guarded(entry, rowguard.unavailable(decision, limit), simple)
        guard = RowGuard(
            Phase.OPEN, simple, queue.predicted, limit, decision, entry, raw, self.owned
        )
        self._guard = guard
        if self._wa is not None:
            via = Via.SIMPLE if simple else Via.EXTENDED
            entry.dispatch = self._dispatch(entry, via, entry.started_wall)
        return guard.open()

    def _refuse_guarded(self, entry: Pending, refusal: Decision, simple: bool) -> bytes:
        """A guarded statement that cannot be guarded is refused, as a blocked one is."""
        entry.block = refusal
        queue = self.queue
        if simple and queue.tx_status != c.TX_IN_BLOCK:
            queue.refused(entry, entry.started_ns, refusal)
            self._sink.send(
                enforce.policy_error(refusal) + m.ready_for_query(queue.tx_status),
                self._take_events(None),
            )
            return b""
        queue.expect(entry)
        if simple:
            return enforce.poison_query(refusal)
        self._skip_until_sync = True
        return enforce.poison_parse(rowguard.POISON_NAME, refusal)

    def _end_owned(self, kind: int, body: bytes | None, raw: bytes) -> bytes:
        """The client's Sync ends the implicit transaction a guard made explicit."""
        queue = self.queue
        if queue.pending and not queue.discarding:
            self._guard = RowGuard(Phase.DRAIN)
            self._wait(kind, body, raw, first=True)
            return m.FLUSH
        self.owned = False
        guard = RowGuard(Phase.SETTLE)
        self._guard = guard
        out = guard.settle(self, raw)
        queue.sync()
        return out

    def _commit_owned(self, kind: int, body: bytes, raw: bytes) -> bytes:
        """A Query inside the extended-protocol batch whose implicit transaction a guard made
        explicit: PostgreSQL would end that transaction with this Query, so it is committed
        first and the Query then runs on its own."""
        queue = self.queue
        if queue.discarding:
            return self._on_query(body, raw, 0, 0.0)  # ignored by the server until Sync
        self._wait(kind, body, raw, first=True)
        if queue.pending:
            self._guard = RowGuard(Phase.DRAIN)
            return m.FLUSH
        self.owned = False
        guard = RowGuard(Phase.SETTLE)
        self._guard = guard
        return guard.commit_before_query()

    def plain_server(self, kind: int, body: bytes, rows: int) -> bytes | None:
        """A server message handled as if no guard ran (the guard decides when)."""
        guard = self._guard
        self._guard = None
        try:
            return self.on_server(kind, body, rows)
        finally:
            if self._guard is None:
                self._guard = guard

    def upstream_later(self, data: bytes) -> None:
        """Bytes for the server once the current server chunk is handled."""
        self._deferred_upstream.append(data)
        self._resume_due = True

    def skip_until_sync(self) -> None:
        self._skip_until_sync = True

    def guard_finished(self, guard: RowGuard | None) -> None:
        """A draining guard is done: the statement waiting behind it is handled again."""
        self._guard = guard
        self._resume_due = True

    def guard_run(self, guard: RowGuard) -> None:
        """The savepoint is there: send the statement, hold what the client would see."""
        entry = guard.entry
        assert entry is not None and self.scanner is not None
        self.queue.expect(entry)
        self.scanner.capture = []
        self.upstream_later(guard.raw if guard.simple else guard.raw + m.FLUSH)

    def guard_failed(self, guard: RowGuard, answer: Answer) -> None:
        """The server refused the BEGIN/SAVEPOINT: the statement is refused, never run."""
        entry = guard.entry
        assert entry is not None and guard.limit is not None and guard.decision is not None
        refusal = rowguard.unavailable(guard.decision, guard.limit, answer)
        entry.block = refusal
        queue = self.queue
        queue.refused(entry, entry.started_ns, refusal)
        guard.extra = enforce.policy_error(refusal)
        if guard.simple:
            guard.extra += m.ready_for_query(answer.status or queue.tx_status)
        else:
            self._skip_until_sync = True
        guard.phase = Phase.DONE  # the client is answered at the end of this server chunk

    def _release(self, guard: RowGuard, events: list[Event]) -> None:
        """The guard decided: the client gets what was held (or the refusal) after
        ``events`` are in the trail."""
        guard.released = True
        scanner = self.scanner
        held = b""
        if scanner is not None and scanner.capture is not None:
            held = b"".join(scanner.capture)
            scanner.capture = None
        if guard.probing:  # its answer is pgwarden's, not the client's
            value = rowguard.first_value(held)
            found = rowguard.setting_seconds(value) if value is not None else None
            self._idle_timeout = found if found is not None else 0.0
            held = rowguard.keep_async(held)
        elif guard.outcome is not None and guard.outcome not in rowguard.DELIVERED:
            held = rowguard.keep_async(held)
        self._sink.send(held + guard.extra, events)
        self._resume_due = True

    def _notify(self, decision: Decision) -> None:
        notice = enforce.flag_notice(decision)
        if notice is not None:
            self._sink.send(notice, None)

    # --- server → client --------------------------------------------------------------------

    def server_chunk(self, now_ns: int) -> None:
        """A chunk of server bytes is about to be scanned at ``now_ns``."""
        self._now_ns = now_ns
        self.chunk_needs_audit = False
        self.queue.new_chunk()

    def on_server(self, kind: int, body: bytes, rows: int) -> bytes | None:
        """The scanner's handler for watched messages once the session is ready."""
        if self._guard is not None:
            return self._guard.on_server(self, kind, body, rows)
        queue = self.queue
        if rows:
            queue.rows += rows
        if kind == 68:
            return None  # only a row count
        if kind == 83:  # 'S'
            name, value = m.decode_parameter_status(body)
            self._on_parameter(name, value)
            return None
        result = queue.on_message(kind, body, self._now_ns)
        if kind == 90:
            self.settings.ready(queue.tx_status)
            pending = self._pending_events
            if queue.completed:
                pending.extend(self._take_events(chr(queue.tx_status)))
            ends = self.transactions.ready(queue.tx_status)
            if ends:
                pending.extend(self._transaction_events(ends))
            if self._dispatches:
                pending.extend(self._settle_dispatches())
            if self._backlog:
                self._resume_due = True
        return result

    def take_chunk_events(self) -> list[Event]:
        """Events completed while scanning the current server chunk, in order."""
        events = self._pending_events
        if self.queue.completed:
            events.extend(self._take_events(None))
        self._pending_events = []
        guard = self._guard
        if guard is not None and guard.phase is Phase.DONE and not guard.released:
            self._release(guard, events)
            return []
        return events

    def _take_events(self, tx_status: str | None) -> list[Event]:
        """Audit events of the completions so far; ``tx_status`` is the server's word when a
        ReadyForQuery just followed them."""
        completed = self.queue.completed
        if not completed:
            return []
        build = self._events.record
        tracker = self.transactions
        audit_refusal = self._gate.audit_refusal()
        events: list[Event] = []
        for done in completed:
            if done.refusal is not audit_refusal:
                self.chunk_needs_audit = True
            facts = done.statement.facts if done.statement is not None else None
            if self._functions and facts and done.error is None and invalidates_functions(facts):
                self.forget_functions()
            event = build(done, tx_status)
            if done.dispatch:
                event["dispatch"] = done.dispatch
                self._referenced.add(done.dispatch)
            events.append(event)
            ends = tracker.statement(done, event)
            if ends:
                self.chunk_needs_audit = True
                events.extend(self._transaction_events(ends))
        completed.clear()
        self.queue.new_chunk()  # what was recorded can no longer be re-scoped
        return events

    def _transaction_events(self, ends: list[TransactionEnd]) -> list[dict[str, Any]]:
        now = time.time()
        return [self._events.transaction(end, now) for end in ends]

    def end_connection(self, client_left: bool) -> list[Event]:
        """The connection ends: events still owed, and the outcome of an open transaction."""
        self._wake = None
        events = self._take_events(None)
        if self._dispatches:
            # Forwarded, and the server's answer never came: it may have run (and committed).
            unfinished = {e.dispatch for e in self.queue.pending if e.dispatch and _unfinished(e)}
            for seq, dispatch in self._dispatches.items():
                if seq in unfinished or seq not in self._referenced:
                    events.append(closing_record(dispatch, "unknown", "connection_lost"))
            self._dispatches.clear()
        events.extend(self._transaction_events(self.transactions.connection_ended(client_left)))
        return events

    def take_events(self) -> list[Event]:
        """Events completed outside a server chunk (an abandoned portal, session end)."""
        return self._take_events(None)


def _param_sensitive(facts: QueryFacts) -> bool:
    """``facts.param_sensitive``, compiled: the property is an interpreted generator, and a
    Bind asks it of every candidate statement."""
    for stmt in facts.statements:
        if stmt.param_sensitive:
            return True
        body = stmt.body
        if body is not None and body.param_sensitive:
            return True
    return False


def _any_param_sensitive(candidates: tuple[Statement, ...]) -> bool:
    for candidate in candidates:
        facts = candidate.facts
        if facts is not None and _param_sensitive(facts):
            return True
    return False


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _unfinished(entry: Pending) -> bool:
    """Whether a request still owed may have more to run: a Query until each of its
    statements completed (an error ends the rest), anything else until its completion."""
    if entry.owed is not Owed.QUERY:
        return True
    facts = entry.statement.facts if entry.statement is not None else None
    return entry.index < (len(facts.statements) if facts is not None else 1)


def _major(version: str) -> int | None:
    head = version.split(".")[0].split()[0] if version else ""
    return int(head) if head.isdigit() else None
