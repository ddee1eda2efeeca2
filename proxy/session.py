"""One client connection: the asyncio adapter over the sans-IO relay pieces.

* :mod:`proxy.relay.handshake` — startup, encryption requests, authentication relay;
* :mod:`proxy.wire.backend` — server→client framing;
* :mod:`proxy.relay.core` — requests, owed replies, enforcement, audit completions;
* :mod:`proxy.relay.flow` — back-pressure by counted reasons;
* :mod:`proxy.audit.events` — the audit records.

This module owns only I/O: transports, timers, and holding client bytes until the audit
events they depend on have reached the trail (no client ever sees a result that is not in
the audit log).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

from proxy.approvals.broker import Refusal
from proxy.approvals.hold import Statement as HeldStatement
from proxy.approvals.hold import hold, ticket
from proxy.audit.events import SessionEvents
from proxy.auth.scram_client import ScramClient
from proxy.errors import AuthenticationError, FrontendProtocolError, ProtocolError, UpstreamError
from proxy.identity import Identity
from proxy.policy.decision import Decision
from proxy.relay.core import AnalysisRequest, RelayCore, ReviewRequest, ReviewVerdict
from proxy.relay.flow import Pause, ReadGate
from proxy.relay.handshake import AuthRelay, AuthStep, Handshake, Login, Phase, StartupEvent
from proxy.relay.holdback import HeldOutput
from proxy.relay.localauth import MODES as LOCAL_AUTH_MODES
from proxy.relay.localauth import LocalAuth
from proxy.relay.services import SessionHost
from proxy.relay.settings import ParserSettingsTracker
from proxy.tls import clientleg
from proxy.tls.contexts import TLSContexts
from proxy.tls.peer import TLSFacts
from proxy.wire import constants as c
from proxy.wire import messages as m
from proxy.wire.backend import BackendScanner

logger = logging.getLogger("pgwarden.session")

_BUSY = ("active", "copy")


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
        try:
            if self.is_client:
                self.session.client_data(data)
            else:
                self.session.server_data(data)
        except Exception:
            # A bug must cost this one session, never the process or another client.
            logger.exception("session %s: internal error", self.session.session_id)
            self.session.fatal(
                c.SQLSTATE_INTERNAL_ERROR, "pgwarden internal error", reason="internal_error"
            )

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
        self.session.peer_full(self.is_client, True)

    def resume_writing(self) -> None:
        self.session.peer_full(self.is_client, False)


class Session:
    """The relay for one client connection."""

    def __init__(self, server: SessionHost, contexts: TLSContexts | None = None) -> None:
        self.server = server
        self.cfg = server.cfg
        # One generation of certificates for the whole session: a reload changes what new
        # connections get, never a running one.
        self.contexts = contexts if contexts is not None else server.tls.current
        self.session_id = secrets.token_hex(8)
        self.identity = Identity(user="", database="", session_id=self.session_id)
        self.started_at = time.time()
        self._started_ns = time.perf_counter_ns()
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.handshake = Handshake(tls_offered=self.contexts.client is not None)
        self.login: Login | None = None
        self.backend_pid: int | None = None
        self.client_tls = False  # the client leg is encrypted
        self._secured: clientleg.SecuredClient | None = None
        self._tls_direct = False  # TLS from the first byte (sslnegotiation=direct)
        self._held = bytearray()  # client bytes that arrived during the TLS upgrade
        self._local: LocalAuth | None = None  # auth.mode proxy/cert: pgwarden authenticates
        self.upstream_tls: TLSFacts | None = None  # the server leg's TLS, None: plaintext
        self.upstream_cert: bytes | None = None  # the server's certificate (DER)
        self._auth: AuthRelay | None = None
        self._analysing = False
        self._looking_up = False
        self._review_task: asyncio.Task[None] | None = None
        self._settings = ParserSettingsTracker()
        self._events = SessionEvents(server.proxy_id, server.gate, self.identity)
        self.core: RelayCore | None = None
        self._scanner = BackendScanner(self._server_message)
        self._client_gate: ReadGate | None = None
        self._server_gate: ReadGate | None = None
        self._server_params: dict[str, str] = {}
        self._out = HeldOutput(server.trail, self._write_client, self._events.before_submit)
        self._chunk_events: list[dict[str, Any]] = []
        self.bytes_from_client = 0
        self._end_reason = ""
        self._end_error = ""  # why the session failed, for session_end
        self._login_timer: asyncio.TimerHandle | None = None
        self._client_done = False  # the client closed or half-closed its side
        self._announced = False  # session_start written: a session_end must follow

    @property
    def phase(self) -> Phase:
        return self.handshake.phase

    @phase.setter
    def phase(self, value: Phase) -> None:
        self.handshake.phase = value

    # --- SessionView (admin API) ------------------------------------------------------

    @property
    def state(self) -> str:
        if self.phase is not Phase.READY or self.core is None:
            return self.phase.value
        return self.core.activity

    @property
    def current_statement(self) -> str | None:
        text = self.core.current_text if self.core is not None else None
        return self.server.gate.display_text(text) if text is not None else None

    @property
    def statement_started(self) -> float | None:
        return self.core.current_started if self.core is not None else None

    async def cancel(self) -> bool:
        if self._review_task is not None:
            self._review_task.cancel()  # withdraw the approval request; answer 57014
            return True
        key = self.handshake.server_key
        if self.core is None or not self.core.queue.in_flight or key is None:
            return False
        await self.server.forward_cancel(*key)
        return True

    def terminate(self, reason: str) -> None:
        self.fatal(
            c.SQLSTATE_ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
            reason=reason,
        )

    @property
    def statements(self) -> int:
        return self._events.statements

    # --- lifecycle ----------------------------------------------------------------------

    def client_connected(self, transport: asyncio.Transport) -> None:
        self.client = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            addr, port = str(peer[0]), int(peer[1])
        else:
            addr, port = "unix", None
        self._set_identity(Identity("", "", "", addr, port, self.session_id))
        self._client_gate = ReadGate(transport.pause_reading, transport.resume_reading)
        self._login_timer = self.server.call_later(
            self.cfg["limits.login_timeout"], self._login_timeout
        )
        self.server.session_opened(self)
        if self.phase is Phase.STARTUP and transport.get_extra_info("ssl_object") is not None:
            # Direct TLS: the listener ran the handshake before the connection was ours.
            try:
                self._tls_up(clientleg.secured(transport, self.contexts, direct=True))
            except clientleg.ClientTLSRefused as exc:
                logger.info("session %s: direct TLS refused: %s", self.session_id, exc)
                self._close_silently("tls_refused")
                return
            self._tls_direct = True

    def _tls_up(self, secured: clientleg.SecuredClient) -> None:
        """The client leg is TLS from now on: every write goes to the secured transport."""
        self._secured = secured
        self.client = secured.transport
        self.client_tls = True
        self.handshake.tls_offered = False  # a second SSLRequest gets 'N', as from PostgreSQL
        self._client_gate = ReadGate(
            secured.transport.pause_reading, secured.transport.resume_reading
        )

    def _set_identity(self, identity: Identity) -> None:
        self.identity = identity
        self._events.set_identity(identity)
        if self.core is not None:
            self.core.identity = identity

    def _login_timeout(self) -> None:
        if self.phase in (
            Phase.STARTUP,
            Phase.TLS_UPGRADE,
            Phase.LOGIN,
            Phase.CONNECTING,
            Phase.AUTH,
        ):
            logger.warning(
                "session %s: login timeout from %s", self.session_id, self.identity.client_addr
            )
            self.fatal(
                c.SQLSTATE_PROTOCOL_VIOLATION,
                "canceling authentication due to timeout",
                reason="login_timeout",
            )

    def client_eof(self) -> bool:
        """The client will send nothing more. Keep the socket open for the replies still owed
        (True) or let it close now (False)."""
        self._client_done = True
        if self.phase is not Phase.READY or self.upstream is None or self.core is None:
            return False
        if self.core.queue.in_flight:
            return True  # the session ends when the last reply has been relayed
        if self._out.holding:
            self._end_after_client_left()  # replies are only waiting for their audit write
            return True
        return False

    def client_lost(self, exc: Exception | None) -> None:
        if self.phase is Phase.CLOSED:
            return
        self._client_done = True
        if not self._end_reason:
            self._end_reason = "client_disconnected"
        core = self.core
        if (
            self.phase is Phase.READY
            and core is not None
            and core.queue.in_flight
            and self.upstream is not None
        ):
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
        if self.phase is Phase.CLOSED:
            return
        in_flight = self.core is not None and self.core.queue.in_flight
        if (
            self._end_reason not in ("client_terminated", "server_fatal")
            and self.phase is not Phase.CLOSING
        ):
            logger.warning(
                "session %s: upstream %s closed the connection (%s)%s",
                self.session_id,
                self.cfg.upstream,
                exc or "end of stream",
                " with replies outstanding"
                if in_flight
                else (" in the middle of a message" if self._scanner.buffered else ""),
            )
        if not self._end_reason:
            self._end_reason = "server_closed"
        if self.phase in (Phase.CONNECTING, Phase.AUTH) and not self._end_reason.startswith("auth"):
            self._end_reason = "server_closed_during_startup"
        self._close_client_after_release()

    def _close_client_after_release(self) -> None:
        def close() -> None:
            if self.client is not None:
                self.client.close()
            self._finish()

        self._out.then(close)

    def _finish(self) -> None:
        if self.phase is Phase.CLOSED:
            return
        was_ready = self._announced
        self.phase = Phase.CLOSED
        if self._login_timer is not None:
            self._login_timer.cancel()
        if self.upstream is not None:
            self.upstream.close()
        if was_ready:
            trail = self.server.trail
            if self.core is not None:
                self.core.queue.end_suspended(time.perf_counter_ns())
                client_left = self._end_reason not in ("server_closed", "server_fatal")
                for event in self.core.end_connection(client_left):
                    if event["type"] == "transaction":
                        self._events.before_submit(event)
                    trail.submit(event)
            fields: dict[str, Any] = {
                "duration_ms": round((time.perf_counter_ns() - self._started_ns) / 1e6, 3),
                "statements": self.statements,
                "bytes_from_client": self.bytes_from_client,
                "bytes_to_client": self._out.sent,
                "reason": self._end_reason or "closed",
            }
            if self._end_error:
                fields["error"] = self._end_error
            trail.submit(self._events.event("session_end", time.time(), **fields))
        elif self._end_reason != "cancel_request":
            self._record_attempt()
        self.server.session_closed(self)

    def _record_attempt(self) -> None:
        """A connection that never became a session still leaves a record (rate-limited per
        client address, so a port scan cannot flood the trail)."""
        now = time.time()
        allowed, suppressed = self.server.attempts.admit(self.identity.client_addr, now)
        if not allowed:
            return
        reason = self._end_reason or "client_disconnected"
        if (
            reason == "client_disconnected"
            and self.login is None
            and self.handshake.encryption_requests
        ):
            reason = "encryption_refused"  # asked for TLS/GSSAPI, got 'N', and left
        fields: dict[str, Any] = {
            "duration_ms": round((time.perf_counter_ns() - self._started_ns) / 1e6, 3),
            "statements": 0,
            "bytes_from_client": self.bytes_from_client,
            "bytes_to_client": self._out.sent,
            "reason": reason,
            "started": False,
        }
        if self._end_error:
            fields["error"] = self._end_error
        if suppressed:
            fields["suppressed_before"] = suppressed
        self.server.trail.submit(self._events.event("session_end", now, **fields))

    def fatal(
        self,
        sqlstate: str,
        text: str,
        *,
        reason: str,
        detail: str = "",
        hint: str = "",
        events: list[dict[str, Any]] | None = None,
    ) -> None:
        """Tell the client why, in a well-formed FATAL, and close both legs."""
        if self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.TLS_UPGRADE:
            # Mid-handshake there is no channel to write a message on (PostgreSQL, too,
            # closes without a word).
            for event in events or ():
                self.server.trail.submit(event)
            self._close_silently(self._end_reason or reason)
            return
        self._end_reason = self._end_reason or reason
        self.phase = Phase.CLOSING
        if self.upstream is not None:
            self.upstream.abort()
        error = m.error_response(sqlstate, text, severity="FATAL", detail=detail, hint=hint)
        self.send(error, events)
        self._close_client_after_release()

    def _close_silently(self, reason: str) -> None:
        self._end_reason = reason
        if self.client is not None:
            self.client.close()
        self._finish()

    # --- flow control -------------------------------------------------------------------

    def peer_full(self, client_side: bool, full: bool) -> None:
        # The client's send buffer is full: stop reading from the server (and vice versa).
        gate = self._server_gate if client_side else self._client_gate
        reason = Pause.CLIENT_FULL if client_side else Pause.UPSTREAM_FULL
        if gate is not None:
            (gate.hold if full else gate.release)(reason)

    def _wait_for_audit_capacity(self) -> None:
        gate = self._client_gate
        if gate is None or Pause.AUDIT_FULL in gate.reasons:
            return
        gate.hold(Pause.AUDIT_FULL)

        async def wait() -> None:
            await self.server.trail.wait_not_full()
            if self.phase is not Phase.CLOSED:
                gate.release(Pause.AUDIT_FULL)

        self.server.spawn(wait())

    # --- client → proxy -----------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        self.bytes_from_client += len(data)
        if self.phase is Phase.TLS_UPGRADE:
            self._held += data  # decrypted before upgrade_client returned: processed after
            return
        self._client_bytes(data)

    def _client_bytes(self, data: bytes) -> None:
        try:
            phase = self.phase
            core = self.core
            if phase is Phase.READY and core is not None:
                upstream = self.upstream
                if upstream is None:
                    return
                out = core.client_messages(data, time.perf_counter_ns(), time.time())
                if out:
                    upstream.write(out)
                if core.terminated:
                    self._end_reason = "client_terminated"
                if core.stalled:
                    self._stalled(core)
                if self.server.trail.full and not (
                    # Under fail_closed new statements are refused, not queued: keep reading.
                    self.cfg["audit.fail_closed"] and not self.server.audit_accepting()
                ):
                    self._wait_for_audit_capacity()
            elif phase is Phase.STARTUP:
                self._startup_data(data)
            elif phase is Phase.LOGIN:
                self._login_data(data)
            elif (phase is Phase.CONNECTING or phase is Phase.AUTH) and self._local is not None:
                # pgwarden logs in upstream itself: the client has nothing to say meanwhile.
                for kind, _body, _raw in self.handshake.auth_messages(data):
                    if kind != ord("X"):
                        raise FrontendProtocolError("unexpected message during authentication")
                    self._close_silently("client_terminated")
                    return
            elif phase is Phase.CONNECTING or phase is Phase.AUTH:
                out = self.handshake.auth_bytes(data)
                if out and self.upstream is not None:
                    self.upstream.write(out)
                elif out:
                    self.handshake.defer(out)
        except FrontendProtocolError as exc:
            self.server.counters.protocol_errors_client += 1
            self._end_error = str(exc)
            logger.warning(
                "session %s: client protocol error from %s: %s",
                self.session_id,
                self.identity.client_addr,
                exc,
            )
            self.fatal(exc.sqlstate, str(exc), reason="client_protocol_error")

    def _startup_data(self, data: bytes) -> None:
        result = self.handshake.startup_bytes(data)
        if result.reply and self.client is not None:
            self.client.write(result.reply)
        if result.event is StartupEvent.BAD_CANCEL:
            # Like PostgreSQL, never write on a cancel socket, even a malformed one.
            self._close_silently("bad_cancel_request")
        elif result.event is StartupEvent.INVALID_LENGTH:
            self.server.counters.protocol_errors_client += 1
            self._close_silently("invalid_startup_packet")
        elif result.event is StartupEvent.CANCEL:
            assert result.cancel is not None
            self.server.spawn(self._forward_cancel_then_close(result.cancel))
        elif result.event is StartupEvent.LOGIN:
            assert result.login is not None
            self._begin_session(result.login)
        elif result.event is StartupEvent.TLS_UPGRADE:
            # In the step that wrote the 'S' (the handshake checked nothing followed the
            # SSLRequest): from here on the TLS engine reads, never the plaintext parser.
            assert self.client is not None
            self.client.pause_reading()
            self.server.spawn(self._upgrade_tls(self.client))

    async def _upgrade_tls(self, transport: asyncio.Transport) -> None:
        try:
            secured = await clientleg.upgrade_client(
                transport,
                transport.get_protocol(),
                self.contexts,
                handshake_timeout=self.cfg["limits.login_timeout"],
            )
        except clientleg.ClientTLSRefused as exc:
            if self.phase is not Phase.CLOSED:
                logger.info("session %s: %s", self.session_id, exc)
                self._close_silently("tls_handshake_failed")
            return
        if self.phase is not Phase.TLS_UPGRADE:  # closed (timeout, shutdown) meanwhile
            secured.transport.close()
            return
        self._tls_up(secured)
        self.handshake.phase = Phase.STARTUP
        held = bytes(self._held)
        self._held.clear()
        if held:
            self._client_bytes(held)

    async def _forward_cancel_then_close(self, request: Any) -> None:
        """Close the client's cancel socket only once the server acted on the forward, so
        "cancel done" means done (a driver's next statement must not be the one cancelled)."""
        outcome, target = "failed", None
        try:
            outcome, target = await self.server.route_cancel(request)
        finally:
            self._close_silently("cancel_request")
            now = time.time()
            allowed, suppressed = (
                (True, 0)
                if outcome == "forwarded"
                else self.server.attempts.admit(self.identity.client_addr, now)
            )
            if allowed:
                fields: dict[str, Any] = {"outcome": outcome, "target_session": target}
                if suppressed:
                    fields["suppressed_before"] = suppressed
                self.server.trail.submit(self._events.event("cancel", now, **fields))

    def _begin_session(self, login: Login) -> None:
        self.login = login
        ident = self.identity
        self._set_identity(
            Identity(
                login.user,
                login.database,
                login.application_name,
                ident.client_addr,
                ident.client_port,
                self.session_id,
            )
        )
        settings = self.contexts.settings.client
        secured = self._secured
        refusal = (
            clientleg.certificate_refusal(settings, secured.peer_cert, login.user)
            if secured is not None
            else clientleg.plaintext_refusal(
                settings, self.identity.client_addr or "", login.user, login.database
            )
        )
        if refusal is not None:
            self.server.counters.auth_failures += 1
            event = self._events.event(
                "auth_failure", time.time(), sqlstate=refusal.sqlstate, error=refusal.message
            )
            self.fatal(
                refusal.sqlstate,
                refusal.message,
                reason="tls_refused",
                hint=refusal.hint,
                events=[event],
            )
            return
        if login.replication and not self.cfg["allow_replication"]:
            self.fatal(
                c.SQLSTATE_INVALID_AUTHORIZATION,
                "replication connections are not allowed through pgwarden",
                reason="replication_refused",
                detail="Set allow_replication: true in the pgwarden config to permit them.",
            )
            return
        if not self._login_allowed(login):
            return
        mode = self.cfg["auth.mode"]
        if mode in LOCAL_AUTH_MODES:
            self._local_login(LocalAuth(mode, login))
            return
        self.server.spawn(self._connect_upstream(login.upstream_packet()))

    def _login_allowed(self, login: Login) -> bool:
        """The login rate limiter: past its failures, an address or user waits."""
        now = time.time()
        verdict = self.server.limiter.check(self.identity.client_addr, login.user, now)
        if verdict.allowed:
            return True
        self.server.counters.logins_throttled += 1
        wait = max(1, round(verdict.retry_after))
        event = self._events.event(
            "login_throttled",
            now,
            limited_by=verdict.limited_by.value,
            retry_after=round(verdict.retry_after, 3),
        )
        logger.warning(
            "session %s: login of %s from %s throttled (%s) for %.1fs",
            self.session_id,
            login.user,
            self.identity.client_addr,
            verdict.limited_by.value,
            verdict.retry_after,
        )
        self.fatal(
            c.SQLSTATE_INVALID_AUTHORIZATION,
            f"too many failed logins from this {verdict.limited_by.value}; try again in {wait} s",
            reason="login_throttled",
            events=[event],
        )
        return False

    def _login_failed(self, exc: AuthenticationError, reason: str = "auth_failed") -> None:
        """pgwarden refused the login itself (its own check, or its own upstream login)."""
        self.server.counters.auth_failures += 1
        if reason == "auth_failed":
            self.server.limiter.failed(self.identity.client_addr, self.identity.user, time.time())
        event = self._events.event(
            "auth_failure", time.time(), sqlstate=exc.sqlstate, error=str(exc)
        )
        self.fatal(exc.sqlstate, str(exc), reason=reason, detail=exc.detail, events=[event])

    def _local_login(self, local: LocalAuth) -> None:
        if self.handshake.take_early():
            raise FrontendProtocolError("unexpected message before the authentication request")
        self._local = local
        self.login = local.login
        try:
            greeting, done = local.start(
                self.server.users, self._secured, self.contexts.settings.client.identity
            )
        except AuthenticationError as exc:
            self._login_failed(exc)
            return
        if local.end_identity:
            self._set_identity(replace(self.identity, end_identity=local.end_identity))
        if greeting:
            self.send(greeting, None)
        if done:
            self.server.spawn(self._connect_upstream(local.login.upstream_packet()))
        else:
            self.phase = Phase.LOGIN

    def _login_data(self, data: bytes) -> None:
        local = self._local
        assert local is not None
        for kind, body, _raw in self.handshake.auth_messages(data):
            if kind == ord("X"):
                self._close_silently("client_terminated")
                return
            try:
                out, done = local.client_message(body)
            except AuthenticationError as exc:
                self._login_failed(exc)
                return
            self.send(out, None)
            if done:
                # The client proved its password; its AuthenticationOk waits for the server.
                self.server.limiter.succeeded(
                    self.identity.client_addr, local.login.user, time.time()
                )
                self.phase = Phase.CONNECTING
                self.server.spawn(self._connect_upstream(local.login.upstream_packet()))
                return

    async def _connect_upstream(self, packet: bytes) -> None:
        try:
            link = await self.server.connect_upstream(lambda: _Side(self, False), self.contexts)
        except UpstreamError as exc:
            logger.error("session %s: %s", self.session_id, exc)
            self.fatal(exc.sqlstate, str(exc), reason="upstream_unreachable")
            return
        self.upstream_connected(link.transport, packet, link.tls, link.server_certificate)

    def upstream_connected(
        self,
        transport: asyncio.Transport,
        packet: bytes,
        tls: TLSFacts | None = None,
        server_cert: bytes | None = None,
    ) -> None:
        """The server leg is open: send the startup packet and what the client sent since."""
        if self.phase is Phase.CLOSED or self.phase is Phase.CLOSING:
            transport.close()
            return
        self.upstream = transport
        self.upstream_tls = tls
        self.upstream_cert = server_cert
        self._server_gate = ReadGate(transport.pause_reading, transport.resume_reading)
        self.phase = Phase.AUTH
        local = self._local
        if local is not None:
            password = self._upstream_password(local.login)
            keys = local.keys
            client = (
                ScramClient(password=password, server_cert=server_cert)
                if password is not None
                else ScramClient(keys=keys, server_cert=server_cert)
                if keys is not None
                else None
            )
            self._auth = AuthRelay(
                local.login, upstream_login=client, local=True, password=password
            )
        elif self.login is not None:
            self._auth = AuthRelay(self.login)
        transport.write(packet + self.handshake.take_early())

    def _upstream_password(self, login: Login) -> str | None:
        """The auth.passfile password for pgwarden's own upstream login as ``login.user``."""
        passfile = self.server.passfile
        if passfile is None:
            return None
        upstream = self.cfg.upstream
        host = "localhost" if upstream.unix_path else upstream.host
        return passfile.password(host, upstream.port, login.database, login.user)

    # --- server → proxy -----------------------------------------------------------------

    def server_data(self, data: bytes) -> None:
        core = self.core
        if core is not None:
            core.server_chunk(time.perf_counter_ns())
        try:
            out = self._scanner.feed(data)
        except ProtocolError as exc:
            self._server_protocol_error(exc)
            return
        if core is None:
            core = self.core  # authentication ended inside this chunk
        events = self._chunk_events
        # Session events (start, auth failure) always come first; statement records gate the
        # client's bytes unless each is a refusal because the trail cannot write.
        wait = bool(events) or core is None
        if core is not None:
            events.extend(core.take_chunk_events())
            wait = wait or core.chunk_needs_audit
            if core.queue.passthrough:
                self._scanner.passthrough = True
        if events:
            self._chunk_events = []
        if out or events:
            self.send(out, events or None, wait=wait)
        if self.phase is Phase.CLOSING and self._end_reason == "auth_failed":
            # The server's error went out with this chunk; the connection ends after it.
            self._close_client_after_release()
            return
        if core is None or self.phase is not Phase.READY:
            return
        if core.queue.fatal:
            self._end_reason = "server_fatal"
        if core.stalled:
            self._resume(core)
        if self._client_done and not core.queue.in_flight:
            self._end_after_client_left()

    def _stalled(self, core: RelayCore) -> None:
        """Client messages wait in the core: stop reading more; analyse what it asks for."""
        if self._client_gate is not None:
            self._client_gate.hold(Pause.STALLED)
        request = core.analysis_wanted
        if request is not None and not self._analysing:
            self._analysing = True
            self.server.spawn(self._analyse(core, request))
        oid = core.function_wanted
        if oid is not None and not self._looking_up:
            self._looking_up = True
            self.server.spawn(self._look_up_function(core, oid))
        review = core.review_wanted
        if review is not None and self._review_task is None:
            self._review_task = asyncio.get_running_loop().create_task(
                self._hold_for_review(core, review)
            )

    async def _look_up_function(self, core: RelayCore, oid: int) -> None:
        try:
            info = await self.server.resolve_function(self.identity.database, oid)
        finally:
            self._looking_up = False
        if self.phase is Phase.READY:
            core.looked_up(info)
            self._resume(core)

    async def _hold_for_review(self, core: RelayCore, request: ReviewRequest) -> None:
        """A review rule holds the statement (and everything behind it) until people decide;
        the client is told, and reminded, with notices meanwhile (docs/approvals.md)."""
        spec = request.decision.review
        assert spec is not None
        broker = self.server.approvals
        held = HeldStatement(
            request.text, request.params, self.identity, request.audit_text, request.fingerprint
        )
        try:
            if spec.mode == "ticket":
                ticketed, refusal = ticket(broker, spec, held)
                verdict = _verdict(ticketed.id, refusal)
            else:
                outcome = await hold(broker, spec, held, lambda data: self.send(data, None))
                verdict = _verdict(outcome.request.id, outcome.refusal())
        except asyncio.CancelledError:
            # A CancelRequest while waiting: the request is withdrawn, and the statement ends
            # as a cancelled one would.
            text = "canceling statement due to user request"
            verdict = ReviewVerdict(
                False, "", c.SQLSTATE_QUERY_CANCELED, text, m.error_response("57014", text)
            )
        finally:
            self._review_task = None
        if self.phase is Phase.READY:
            core.reviewed(verdict)
            self._resume(core)

    async def _analyse(self, core: RelayCore, request: AnalysisRequest) -> None:
        try:
            facts = await self.server.analyse(request.sql, request.settings)
        finally:
            self._analysing = False
        if self.phase is Phase.READY:
            core.analysed(facts)
            self._resume(core)

    def _resume(self, core: RelayCore) -> None:
        up = core.resume(time.perf_counter_ns(), time.time())
        if up and self.upstream is not None:
            self.upstream.write(up)
        if core.stalled:
            self._stalled(core)
        elif self._client_gate is not None:
            self._client_gate.release(Pause.STALLED)

    def _server_message(self, kind: int, body: bytes, rows: int) -> bytes | None:
        core = self.core
        if core is not None:
            return core.on_server(kind, body, rows)
        return self._auth_message(kind, body)

    def _server_protocol_error(self, exc: ProtocolError) -> None:
        self.server.counters.protocol_errors_server += 1
        self._end_error = str(exc)
        logger.error("session %s: upstream protocol error: %s", self.session_id, exc)
        self.fatal(
            c.SQLSTATE_PROTOCOL_VIOLATION,
            f"pgwarden: upstream protocol error: {exc}",
            reason="server_protocol_error",
        )

    def _auth_message(self, kind: int, body: bytes) -> bytes | None:
        """A watched server message during authentication."""
        relay = self._auth
        if self.phase is not Phase.AUTH or relay is None:
            return b""  # the session is closing: nothing more for the client
        try:
            out, step = relay.on_message(kind, body)
        except AuthenticationError as exc:
            logger.error("session %s: upstream login failed: %s", self.session_id, exc)
            self._login_failed(exc, reason="upstream_login_failed")
            return b""
        if step is AuthStep.TO_SERVER:
            if self.upstream is not None:
                self.upstream.write(relay.to_server)
        elif step is AuthStep.BACKEND_KEY:
            assert relay.server_key is not None
            pid, secret = relay.server_key
            self.handshake.server_key = relay.server_key
            self.backend_pid = self._events.backend_pid = pid
            self.server.backend_started(self, pid, secret)
        elif step is AuthStep.PARAMETER:
            self._parameter_status(*relay.parameter)
        elif step is AuthStep.FAILED:
            self._auth_failed(relay.failure)
        elif step is AuthStep.READY:
            self._ready(relay.ready_status)
        return out

    def _auth_failed(self, fields: dict[str, str]) -> None:
        self.server.counters.auth_failures += 1
        if self._local is None and fields.get("C") == c.SQLSTATE_INVALID_PASSWORD:
            # The server refused the client's password. Its other refusals (pg_hba, the
            # channel-binding downgrade) guess nothing, so they do not count.
            self.server.limiter.failed(self.identity.client_addr, self.identity.user, time.time())
        event = self._events.event(
            "auth_failure",
            time.time(),
            sqlstate=fields.get("C", "XX000"),
            error=self.server.gate.audit_error(fields.get("M", ""), "", (), False),
        )
        self._end_reason = "auth_failed"
        self.phase = Phase.CLOSING
        self._chunk_events.append(event)

    def _ready(self, tx_status: int) -> None:
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        core = RelayCore(
            self.server.gate,
            self._events,
            self,
            max_message_size=self.cfg["limits.max_message_size"],
            parameters=self.cfg["audit.parameters"],
            audit_refusal=self._audit_refusal,
            settings=self._settings,
            on_parameter=self._parameter_status,
            offload_size=self.cfg["limits.analysis_offload_size"],
            max_analysis_size=self.cfg["limits.max_analysis_size"],
        )
        core.queue.tx_status = tx_status
        core.queue.exact_timings = self.cfg["audit.exact_timings"]
        core.catalog_lookups = bool(self.cfg["catalog.dsn"])
        core.server_major = _major(self._server_params.get("server_version", ""))
        self._settings.ready(tx_status)
        self.server.limiter.succeeded(self.identity.client_addr, self.identity.user, time.time())
        self.core = core
        self.phase = Phase.READY
        self._announced = True
        login = self.login
        self._chunk_events.append(
            self._events.event(
                "session_start",
                time.time(),
                protocol_version=f"3.{self._auth.protocol_minor if self._auth else 0}",
                backend_pid=self.backend_pid,
                tls=self.client_tls,
                client_tls=self._client_tls_facts(),
                auth_mode=self.cfg["auth.mode"],
                upstream_tls=self.upstream_tls.audit() if self.upstream_tls else None,
                server_version=self._server_params.get("server_version", ""),
                **({"role": login.role} if login is not None and login.role else {}),
            )
        )

    def _client_tls_facts(self) -> dict[str, Any] | None:
        if self._secured is None:
            return None
        return {**self._secured.facts.audit(), "direct": self._tls_direct}

    def _audit_refusal(self) -> Decision | None:
        if self.cfg["audit.fail_closed"] and not self.server.audit_accepting():
            return self.server.gate.audit_refusal()
        return None

    def _parameter_status(self, name: str, value: str) -> None:
        self._server_params[name] = value
        self._settings.reported(name, value)
        if name == "application_name" and value != self.identity.application_name:
            self._set_identity(replace(self.identity, application_name=value))

    # --- proxy → client -----------------------------------------------------------------

    def send(self, data: bytes, events: list[dict[str, Any]] | None, *, wait: bool = True) -> None:
        """ClientSink for the relay core: bytes go out once their events are in the trail."""
        self._out.send(data, events, wait=wait)

    def _write_client(self, data: bytes) -> None:
        client = self.client
        if client is not None and not client.is_closing():
            client.write(data)

    @property
    def bytes_to_client(self) -> int:
        return self._out.sent


def _verdict(request_id: str, refusal: Refusal | None) -> ReviewVerdict:
    """The relay's verdict from the approvals broker's answer (None: approved)."""
    if refusal is None:
        return ReviewVerdict(True, request_id)
    error = m.error_response(refusal.sqlstate, refusal.message, hint=refusal.hint)
    return ReviewVerdict(False, request_id, refusal.sqlstate, refusal.message, error)


def _major(version: str) -> int | None:
    head = version.split(".")[0].split()[0] if version else ""
    return int(head) if head.isdigit() else None


def client_protocol_factory(
    server: SessionHost,
) -> Callable[[TLSContexts | None], asyncio.Protocol]:
    """Protocols for client connections; ``contexts`` is the certificate generation a
    connection was accepted under (the SniffingListener passes it; else the current one)."""

    def factory(contexts: TLSContexts | None = None) -> asyncio.Protocol:
        return _Side(Session(server, contexts), True)

    return factory
