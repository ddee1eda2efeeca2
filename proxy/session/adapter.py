"""The relay of one client connection after login, on the loop.

This module owns only I/O: transports, back-pressure, the session's lifecycle, and holding
client bytes until the audit events they depend on have reached the trail (no client ever
sees a result that is not in the audit log). The logic is in :mod:`proxy.relay`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from proxy.audit.events import SessionEvents
from proxy.audit.record import Event
from proxy.errors import FrontendProtocolError, ProtocolError
from proxy.identity import Identity
from proxy.policy.decision import Decision
from proxy.relay.core import RelayCore, RelayOptions
from proxy.relay.flow import Pause, ReadGate
from proxy.relay.handshake import Handshake, Phase
from proxy.relay.holdback import HeldOutput
from proxy.relay.services import SessionHost
from proxy.relay.settings import ParserSettingsTracker
from proxy.session.login import LoginFlow
from proxy.session.sides import Side
from proxy.session.stalls import StallTasks
from proxy.tls.contexts import TLSContexts
from proxy.wire import constants as c
from proxy.wire import messages as m
from proxy.wire.backend import BackendScanner

logger = logging.getLogger("pgwarden.session")


class Session:
    """The relay for one client connection."""

    def __init__(self, server: SessionHost, contexts: TLSContexts | None = None) -> None:
        self.server = server
        self.cfg = server.cfg
        # read for every statement: a Config lookup is an interpreted call
        self._fail_closed: bool = bool(self.cfg["audit.fail_closed"])
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
        self.backend_pid: int | None = None
        self.server_params: dict[str, str] = {}
        self.events = SessionEvents(server.proxy_id, server.gate, self.identity)
        self.flow = LoginFlow(self)
        self.core: RelayCore | None = None
        self._settings = ParserSettingsTracker()
        self._stalls = StallTasks(self)
        self._scanner = BackendScanner(self._server_message)
        self._client_gate: ReadGate | None = None
        self._server_gate: ReadGate | None = None
        self._out = HeldOutput(server.trail, self._write_client, self.events.before_submit)
        self._chunk_events: list[Event] = []
        self.bytes_from_client = 0
        self.end_reason = ""
        self.end_error = ""  # why the session failed, for session_end
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
        if self._stalls.withdraw_review():
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
        return self.events.statements

    # --- what the login flow sets up ----------------------------------------------------

    def client_connected(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            addr, port = str(peer[0]), int(peer[1])
        else:
            addr, port = "unix", None
        self.set_identity(Identity("", "", "", addr, port, self.session_id))
        self.client_transport(transport)
        self.server.session_opened(self)
        self.flow.connected(transport)

    def client_transport(self, transport: asyncio.Transport) -> None:
        """Where the client's bytes come from and go to (the TLS layer after an upgrade)."""
        self.client = transport
        self._client_gate = ReadGate(transport.pause_reading, transport.resume_reading)

    def upstream_transport(self, transport: asyncio.Transport) -> None:
        self.upstream = transport
        self._server_gate = ReadGate(transport.pause_reading, transport.resume_reading)

    def set_identity(self, identity: Identity) -> None:
        self.identity = identity
        self.events.set_identity(identity)
        if self.core is not None:
            self.core.identity = identity

    def backend_started(self, pid: int) -> None:
        self.backend_pid = self.events.backend_pid = pid

    def queue_event(self, event: Event) -> None:
        """An event that goes out with the server bytes being relayed now."""
        self._chunk_events.append(event)

    def parameter_status(self, name: str, value: str) -> None:
        self.server_params[name] = value
        self._settings.reported(name, value)
        if name == "application_name" and value != self.identity.application_name:
            if self.phase is Phase.READY:
                ignored = self.flow.who.application_name_changed(self.identity, value)
                if ignored is not None:  # the identity stays the one fixed at login
                    self.queue_event(
                        self.events.event("identity_claim_ignored", time.time(), **ignored)
                    )
            self.set_identity(replace(self.identity, application_name=value))

    def ready(self, tx_status: int) -> None:
        """The server's first ReadyForQuery: the relay takes over."""
        options = RelayOptions.from_config(self.cfg)
        core = RelayCore(
            self.server.gate,
            self.events,
            self,
            options,
            audit_refusal=self._audit_refusal,
            settings=self._settings,
            on_parameter=self.parameter_status,
            tx_status=tx_status,
            server_version=self.server_params.get("server_version", ""),
        )
        core.scanner = self._scanner  # the row guard holds a statement's reply back in it
        self._scanner.hand_over(core.on_server)
        # Nothing runs unaudited: statements wait while the trail cannot accept records.
        core.watch_trail(
            self.server.trail, lambda: self._stalls.resume(core), write_ahead=options.write_ahead
        )
        self._settings.ready(tx_status)
        self.core = core
        self.phase = Phase.READY
        self._announced = True
        fields = self.flow.session_start()
        self.queue_event(
            self.events.event("session_start", time.time(), backend_pid=self.backend_pid, **fields)
        )

    def _audit_refusal(self) -> Decision | None:
        if self._fail_closed and not self.server.audit_accepting():
            return self.server.gate.audit_refusal()
        return None

    # --- lifecycle ----------------------------------------------------------------------

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
        if not self.end_reason:
            self.end_reason = "client_disconnected"
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
            self.end_reason not in ("client_terminated", "server_fatal")
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
        if not self.end_reason:
            self.end_reason = "server_closed"
        if self.phase in (Phase.CONNECTING, Phase.AUTH) and not self.end_reason.startswith("auth"):
            self.end_reason = "server_closed_during_startup"
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
        self.phase = Phase.CLOSED
        self.flow.done()
        if self.upstream is not None:
            self.upstream.close()
        trail = self.server.trail
        if self._announced:
            if self.core is not None:
                self.core.queue.end_suspended(time.perf_counter_ns())
                client_left = self.end_reason not in ("server_closed", "server_fatal")
                for event in self.core.end_connection(client_left):
                    if event["type"] == "transaction":
                        self.events.before_submit(event)
                    trail.submit(event)
            fields: dict[str, Any] | None = {
                "statements": self.statements,
                "reason": self.end_reason or "closed",
            }
        elif self.end_reason != "cancel_request":
            fields = self.flow.attempt_fields()
        else:
            fields = None
        if fields is not None:
            fields["duration_ms"] = round((time.perf_counter_ns() - self._started_ns) / 1e6, 3)
            fields.setdefault("statements", 0)
            fields["bytes_from_client"] = self.bytes_from_client
            fields["bytes_to_client"] = self._out.sent
            if self.end_error:
                fields["error"] = self.end_error
            trail.submit(self.events.event("session_end", time.time(), **fields))
        self.server.session_closed(self)

    def fatal(
        self,
        sqlstate: str,
        text: str,
        *,
        reason: str,
        detail: str = "",
        hint: str = "",
        events: list[Event] | None = None,
    ) -> None:
        """Tell the client why, in a well-formed FATAL, and close both legs."""
        if self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.TLS_UPGRADE:
            # Mid-handshake there is no channel to write a message on (PostgreSQL, too,
            # closes without a word).
            for event in events or ():
                self.server.trail.submit(event)
            self.close_silently(self.end_reason or reason)
            return
        self.end_reason = self.end_reason or reason
        self.phase = Phase.CLOSING
        if self.upstream is not None:
            self.upstream.abort()
        error = m.error_response(sqlstate, text, severity="FATAL", detail=detail, hint=hint)
        self.send(error, events)
        self._close_client_after_release()

    def close_silently(self, reason: str) -> None:
        self.end_reason = reason
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

    def hold_client(self, reason: Pause) -> None:
        if self._client_gate is not None:
            self._client_gate.hold(reason)

    def release_client(self, reason: Pause) -> None:
        if self._client_gate is not None:
            self._client_gate.release(reason)

    def _wait_for_audit_capacity(self) -> None:
        gate = self._client_gate
        if gate is None or gate.holds(Pause.AUDIT_FULL):
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
            self.flow.held += data  # decrypted before upgrade_client returned: processed after
            return
        self.client_bytes(data)

    def client_bytes(self, data: bytes) -> None:
        try:
            core = self.core
            if core is None or self.phase is not Phase.READY:
                self.flow.client_bytes(data)
                return
            upstream = self.upstream
            if upstream is None:
                return
            out = core.client_messages(data, time.perf_counter_ns(), time.time())
            if out:
                upstream.write(out)
            if core.terminated:
                self.end_reason = "client_terminated"
            if core.stalled:
                self._stalls.stalled(core)
            if self.server.trail.full and not (
                # Under fail_closed new statements are refused, not queued: keep reading.
                self._fail_closed and not self.server.audit_accepting()
            ):
                self._wait_for_audit_capacity()
        except FrontendProtocolError as exc:
            self.server.counters.protocol_errors_client += 1
            self.end_error = str(exc)
            logger.warning(
                "session %s: client protocol error from %s: %s",
                self.session_id,
                self.identity.client_addr,
                exc,
            )
            self.fatal(exc.sqlstate, str(exc), reason="client_protocol_error")

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
        if self.phase is Phase.CLOSING and self.end_reason == "auth_failed":
            # The server's error went out with this chunk; the connection ends after it.
            self._close_client_after_release()
            return
        if core is None or self.phase is not Phase.READY:
            return
        if core.queue.fatal:
            self.end_reason = "server_fatal"
        if core.stalled:
            self._stalls.resume(core)
        if self._client_done and not core.queue.in_flight:
            self._end_after_client_left()

    def _server_message(self, kind: int, body: bytes, rows: int) -> bytes | None:
        # Until the session is ready: once it is, the scanner calls the relay core itself.
        return self.flow.server_message(kind, body)

    def _server_protocol_error(self, exc: ProtocolError) -> None:
        self.server.counters.protocol_errors_server += 1
        self.end_error = str(exc)
        logger.error("session %s: upstream protocol error: %s", self.session_id, exc)
        self.fatal(
            c.SQLSTATE_PROTOCOL_VIOLATION,
            f"pgwarden: upstream protocol error: {exc}",
            reason="server_protocol_error",
        )

    # --- proxy → client -----------------------------------------------------------------

    def send(self, data: bytes, events: list[Event] | None, *, wait: bool = True) -> None:
        """ClientSink for the relay core: bytes go out once their events are in the trail."""
        self._out.send(data, events, wait=wait)

    def _write_client(self, data: bytes) -> None:
        client = self.client
        if client is not None and not client.is_closing():
            client.write(data)


def client_protocol_factory(
    server: SessionHost,
) -> Callable[[TLSContexts | None], asyncio.Protocol]:
    """Protocols for client connections; ``contexts`` is the certificate generation a
    connection was accepted under (the SniffingListener passes it; else the current one)."""

    def factory(contexts: TLSContexts | None = None) -> asyncio.Protocol:
        return Side(Session(server, contexts), True)

    return factory
