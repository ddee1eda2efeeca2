"""One client connection: startup and auth relay, both directions, statement tracking, policy.

Data path in short. Client bytes are framed and decoded (they carry SQL); each request is
checked against the policy, then forwarded as received, and what the server now owes for it
is appended to a FIFO (``_pending``). Server bytes are scanned header by header; only the
messages that complete or change something (C, E, I, s, Z, G, T/t/n/1/2/3/V for describes
and parses, S, K, R) are looked at, DataRows and CopyData pass through as slices. When a
statement completes, its audit event is submitted to the trail and the client's bytes are held
until the trail has written that event to the OS: no client ever sees a result that is not
in the audit log.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from proxy.errors import BackendProtocolError, FrontendProtocolError, ProtocolError
from proxy.identity import Identity
from proxy.policy.decision import Decision
from proxy.sql.facts import ParserSettings, QueryFacts, StatementFacts
from proxy.wire import constants as c
from proxy.wire import messages as m
from proxy.wire.framing import Framer
from proxy.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    encode_startup,
    parse_startup,
    startup_length,
)

if TYPE_CHECKING:
    from proxy.server import ProxyServer

logger = logging.getLogger("pgwarden.session")

_U32 = struct.Struct("!I")

# What the server owes for a client request (entries of Session._pending).
K_QUERY = 1  # simple Query: statement completions, then ReadyForQuery
K_PARSE = 2
K_BIND = 3
K_DESCRIBE_STMT = 4  # ParameterDescription, then RowDescription or NoData
K_DESCRIBE_PORTAL = 5  # RowDescription or NoData
K_EXECUTE = 6
K_CLOSE = 7
K_SYNC = 8
K_FUNCTION = 9  # FunctionCallResponse (or error), then ReadyForQuery
K_COPY_END = 10  # marker: where the client's CopyDone/CopyFail sits in the request stream

# Server message types the relay must look at; everything else is forwarded untouched.
_WATCHED = frozenset(b"CEIsZGHWTtn123VSKRv")
_DESCRIBES = (K_DESCRIBE_STMT, K_DESCRIBE_PORTAL)

_POISON_SQL = "PGWARDEN BLOCKED STATEMENT /* {} */"
_BLOCKED_STATEMENT = b"__pgwarden_blocked__"


_iso_second = -1
_iso_prefix = ""


def _iso(ts: float) -> str:
    """UTC ISO-8601 with microseconds; the per-second prefix is formatted once a second."""
    global _iso_second, _iso_prefix
    second = int(ts)
    if second != _iso_second:
        _iso_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _iso_second = second
    return f"{_iso_prefix}.{int((ts - second) * 1e6):06d}Z"


def _safe_comment(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:60]


class Tracked:
    """A statement the session follows from request to completion."""

    __slots__ = ("decision", "facts", "generation", "name", "stmt", "text")

    def __init__(
        self, text: str, facts: QueryFacts | None, decision: Decision | None, name: str = ""
    ) -> None:
        self.text = text
        self.facts = facts
        self.decision = decision
        self.name = name
        self.generation = -1  # policy generation the decision was made under
        self.stmt: StatementFacts | None = (
            facts.statements[0] if facts is not None and len(facts.statements) == 1 else None
        )


class Pending:
    """One entry of the reply FIFO."""

    __slots__ = (
        "block",
        "index",
        "kind",
        "params",
        "portal",
        "rows",
        "stage",
        "started_ns",
        "started_wall",
        "tracked",
    )

    def __init__(self, kind: int, tracked: Tracked | None = None) -> None:
        self.kind = kind
        self.tracked = tracked
        self.block: Decision | None = None  # a poisoned request: replace the server's error
        self.index = 0  # next statement of a multi-statement Query
        self.stage = 0
        self.started_ns = 0
        self.started_wall = 0.0
        self.portal = ""
        self.rows = 0
        self.params: list[Any] | None = None


class Portal:
    """A bound portal. One that was suspended (Execute with a row limit) is one statement
    until it completes or is destroyed, however many Executes it takes."""

    __slots__ = ("name", "params", "rows", "started_ns", "started_wall", "suspended", "tracked")

    def __init__(self, name: bytes, tracked: Tracked | None, params: list[Any] | None) -> None:
        self.name = name
        self.tracked = tracked
        self.params = params
        self.rows = 0
        self.suspended = False
        self.started_ns = 0
        self.started_wall = 0.0


class _Side(asyncio.Protocol):
    """Transport adapter: forwards socket callbacks to the session."""

    def __init__(self, session: Session, is_client: bool) -> None:
        self.session = session
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.is_client:
            self.session.client_connected(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.is_client:
            self.session.client_data(data)
        else:
            self.session.server_data(data)

    def eof_received(self) -> bool | None:
        # A client that half-closes after its last request still gets the replies, as from
        # PostgreSQL; the server leg closes normally (connection_lost follows).
        return self.session.client_eof() if self.is_client else False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.is_client:
            self.session.client_lost(exc)
        else:
            self.session.server_lost(exc)

    def pause_writing(self) -> None:
        self.session.peer_pause(self.is_client)

    def resume_writing(self) -> None:
        self.session.peer_resume(self.is_client)


class Session:
    """The relay for one client connection."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.cfg = server.cfg
        self.session_id = secrets.token_hex(8)
        self.identity = Identity(user="", database="", session_id=self.session_id)
        self.started_at = time.time()
        self._started_ns = time.perf_counter_ns()
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.phase = "startup"  # startup → connecting → auth → ready → closing → closed
        self.tx_status = c.TX_IDLE
        self.protocol_minor = 0
        self.backend_pid: int | None = None
        self._server_key: tuple[int, bytes] | None = None
        self.cancel_key: tuple[int, bytes] | None = None
        self._startup_buf = bytearray()
        self._startup_packet = b""  # what we send upstream (3.0, no _pq_ options)
        self._framer = Framer(
            FrontendProtocolError,
            large_limit=self.cfg["limits.max_message_size"],
            allowed=c.FRONTEND_TYPES,
        )
        self._sbuf = bytearray()  # incomplete server message
        self._s_stream_left = 0  # bytes of a large passthrough server message still to come
        self._pending: deque[Pending] = deque()
        self._prepared: dict[bytes, Tracked] = {}
        self._portals: dict[bytes, Portal] = {}
        self._sql_prepared: dict[str, StatementFacts] = {}
        self._skip_until_sync = False
        self._ignore_syncs_in_copy = False
        self._copy_in = False
        self._passthrough = False  # CopyBoth (replication): relay blindly from here on
        self._held: list[bytes] = []
        self._held_marker = 0
        self._released = 0
        self._to_upstream_early: list[bytes] = []
        self._base: dict[str, Any] = {}
        self._settings = ParserSettings()
        self._server_params: dict[str, str] = {}
        self._row_count = 0
        self.statements = 0
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self._end_reason = ""
        self._login_timer: asyncio.TimerHandle | None = None
        self._client_paused_for_audit = False
        self.ssl_requests = 0
        self.client_tls = False
        self._client_done = False  # the client closed or half-closed its side
        self._announced = False  # session_start written: a session_end must follow
        self._end_error = ""  # why the session failed, for session_end
        # Events completed while scanning the current server chunk; they are written to the
        # trail before that chunk is released to the client.
        self._emitted: list[dict[str, Any]] = []

    # --- SessionView (admin API) ------------------------------------------------------

    @property
    def state(self) -> str:
        if self.phase != "ready":
            return self.phase
        if self._copy_in:
            return "copy"
        if self._pending:
            return "active"
        return {c.TX_IDLE: "idle", c.TX_IN_BLOCK: "idle in transaction"}.get(
            self.tx_status, "idle in transaction (aborted)"
        )

    @property
    def current_statement(self) -> str | None:
        for entry in self._pending:
            if entry.tracked is not None:
                return self.server.gate.display_text(entry.tracked.text)
        return None

    @property
    def statement_started(self) -> float | None:
        for entry in self._pending:
            if entry.kind in (K_QUERY, K_EXECUTE, K_FUNCTION) and entry.started_wall:
                return entry.started_wall
        return None

    async def cancel(self) -> bool:
        if not self._pending or self._server_key is None:
            return False
        await self.server.forward_cancel(*self._server_key)
        return True

    def terminate(self, reason: str) -> None:
        self._fatal(
            c.SQLSTATE_ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
            reason=reason,
        )

    # --- lifecycle ----------------------------------------------------------------------

    def client_connected(self, transport: asyncio.Transport) -> None:
        self.client = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            addr, port = str(peer[0]), int(peer[1])
        else:
            addr, port = "unix", None
        self.identity = Identity("", "", "", addr, port, self.session_id)
        loop = asyncio.get_running_loop()
        self._login_timer = loop.call_later(self.cfg["limits.login_timeout"], self._login_timeout)
        self.server.session_opened(self)

    def _login_timeout(self) -> None:
        if self.phase in ("startup", "connecting", "auth"):
            logger.warning(
                "session %s: login timeout from %s", self.session_id, self.identity.client_addr
            )
            self._fatal(
                c.SQLSTATE_PROTOCOL_VIOLATION,
                "canceling authentication due to timeout",
                reason="login_timeout",
            )

    def client_eof(self) -> bool:
        """The client will send nothing more. Keep the socket open for the replies still owed
        (True) or let it close now (False)."""
        self._client_done = True
        if self.phase != "ready" or self.upstream is None:
            return False
        if self._pending:
            return True  # the session ends when the last reply has been relayed
        if self._held:
            self._end_after_client_left()  # replies are only waiting for their audit write
            return True
        return False

    def client_lost(self, exc: Exception | None) -> None:
        if self.phase == "closed":
            return
        self._client_done = True
        if not self._end_reason:
            self._end_reason = "client_disconnected"
        if self.phase == "ready" and self._pending and self.upstream is not None:
            # Requests already forwarded run to the end on the server (PostgreSQL itself only
            # notices a vanished client when it next writes): read their replies so every
            # statement that ran is audited, then close the server leg.
            return
        # The server rolls back an open transaction when its connection drops; nothing of a
        # half-received client message has been forwarded.
        if self.upstream is not None:
            self.upstream.abort()
        self._finish()

    def _end_after_client_left(self) -> None:
        """All replies owed to a departed (or half-closed) client are in: end the session."""
        if self.upstream is not None:
            self.upstream.write(m.TERMINATE)
        self._close_client_after_release()

    def server_lost(self, exc: Exception | None) -> None:
        if self.phase == "closed":
            return
        if (
            self._end_reason not in ("client_terminated", "server_fatal")
            and self.phase != "closing"
        ):
            logger.warning(
                "session %s: upstream %s closed the connection (%s)%s",
                self.session_id,
                self.cfg.upstream,
                exc or "end of stream",
                f" with {len(self._pending)} replies outstanding"
                if self._pending
                else (" in the middle of a message" if self._sbuf else ""),
            )
        if not self._end_reason:
            self._end_reason = "server_closed"
        if self.phase in ("connecting", "auth") and not self._end_reason.startswith("auth"):
            self._end_reason = "server_closed_during_startup"
        self._close_client_after_release()

    def _close_client_after_release(self) -> None:
        def close() -> None:
            if self.client is not None:
                self.client.close()
            self._finish()

        if self._held:
            self._held_marker += 1
            marker = self._held_marker

            def release_then_close() -> None:
                self._release(marker)
                close()

            self.server.trail.when_written(release_then_close)
        else:
            close()

    def _finish(self) -> None:
        if self.phase == "closed":
            return
        was_ready = self._announced
        self.phase = "closed"
        if self._login_timer is not None:
            self._login_timer.cancel()
        if self.upstream is not None:
            self.upstream.close()
        if was_ready:
            now_ns = time.perf_counter_ns()
            for portal in self._portals.values():
                if portal.suspended:
                    self.server.trail.submit(self._portal_event(portal, now_ns))
            event = self._event("session_end")
            event.update(
                duration_ms=round((time.perf_counter_ns() - self._started_ns) / 1e6, 3),
                statements=self.statements,
                bytes_from_client=self.bytes_from_client,
                bytes_to_client=self.bytes_to_client,
                reason=self._end_reason or "closed",
            )
            if self._end_error:
                event["error"] = self._end_error
            self.server.trail.submit(event)
        self.server.session_closed(self)

    def _fatal(self, sqlstate: str, text: str, *, reason: str, detail: str = "") -> None:
        """Tell the client why, in a well-formed FATAL, and close both legs."""
        if self.phase == "closed":
            return
        self._end_reason = self._end_reason or reason
        self.phase = "closing"
        if self.upstream is not None:
            self.upstream.abort()
        self._send_client(m.error_response(sqlstate, text, severity="FATAL", detail=detail), None)
        self._close_client_after_release()

    # --- flow control -------------------------------------------------------------------

    def peer_pause(self, client_side: bool) -> None:
        # The client's send buffer is full: stop reading from the server (and vice versa).
        other = self.upstream if client_side else self.client
        if other is not None:
            other.pause_reading()

    def peer_resume(self, client_side: bool) -> None:
        other = self.upstream if client_side else self.client
        if other is not None and not (not client_side and self._client_paused_for_audit):
            other.resume_reading()

    def _wait_for_audit_capacity(self) -> None:
        if self._client_paused_for_audit or self.client is None:
            return
        self._client_paused_for_audit = True
        self.client.pause_reading()

        async def wait() -> None:
            await self.server.trail.wait_not_full()
            self._client_paused_for_audit = False
            if self.client is not None and self.phase != "closed":
                self.client.resume_reading()

        self.server.spawn(wait())

    # --- client → proxy -----------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        self.bytes_from_client += len(data)
        try:
            if self.phase == "ready":
                self._client_messages(data)
            elif self.phase == "startup":
                self._startup_data(data)
            elif self.phase in ("connecting", "auth"):
                self._auth_data(data)
        except FrontendProtocolError as exc:
            self.server.state.counters.protocol_errors_client += 1
            self._end_error = str(exc)
            logger.warning(
                "session %s: client protocol error from %s: %s",
                self.session_id,
                self.identity.client_addr,
                exc,
            )
            self._fatal(exc.sqlstate, str(exc), reason="client_protocol_error")

    def _startup_data(self, data: bytes) -> None:
        self._startup_buf += data
        while self.phase == "startup":
            length = startup_length(self._startup_buf)
            if length is None or len(self._startup_buf) < length:
                return
            packet = bytes(self._startup_buf[:length])
            del self._startup_buf[:length]
            try:
                request = parse_startup(packet)
            except FrontendProtocolError:
                if _U32.unpack_from(packet, 4)[0] != c.CANCEL_REQUEST_CODE:
                    raise
                # Like PostgreSQL, never write on a cancel socket, even a malformed one.
                self._close_silently("bad_cancel_request")
                return
            if isinstance(request, SSLRequest | GSSENCRequest):
                if self._startup_buf:
                    # Bytes sent before our answer could have been injected by a
                    # man in the middle (CVE-2021-3935): refuse them.
                    raise FrontendProtocolError("unexpected data after an encryption request")
                self.ssl_requests += 1
                if self.ssl_requests > 2:
                    raise FrontendProtocolError("too many encryption requests")
                assert self.client is not None
                self.client.write(b"N")
                continue
            if isinstance(request, CancelRequest):
                self.server.handle_cancel(request)
                self._close_silently("cancel_request")
                return
            assert isinstance(request, StartupMessage)
            self._begin_session(request)

    def _close_silently(self, reason: str) -> None:
        self._end_reason = reason
        if self.client is not None:
            self.client.close()
        self._finish()

    def _begin_session(self, startup: StartupMessage) -> None:
        user = startup.get("user")
        if not user:
            raise FrontendProtocolError(
                "no PostgreSQL user name specified in startup packet",
                c.SQLSTATE_INVALID_AUTHORIZATION,
            )
        self.identity = Identity(
            user=user,
            database=startup.get("database") or user,
            application_name=startup.get("application_name"),
            client_addr=self.identity.client_addr,
            client_port=self.identity.client_port,
            session_id=self.session_id,
        )
        replication = startup.get("replication").lower()
        if replication not in ("", "false", "off", "no", "0") and not self.cfg["allow_replication"]:
            self._end_reason = "replication_refused"
            self._fatal(
                c.SQLSTATE_INVALID_AUTHORIZATION,
                "replication connections are not allowed through pgwarden",
                reason="replication_refused",
                detail="Set allow_replication: true in the pgwarden config to permit them.",
            )
            return
        # We speak 3.0 upstream and up to 3.2 to the client; 3.2 only lengthens the cancel key,
        # which the proxy mints itself anyway.
        unsupported = [k for k, _ in startup.params if k.startswith("_pq_.")]
        wanted = startup.minor
        self.protocol_minor = 2 if wanted >= 2 else 0
        if wanted != self.protocol_minor or unsupported:
            self._send_client(m.negotiate_protocol_version(self.protocol_minor, unsupported), None)
        params = tuple((k, v) for k, v in startup.params if not k.startswith("_pq_."))
        self._startup_packet = encode_startup(3, 0, params)
        self.phase = "connecting"
        self.server.spawn(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        upstream = self.cfg.upstream
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.cfg["limits.connect_timeout"]):
                if upstream.unix_path:
                    _, proto = await loop.create_unix_connection(
                        lambda: _Side(self, False), upstream.unix_path
                    )
                else:
                    _, proto = await loop.create_connection(
                        lambda: _Side(self, False), upstream.host, upstream.port
                    )
        except (OSError, TimeoutError) as exc:
            self.server.state.counters.upstream_connect_failures += 1
            reason = "timeout" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            logger.error(
                "session %s: cannot connect to upstream %s: %s", self.session_id, upstream, reason
            )
            self._fatal(
                c.SQLSTATE_CONNECTION_FAILURE,
                f"pgwarden could not connect to the upstream server at {upstream}: {reason}",
                reason="upstream_unreachable",
            )
            return
        if self.phase == "closed":
            if proto.transport is not None:
                proto.transport.close()
            return
        self.upstream = proto.transport
        assert self.upstream is not None
        self.phase = "auth"
        self.upstream.write(self._startup_packet)
        for chunk in self._to_upstream_early:
            self.upstream.write(chunk)
        self._to_upstream_early.clear()

    def _auth_data(self, data: bytes) -> None:
        out = []
        for kind, _body, raw in self._framer.feed(data):
            if kind not in b"pX":
                raise FrontendProtocolError(
                    f"unexpected message type {chr(kind)!r} during authentication"
                )
            out.append(raw)
        if not out:
            return
        joined = b"".join(out)
        if self.upstream is None:
            self._to_upstream_early.append(joined)
        else:
            self.upstream.write(joined)

    def _client_messages(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        now_ns = time.perf_counter_ns()
        now_wall = time.time()
        out: list[bytes] = []
        unchanged = not self._framer.buffered and not self._framer.in_stream
        consumed = 0
        for kind, body, raw in self._framer.feed(data):
            consumed += len(raw)
            replacement = self._client_message(kind, body, raw, now_ns, now_wall)
            if replacement is raw:
                out.append(raw)
            else:
                unchanged = False
                if replacement:
                    out.append(replacement)
        if self.phase != "ready":
            return
        if unchanged and consumed == len(data):
            upstream.write(data)
        elif out:
            upstream.write(b"".join(out))
        if self.server.trail.full:
            self._wait_for_audit_capacity()

    def _client_message(
        self, kind: int, body: bytes | None, raw: bytes, now_ns: int, now_wall: float
    ) -> bytes:
        """Handle one client message; return the bytes to forward (``raw`` when unchanged)."""
        if body is None or kind == 100:  # 'd' CopyData: never decoded
            return b"" if self._skip_until_sync else raw
        if self._skip_until_sync and kind not in b"SHX":
            # After a blocked request the server discards everything up to Sync; so do we.
            return b""
        if kind == 81:  # 'Q'
            return self._on_query(body, raw, now_ns, now_wall)
        if kind == 80:  # 'P'
            return self._on_parse(body, raw, now_ns, now_wall)
        if kind == 66:  # 'B'
            return self._on_bind(body, raw, now_ns, now_wall)
        if kind == 69:  # 'E'
            portal, _limit = m.decode_execute(body)
            info = self._portals.get(portal)
            entry = Pending(K_EXECUTE, info.tracked if info else None)
            entry.started_ns = now_ns
            entry.started_wall = now_wall
            entry.portal = portal.decode("utf-8", "replace")
            entry.params = info.params if info else None
            self._pending.append(entry)
            return raw
        if kind == 83:  # 'S'
            self._skip_until_sync = False
            if not self._ignore_syncs_in_copy:
                self._pending.append(Pending(K_SYNC))
            return raw
        if kind == 68:  # 'D'
            target, _name = m.decode_target(body, "Describe")
            self._pending.append(Pending(K_DESCRIBE_STMT if target == 83 else K_DESCRIBE_PORTAL))
            return raw
        if kind == 67:  # 'C'
            target, name = m.decode_target(body, "Close")
            if target == 83:
                self._prepared.pop(name, None)
            else:
                self._abandon_portal(self._portals.pop(name, None))
            self._pending.append(Pending(K_CLOSE))
            return raw
        if kind in b"cf":  # CopyDone / CopyFail
            if self._ignore_syncs_in_copy:
                self._ignore_syncs_in_copy = False
            else:
                self._pending.append(Pending(K_COPY_END))
            return raw
        if kind == 70:  # 'F'
            return self._on_function_call(body, raw, now_ns, now_wall)
        if kind == 88:  # 'X'
            self._end_reason = "client_terminated"
            return raw
        if kind == 72:  # 'H'
            return raw
        raise FrontendProtocolError(f"unexpected message type {chr(kind)!r} after authentication")

    def _on_query(self, body: bytes, raw: bytes, now_ns: int, now_wall: float) -> bytes:
        sql = m.query_text(body)
        if self._portals:
            self._abandon_portal(self._portals.pop(b"", None))
        gate = self.server.gate
        facts = gate.resolve_prepared(gate.inspect(sql, self._settings), self._sql_prepared)
        return self._judge_cycle(K_QUERY, facts, raw, now_ns, now_wall)

    def _on_function_call(self, body: bytes, raw: bytes, now_ns: int, now_wall: float) -> bytes:
        facts = self.server.gate.function_call_facts(m.function_oid(body))
        return self._judge_cycle(K_FUNCTION, facts, raw, now_ns, now_wall)

    def _judge_cycle(
        self, kind: int, facts: QueryFacts, raw: bytes, now_ns: int, now_wall: float
    ) -> bytes:
        """Decide a Query or FunctionCall, each answered by its own ReadyForQuery, and return
        what to forward: the message, a poison Query, or nothing (answered locally)."""
        decision = self.server.gate.decide(self.identity, facts)
        entry = Pending(kind, Tracked(facts.text, facts, decision))
        entry.started_ns = now_ns
        entry.started_wall = now_wall
        refusal = self._refusal(decision)
        if refusal is None:
            self._notify_if_asked(decision)
            forward = raw
        elif not self._pending and self.tx_status != c.TX_IN_BLOCK:
            # Idle (or already failed) with nothing in flight: answering locally is exactly
            # what PostgreSQL would send, and nothing reaches the server.
            entry.block = refusal
            event = self._refused_event(entry, now_ns, refusal)
            self._send_client(
                self._policy_error(refusal) + m.ready_for_query(self.tx_status), [event]
            )
            return b""
        else:
            # Inside a transaction (or with replies outstanding): make the server fail in the
            # same place so its transaction state matches what the client is told. A failing
            # Query is answered like a failing FunctionCall: ErrorResponse, ReadyForQuery.
            entry.block = refusal
            rule = refusal.rules[0].id if refusal.rules else "policy"
            forward = m.query(_POISON_SQL.format(_safe_comment(rule)))
        self._pending.append(entry)
        if kind == K_FUNCTION:
            self._pending.append(Pending(K_SYNC))
        return forward

    def _on_parse(self, body: bytes, raw: bytes, now_ns: int, now_wall: float) -> bytes:
        parse = m.decode_parse(body)
        gate = self.server.gate
        facts = gate.inspect(parse.query, self._settings)
        decision = gate.decide(self.identity, facts)
        name = parse.name.decode("utf-8", "replace")
        tracked = Tracked(facts.text, facts, decision, name)
        tracked.generation = gate.generation
        self._prepared[parse.name] = tracked
        entry = Pending(K_PARSE, tracked)
        entry.started_ns = now_ns
        entry.started_wall = now_wall
        refusal = self._refusal(decision)
        if refusal is not None:
            entry.block = refusal
            self._pending.append(entry)
            self._skip_until_sync = True
            rule = refusal.rules[0].id if refusal.rules else "policy"
            return m.parse(parse.name, _POISON_SQL.format(_safe_comment(rule)))
        self._notify_if_asked(decision)
        self._pending.append(entry)
        return raw

    def _on_bind(self, body: bytes, raw: bytes, now_ns: int, now_wall: float) -> bytes:
        mode = self.cfg["audit.parameters"]
        if mode == "none":
            portal, statement = m.bind_names(body)
            tracked = self._prepared.get(statement)
            params = None
        else:
            bind = m.decode_bind(body)
            portal, statement = bind.portal, bind.statement
            tracked = self._prepared.get(statement)
            params = self.server.gate.audit_params(bind, mode, tracked.facts if tracked else None)
        entry = Pending(K_BIND, tracked)
        entry.started_ns = now_ns
        entry.started_wall = now_wall
        entry.params = params
        if (
            tracked is not None
            and tracked.facts is not None
            and self.server.gate.needs_recheck(tracked)
        ):
            decision = self.server.gate.decide(self.identity, tracked.facts)
            tracked.decision = decision
            tracked.generation = self.server.gate.generation
            refusal = self._refusal(decision)
            if refusal is not None:
                entry.block = refusal
                self._pending.append(entry)
                self._skip_until_sync = True
                return m.bind_missing_statement(_BLOCKED_STATEMENT)
        self._abandon_portal(self._portals.get(portal))
        self._portals[portal] = Portal(portal, tracked, params)
        self._pending.append(entry)
        return raw

    def _refusal(self, decision: Decision) -> Decision | None:
        if decision.action == "block":
            return decision
        if self.cfg["audit.fail_closed"] and not self.server.audit_accepting():
            return self.server.gate.audit_refusal()
        return None

    def _notify_if_asked(self, decision: Decision) -> None:
        if decision.action == "flag" and decision.notify:
            ids = ", ".join(r.id for r in decision.rules)
            self._send_client(
                m.notice_response(
                    decision.message or "statement flagged by pgwarden policy",
                    detail=f"pgwarden rule: {ids}",
                ),
                None,
            )

    def _policy_error(self, decision: Decision) -> bytes:
        ids = ", ".join(r.id for r in decision.rules if r.action == decision.action) or "policy"
        return m.error_response(
            decision.sqlstate or c.SQLSTATE_INSUFFICIENT_PRIVILEGE,
            decision.message or "statement blocked by pgwarden policy",
            detail=f"pgwarden rule: {ids}",
        )

    # --- server → proxy -----------------------------------------------------------------

    def server_data(self, data: bytes) -> None:
        if self.phase == "ready" and not self._passthrough:
            try:
                self._server_messages(data)
            except BackendProtocolError as exc:
                self._server_protocol_error(exc)
        elif self._passthrough:
            self._send_client(data, None)
        elif self.phase == "auth":
            try:
                self._auth_reply(data)
            except BackendProtocolError as exc:
                self._server_protocol_error(exc)

    def _server_protocol_error(self, exc: ProtocolError) -> None:
        self.server.state.counters.protocol_errors_server += 1
        self._end_error = str(exc)
        logger.error("session %s: upstream protocol error: %s", self.session_id, exc)
        self._fatal(
            c.SQLSTATE_PROTOCOL_VIOLATION,
            f"pgwarden: upstream protocol error: {exc}",
            reason="server_protocol_error",
        )

    def _auth_reply(self, data: bytes) -> None:
        self._sbuf += data
        buf = self._sbuf
        pos = 0
        out: list[bytes] = []
        while len(buf) - pos >= 5:
            kind = buf[pos]
            (length,) = _U32.unpack_from(buf, pos + 1)
            if length < 4 or length > c.SMALL_MESSAGE_LIMIT * 10:
                raise BackendProtocolError(f"invalid message length {length} during startup")
            end = pos + 1 + length
            if len(buf) < end:
                break
            body = bytes(buf[pos + 5 : end])
            raw = bytes(buf[pos:end])
            pos = end
            if kind == 82:  # 'R'
                code = m.auth_code(body)
                if code == 10 and self.client_tls != self.server.upstream_tls:
                    mechs = [x for x in m.sasl_mechanisms(body) if x != b"SCRAM-SHA-256-PLUS"]
                    raw = m.encode_sasl_mechanisms(mechs)
                out.append(raw)
            elif kind == 75:  # 'K'
                pid, secret = m.decode_backend_key(body)
                self._server_key = (pid, secret)
                self.backend_pid = pid
                self.cancel_key = self.server.mint_cancel_key(
                    self, 32 if self.protocol_minor else 4
                )
                out.append(m.backend_key_data(*self.cancel_key))
            elif kind == 83:  # 'S'
                self._parameter_status(body)
                out.append(raw)
            elif kind == 69:  # 'E'
                fields = m.decode_fields(body)
                out.append(raw)
                self._auth_failed(fields)
                break
            elif kind == 90:  # 'Z'
                if length != 5:
                    raise BackendProtocolError("invalid ReadyForQuery message")
                self.tx_status = body[0]
                out.append(raw)
                self._ready()
                pos_rest = bytes(buf[pos:])
                del buf[:]
                self._send_client(b"".join(out), None)
                if pos_rest:
                    self._server_messages(pos_rest)
                return
            elif kind == 118:  # 'v': we never ask the server for more than 3.0
                continue
            else:
                out.append(raw)
        del buf[:pos]
        if out:
            self._send_client(b"".join(out), None)

    def _auth_failed(self, fields: dict[str, str]) -> None:
        self.server.state.counters.auth_failures += 1
        event = self._event("auth_failure")
        event.update(sqlstate=fields.get("C", "XX000"), error=fields.get("M", ""))
        self._end_reason = "auth_failed"
        self.phase = "closing"
        self._send_client(b"", [event])
        self._close_client_after_release()

    def _ready(self) -> None:
        self.phase = "ready"
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self._rebuild_base()
        self._announced = True
        event = self._event("session_start")
        event.update(
            protocol_version=f"3.{self.protocol_minor}",
            backend_pid=self.backend_pid,
            tls=False,
            server_version=self._server_params.get("server_version", ""),
        )
        self.server.trail.submit(event)

    def _parameter_status(self, body: bytes) -> None:
        name, value = m.decode_parameter_status(body)
        self._server_params[name] = value
        if name == "standard_conforming_strings":
            self._settings = ParserSettings(value == "on", self._settings.client_encoding)
        elif name == "client_encoding":
            self._settings = ParserSettings(self._settings.standard_conforming_strings, value)
        elif name == "application_name" and value != self.identity.application_name:
            ident = self.identity
            self.identity = Identity(
                ident.user,
                ident.database,
                value,
                ident.client_addr,
                ident.client_port,
                ident.session_id,
            )
            if self.phase == "ready":
                self._rebuild_base()

    def _server_messages(self, data: bytes) -> None:
        """Scan server bytes: forward them, acting only on the messages that matter."""
        if self._s_stream_left:
            take = min(self._s_stream_left, len(data))
            self._s_stream_left -= take
            self._send_client(data[:take], None)
            data = data[take:]
            if not data:
                return
        if self._sbuf:
            self._sbuf += data
            buf: bytes = bytes(self._sbuf)
            self._sbuf.clear()
        else:
            buf = data
        end = len(buf)
        pos = 0
        start = 0  # first byte not yet copied to ``pieces``
        pieces: list[bytes] | None = None
        watched = _WATCHED
        unpack = _U32.unpack_from
        now_ns = 0
        rows = 0  # DataRows seen since the last watched message
        pending = self._pending
        while end - pos >= 5:
            kind = buf[pos]
            (length,) = unpack(buf, pos + 1)
            total = length + 1
            if kind == 68:  # DataRow: the bulk of most replies; count it, pass it through
                if end - pos < total:
                    break
                rows += 1
                pos += total
                continue
            if length < 4:
                raise BackendProtocolError(f"invalid message length {length}")
            if kind not in watched or (
                kind == 84 and not (pending and pending[0].kind in _DESCRIBES)
            ):
                # Unwatched, or a RowDescription that starts a result rather than answering
                # a Describe.
                if end - pos < total:
                    break
                pos += total
                continue
            if end - pos < total:
                if length > c.LARGE_MESSAGE_LIMIT:
                    raise BackendProtocolError(f"message of {length} bytes is too large")
                break
            if not now_ns:
                now_ns = time.perf_counter_ns()
            if rows:
                self._row_count += rows
                rows = 0
            body = buf[pos + 5 : pos + total]
            result = self._server_message(kind, body, now_ns)
            if result is not None:
                # Swallow (b"") or replace this message.
                if pieces is None:
                    pieces = []
                pieces.append(buf[start:pos])
                pieces.append(result)
                start = pos + total
            pos += total
        self._row_count += rows
        # Whatever stays incomplete: stream big passthrough messages, buffer the rest.
        rest = end - pos
        stream_now = 0
        if rest >= 5 and buf[pos] in b"Dd" and (pos + 1 + unpack(buf, pos + 1)[0]) - end > 65536:
            stream_now = rest
            self._s_stream_left = unpack(buf, pos + 1)[0] + 1 - rest
        elif rest:
            self._sbuf += buf[pos:]
        complete_end = pos + stream_now
        if pieces is None:
            out = buf if complete_end == end else buf[:complete_end]
        else:
            pieces.append(buf[start:complete_end])
            out = b"".join(pieces)
        events = self._emitted
        if events:
            self._emitted = []
        if out or events:
            self._send_client(out, events)
        if self._client_done and not self._pending and self.phase == "ready":
            self._end_after_client_left()

    def _server_message(self, kind: int, body: bytes, now_ns: int) -> bytes | None:
        """React to one watched server message. Returns None to forward it unchanged, or the
        bytes to send in its place (b"" to swallow it)."""
        pending = self._pending
        head = pending[0] if pending else None
        while head is not None and head.kind == K_COPY_END:
            pending.popleft()
            head = pending[0] if pending else None
        if kind == 67 or kind == 73:  # 'C' CommandComplete / 'I' EmptyQueryResponse
            tag = m.decode_command_tag(body) if kind == 67 else ""
            if head is None:
                raise BackendProtocolError("CommandComplete with no statement in flight")
            self._copy_in = False
            if head.kind == K_QUERY:
                self._complete_query_statement(head, tag, None, now_ns)
            elif head.kind == K_EXECUTE:
                pending.popleft()
                self._complete_execute(head, tag, None, now_ns)
            else:
                raise BackendProtocolError("CommandComplete does not answer the request in flight")
            return None
        if kind == 90:  # 'Z'
            if len(body) != 1 or body[0] not in b"ITE":
                raise BackendProtocolError("invalid ReadyForQuery message")
            self.tx_status = body[0]
            self._copy_in = False
            while pending:
                entry = pending.popleft()
                if entry.kind in (K_SYNC, K_QUERY):
                    break
            if self.tx_status == c.TX_IDLE and self._portals:
                # Portals die with their transaction; a suspended one ends as a statement here.
                for portal in self._portals.values():
                    if portal.suspended:
                        self._emitted.append(self._portal_event(portal, now_ns))
                self._portals.clear()
            self._flush_tx_status()
            return None
        if kind == 69:  # 'E'
            return self._on_server_error(head, body, now_ns)
        if kind == 115:  # 's' PortalSuspended
            if head is None or head.kind != K_EXECUTE:
                raise BackendProtocolError("PortalSuspended does not answer an Execute")
            pending.popleft()
            info = self._portals.get(head.portal.encode())
            if info is not None:
                info.rows += self._row_count
                if not info.suspended:
                    info.suspended = True
                    info.started_ns = head.started_ns
                    info.started_wall = head.started_wall
            self._row_count = 0
            return None
        if kind == 71:  # 'G' CopyInResponse: the server now ignores Sync and Flush
            self._copy_in = True
            self._drop_syncs_until_copy_end()
            return None
        if kind == 87:  # 'W' CopyBothResponse: replication stream, relay blindly
            self._passthrough = True
            return None
        if kind == 83:  # 'S'
            self._parameter_status(body)
            return None
        if kind in b"123":  # ParseComplete, BindComplete, CloseComplete
            expected = {49: K_PARSE, 50: K_BIND, 51: K_CLOSE}[kind]
            if head is None or head.kind != expected:
                raise BackendProtocolError(f"unexpected {chr(kind)!r} message from server")
            pending.popleft()
            return None
        if kind == 116:  # 't' ParameterDescription
            if head is None or head.kind != K_DESCRIBE_STMT:
                raise BackendProtocolError("unexpected ParameterDescription")
            head.stage = 1
            return None
        if kind == 110 or kind == 84:  # NoData / RowDescription (answers a Describe)
            if head is not None and head.kind in (K_DESCRIBE_STMT, K_DESCRIBE_PORTAL):
                pending.popleft()
            return None
        if kind == 86:  # 'V' FunctionCallResponse
            if head is None or head.kind != K_FUNCTION:
                raise BackendProtocolError("unexpected FunctionCallResponse")
            pending.popleft()
            self._complete_execute(head, "", None, now_ns, protocol="function_call")
            return None
        if kind == 72:  # 'H' CopyOutResponse
            return None
        if kind in b"KRv":
            raise BackendProtocolError(f"unexpected {chr(kind)!r} message after startup")
        return None

    def _on_server_error(self, head: Pending | None, body: bytes, now_ns: int) -> bytes | None:
        fields = m.decode_fields(body)
        severity = fields.get("V") or fields.get("S") or "ERROR"
        if severity in ("FATAL", "PANIC"):
            self._end_reason = "server_fatal"
        if head is None:
            return None  # unsolicited (e.g. FATAL on termination): relay
        self._copy_in = False
        self._ignore_syncs_in_copy = False
        replacement: bytes | None = None
        if head.block is not None:
            replacement = self._policy_error(head.block)
            self._emitted.append(self._refused_event(head, now_ns, head.block))
            fields = {}
        if head.kind == K_QUERY:
            if head.block is None:
                self._complete_query_statement(head, "", fields, now_ns)
            head.index = 1 << 30  # the rest of the string is not executed
            return replacement
        if head.kind in (K_SYNC,):
            return replacement
        # Extended protocol: the server now discards everything up to Sync.
        pending = self._pending
        entry = pending.popleft()
        discarded = []
        while pending and pending[0].kind != K_SYNC:
            discarded.append(pending.popleft())
        if entry.block is None:
            failed = self._failed_statement(entry, discarded)
            if failed is not None:
                protocol = "function_call" if failed.kind == K_FUNCTION else "extended"
                self._complete_execute(failed, "", fields, now_ns, protocol=protocol)
        return replacement

    @staticmethod
    def _failed_statement(entry: Pending, discarded: list[Pending]) -> Pending | None:
        """Which statement an extended-protocol error belongs to. An Execute or FunctionCall
        failed itself. A Parse or Bind that fails (syntax error, bad parameter, a constant
        folded at Bind) takes down the Execute queued behind it, which is the statement the
        client meant to run; with no Execute behind it, the failed Parse/Bind is recorded."""
        if entry.kind in (K_EXECUTE, K_FUNCTION):
            return entry
        if entry.kind not in (K_PARSE, K_BIND):
            return None
        for later in discarded:
            if later.kind == K_EXECUTE:
                return later
        return entry if entry.tracked is not None else None

    def _drop_syncs_until_copy_end(self) -> None:
        pending = self._pending
        kept: list[Pending] = []
        found_end = False
        # The head is the Query/Execute that started the copy; look at what follows it.
        items = list(pending)
        for i, entry in enumerate(items):
            if i == 0:
                kept.append(entry)
                continue
            if found_end:
                kept.append(entry)
            elif entry.kind == K_COPY_END:
                found_end = True
            elif entry.kind == K_SYNC:
                continue  # ignored by the server during COPY IN
            else:
                kept.append(entry)
        if not found_end:
            self._ignore_syncs_in_copy = True
        pending.clear()
        pending.extend(kept)

    # --- audit events -------------------------------------------------------------------

    def _rebuild_base(self) -> None:
        ident = self.identity
        self._base = {
            "v": 1,
            "proxy_id": self.server.proxy_id,
            "session_id": self.session_id,
            "user": ident.user,
            "database": ident.database,
            "application_name": ident.application_name,
            "client_addr": ident.client_addr,
            "client_port": ident.client_port,
        }

    def _event(self, kind: str, ts: float | None = None) -> dict[str, Any]:
        if not self._base:
            self._rebuild_base()
        event = self._base.copy()
        event["type"] = kind
        event["ts"] = _iso(ts if ts is not None else time.time())
        return event

    def _complete_query_statement(
        self, entry: Pending, tag: str, error: dict[str, str] | None, now_ns: int
    ) -> None:
        tracked = entry.tracked
        stmt_facts: StatementFacts | None = None
        text = tracked.text if tracked else ""
        if tracked is not None and tracked.facts is not None:
            statements = tracked.facts.statements
            if entry.index < len(statements):
                stmt_facts = statements[entry.index]
                text = stmt_facts.text
        event = self._statement_event(
            text,
            stmt_facts,
            tracked.decision if tracked else None,
            "simple",
            "",
            "",
            entry.started_wall,
            entry.started_ns,
            now_ns,
            tag,
            error,
            None,
            self._row_count,
        )
        self._emitted.append(event)
        entry.index += 1
        # The next statement of the string starts now.
        elapsed = (now_ns - entry.started_ns) / 1e9
        entry.started_wall += elapsed
        entry.started_ns = now_ns
        self._row_count = 0

    def _complete_execute(
        self,
        entry: Pending,
        tag: str,
        error: dict[str, str] | None,
        now_ns: int,
        protocol: str = "extended",
    ) -> None:
        tracked = entry.tracked
        rows = self._row_count
        info = self._portals.get(entry.portal.encode()) if entry.kind == K_EXECUTE else None
        started_ns, started_wall = entry.started_ns, entry.started_wall
        tag_rows: int | None = None
        if info is not None and info.suspended:
            # The last Execute of a suspended portal: one statement from its first Execute.
            rows += info.rows
            tag_rows = rows
            started_ns, started_wall = info.started_ns, info.started_wall
            info.rows = 0
            info.suspended = False
        stmt_facts = tracked.stmt if tracked else None
        event = self._statement_event(
            stmt_facts.text if stmt_facts else (tracked.text if tracked else ""),
            stmt_facts,
            tracked.decision if tracked else None,
            protocol,
            tracked.name if tracked else "",
            entry.portal,
            started_wall,
            started_ns,
            now_ns,
            tag,
            error,
            tag_rows,
            rows,
            entry.params,
        )
        self._emitted.append(event)
        self._row_count = 0

    def _portal_event(self, portal: Portal, now_ns: int) -> dict[str, Any]:
        """The event of a suspended portal that ends without completing (closed, replaced,
        or destroyed with its transaction): the rows the client fetched, no command tag."""
        tracked = portal.tracked
        stmt_facts = tracked.stmt if tracked else None
        portal.suspended = False
        event = self._statement_event(
            stmt_facts.text if stmt_facts else (tracked.text if tracked else ""),
            stmt_facts,
            tracked.decision if tracked else None,
            "extended",
            tracked.name if tracked else "",
            portal.name.decode("utf-8", "replace"),
            portal.started_wall,
            portal.started_ns,
            now_ns,
            "",
            None,
            portal.rows,
            portal.rows,
            portal.params,
        )
        event["suspended"] = True  # no CommandComplete: the client stopped fetching
        return event

    def _abandon_portal(self, portal: Portal | None) -> None:
        """The client closes or rebinds a suspended portal: its statement ends now."""
        if portal is not None and portal.suspended:
            self._send_client(b"", [self._portal_event(portal, time.perf_counter_ns())])

    def _statement_event(
        self,
        text: str,
        stmt: StatementFacts | None,
        decision: Decision | None,
        protocol: str,
        statement_name: str,
        portal: str,
        started_wall: float,
        started_ns: int,
        now_ns: int,
        tag: str,
        error: dict[str, str] | None,
        rows_override: int | None,
        counted_rows: int,
        params: list[Any] | None = None,
    ) -> dict[str, Any]:
        self.statements += 1
        event = self._event("query", started_wall)
        gate = self.server.gate
        rows: int | None = None
        if error is None:
            rows = rows_override if rows_override is not None else m.rows_from_tag(tag)
        event.update(
            statement=gate.audit_text(text, stmt),
            protocol=protocol,
            statement_name=statement_name or None,
            portal=portal or None,
            duration_ms=round((now_ns - started_ns) / 1e6, 3),
            command_tag=tag or None,
            rows=rows,
            sqlstate=(error.get("C") or "XX000") if error is not None else None,
            error=error.get("M", "") if error is not None else None,
            tx_status=None,
            backend_pid=self.backend_pid,
        )
        gate.add_facts(event, stmt, decision)
        if params is not None:
            event["params"] = params
        return event

    def _refused_event(self, entry: Pending, now_ns: int, refusal: Decision) -> dict[str, Any]:
        """The one event of a message the proxy refused (nothing of it ran): the statement's
        own text, or the whole text when the message held several statements."""
        tracked = entry.tracked
        facts = tracked.facts if tracked else None
        stmt = facts.statements[0] if facts is not None and facts.statements else None
        protocol = {K_QUERY: "simple", K_FUNCTION: "function_call"}.get(entry.kind, "extended")
        single = facts is not None and len(facts.statements) == 1
        event = self._statement_event(
            stmt.text if single and stmt is not None else (tracked.text if tracked else ""),
            stmt,
            refusal,
            protocol,
            tracked.name if tracked and entry.kind != K_QUERY else "",
            entry.portal,
            entry.started_wall or time.time(),
            entry.started_ns or now_ns,
            now_ns,
            "",
            {
                "C": refusal.sqlstate or c.SQLSTATE_INSUFFICIENT_PRIVILEGE,
                "M": refusal.message or "statement blocked by pgwarden policy",
            },
            None,
            0,
        )
        if not single:
            event["command"] = event["class"] = event["fingerprint"] = None
        return event

    def _flush_tx_status(self) -> None:
        """Events completed before this ReadyForQuery get its transaction status."""
        status = chr(self.tx_status)
        for event in self._emitted:
            if event["tx_status"] is None:
                event["tx_status"] = status

    # --- proxy → client -----------------------------------------------------------------

    def _send_client(self, data: bytes, events: list[dict[str, Any]] | None) -> None:
        """Write to the client, but only after ``events`` (and any earlier held data's events)
        have reached the audit trail."""
        client = self.client
        if events:
            trail = self.server.trail
            status = chr(self.tx_status)
            for event in events:
                if event.get("type") == "query" and event.get("tx_status") is None:
                    event["tx_status"] = status
                trail.submit(event)
        elif not self._held:
            if data and client is not None and not client.is_closing():
                self.bytes_to_client += len(data)
                client.write(data)
            return
        if client is None:
            return
        self._held.append(data)
        self._held_marker += 1
        marker = self._held_marker
        self.server.trail.when_written(lambda: self._release(marker))

    def _release(self, marker: int) -> None:
        count = marker - self._released
        if count <= 0:
            return
        self._released = marker
        chunk = b"".join(self._held[:count])
        del self._held[:count]
        if chunk and self.client is not None and not self.client.is_closing():
            self.bytes_to_client += len(chunk)
            self.client.write(chunk)


def client_protocol_factory(server: ProxyServer) -> Callable[[], asyncio.Protocol]:
    def factory() -> asyncio.Protocol:
        return _Side(Session(server), True)

    return factory
