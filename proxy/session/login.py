"""From a connection's first byte to ReadyForQuery, on the loop.

The sans-IO :class:`~proxy.relay.handshake.Handshake` reads the startup, encryption and
cancel requests; this adapter does what they ask for: the client leg's TLS upgrade, the
checks before any server is contacted (TLS and certificate rules, replication, the login
rate limiter), pgwarden's own authentication (``auth.mode`` proxy/cert), the server leg,
the relay of the server's authentication exchange, and forwarding cancel requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from proxy.auth.authquery import AuthQueryError
from proxy.auth.password import Verifier
from proxy.errors import AuthenticationError, FrontendProtocolError, UpstreamError
from proxy.identity import Identity
from proxy.relay import credentials
from proxy.relay.endidentity import SessionIdentity
from proxy.relay.endidentity import load as load_identity_settings
from proxy.relay.handshake import AuthRelay, AuthStep, Login, Phase, StartupEvent
from proxy.relay.localauth import MODES as LOCAL_AUTH_MODES
from proxy.relay.localauth import LocalAuth
from proxy.session.sides import Side
from proxy.tls import clientleg
from proxy.wire import constants as c

if TYPE_CHECKING:
    from proxy.session.adapter import Session
    from proxy.tls.peer import TLSFacts
    from proxy.wire.startup import CancelRequest

logger = logging.getLogger("pgwarden.session")

_BEFORE_READY = (Phase.STARTUP, Phase.TLS_UPGRADE, Phase.LOGIN, Phase.CONNECTING, Phase.AUTH)


class LoginFlow:
    """The login of one session; the session owns it and takes over at ReadyForQuery."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.server = session.server
        self.cfg = session.cfg
        self.handshake = session.handshake
        self.login: Login | None = None
        self.client_tls = False  # the client leg is encrypted
        self.secured: clientleg.SecuredClient | None = None
        self.tls_direct = False  # TLS from the first byte (sslnegotiation=direct)
        self.held = bytearray()  # client bytes that arrived during the TLS upgrade
        self.local: LocalAuth | None = None  # auth.mode proxy/cert: pgwarden authenticates
        self.upstream_tls: TLSFacts | None = None  # the server leg's TLS, None: plaintext
        self.upstream_cert: bytes | None = None  # the server's certificate (DER)
        self.auth: AuthRelay | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.who = SessionIdentity(load_identity_settings(self.cfg))  # the end identity

    # --- the client leg -------------------------------------------------------------------

    def connected(self, transport: asyncio.Transport) -> None:
        self._timer = self.server.call_later(self.cfg["limits.login_timeout"], self._timeout)
        phase = self.session.phase
        if phase is Phase.STARTUP and transport.get_extra_info("ssl_object") is not None:
            # Direct TLS: the listener ran the handshake before the connection was ours.
            try:
                self._tls_up(clientleg.secured(transport, self.session.contexts, direct=True))
            except clientleg.ClientTLSRefused as exc:
                logger.info("session %s: direct TLS refused: %s", self.session.session_id, exc)
                self.session.close_silently("tls_refused")
                return
            self.tls_direct = True

    def _tls_up(self, secured: clientleg.SecuredClient) -> None:
        """The client leg is TLS from now on: every write goes to the secured transport."""
        self.secured = secured
        self.client_tls = True
        self.handshake.tls_offered = False  # a second SSLRequest gets 'N', as from PostgreSQL
        self.session.client_transport(secured.transport)

    def _timeout(self) -> None:
        session = self.session
        if session.phase in _BEFORE_READY:
            logger.warning(
                "session %s: login timeout from %s",
                session.session_id,
                session.identity.client_addr,
            )
            session.fatal(
                c.SQLSTATE_PROTOCOL_VIOLATION,
                "canceling authentication due to timeout",
                reason="login_timeout",
            )

    def done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def client_bytes(self, data: bytes) -> None:
        """Client bytes before the session is ready (FrontendProtocolError: a bad one)."""
        phase = self.session.phase
        if phase is Phase.STARTUP:
            self._startup(data)
        elif phase is Phase.LOGIN:
            self._local_message(data)
        elif phase is not Phase.CONNECTING and phase is not Phase.AUTH:
            return
        elif self.local is not None:
            # pgwarden logs in upstream itself: the client has nothing to say meanwhile.
            for kind, _body, _raw in self.handshake.auth_messages(data):
                if kind != ord("X"):
                    raise FrontendProtocolError("unexpected message during authentication")
                self.session.close_silently("client_terminated")
                return
        else:
            out = self.handshake.auth_bytes(data)
            upstream = self.session.upstream
            if out and upstream is not None:
                upstream.write(out)
            elif out:
                self.handshake.defer(out)

    def _startup(self, data: bytes) -> None:
        session = self.session
        result = self.handshake.startup_bytes(data)
        client = session.client
        if result.reply and client is not None:
            client.write(result.reply)
        if result.event is StartupEvent.BAD_CANCEL:
            # Like PostgreSQL, never write on a cancel socket, even a malformed one.
            session.close_silently("bad_cancel_request")
        elif result.event is StartupEvent.INVALID_LENGTH:
            self.server.counters.protocol_errors_client += 1
            session.close_silently("invalid_startup_packet")
        elif result.event is StartupEvent.CANCEL:
            assert result.cancel is not None
            self.server.spawn(self._forward_cancel_then_close(result.cancel))
        elif result.event is StartupEvent.LOGIN:
            assert result.login is not None
            self._begin(result.login)
        elif result.event is StartupEvent.TLS_UPGRADE:
            # In the step that wrote the 'S' (the handshake checked nothing followed the
            # SSLRequest): from here on the TLS engine reads, never the plaintext parser.
            assert client is not None
            client.pause_reading()
            self.server.spawn(self._upgrade_tls(client))

    async def _upgrade_tls(self, transport: asyncio.Transport) -> None:
        session = self.session
        try:
            secured = await clientleg.upgrade_client(
                transport,
                transport.get_protocol(),
                session.contexts,
                handshake_timeout=self.cfg["limits.login_timeout"],
            )
        except clientleg.ClientTLSRefused as exc:
            if session.phase is not Phase.CLOSED:
                logger.info("session %s: %s", session.session_id, exc)
                session.close_silently("tls_handshake_failed")
            return
        if session.phase is not Phase.TLS_UPGRADE:  # closed (timeout, shutdown) meanwhile
            secured.transport.close()
            return
        self._tls_up(secured)
        self.handshake.phase = Phase.STARTUP
        held = bytes(self.held)
        self.held.clear()
        if held:
            session.client_bytes(held)

    async def _forward_cancel_then_close(self, request: CancelRequest) -> None:
        """Close the client's cancel socket only once the server acted on the forward, so
        "cancel done" means done (a driver's next statement must not be the one cancelled)."""
        session = self.session
        outcome, target = "failed", None
        try:
            outcome, target = await self.server.route_cancel(request)
        finally:
            session.close_silently("cancel_request")
            now = time.time()
            allowed, suppressed = (
                (True, 0)
                if outcome == "forwarded"
                else self.server.attempts.admit(session.identity.client_addr, now)
            )
            if allowed:
                fields: dict[str, Any] = {"outcome": outcome, "target_session": target}
                if suppressed:
                    fields["suppressed_before"] = suppressed
                self.server.trail.submit(session.events.event("cancel", now, **fields))

    # --- checks before any server is contacted ----------------------------------------------

    def _begin(self, login: Login) -> None:
        session = self.session
        self.login = login
        ident = session.identity
        session.set_identity(
            self.who.at_login(
                Identity(
                    login.user,
                    login.database,
                    login.application_name,
                    ident.client_addr,
                    ident.client_port,
                    session.session_id,
                ),
                login,
            )
        )
        settings = session.contexts.settings.client
        secured = self.secured
        refusal = (
            clientleg.certificate_refusal(settings, secured.peer_cert, login.user)
            if secured is not None
            else clientleg.plaintext_refusal(
                settings, session.identity.client_addr or "", login.user, login.database
            )
        )
        if refusal is not None:
            self.server.counters.auth_failures += 1
            event = session.events.event(
                "auth_failure", time.time(), sqlstate=refusal.sqlstate, error=refusal.message
            )
            session.fatal(
                refusal.sqlstate,
                refusal.message,
                reason="tls_refused",
                hint=refusal.hint,
                events=[event],
            )
            return
        if login.replication and not self.cfg["allow_replication"]:
            session.fatal(
                c.SQLSTATE_INVALID_AUTHORIZATION,
                "replication connections are not allowed through pgwarden",
                reason="replication_refused",
                detail="Set allow_replication: true in the pgwarden config to permit them.",
            )
            return
        if not self._allowed(login):
            return
        mode = self.cfg["auth.mode"]
        if mode in LOCAL_AUTH_MODES:
            self._local_login(LocalAuth(mode, login))
            return
        self._go_upstream(login)

    def _allowed(self, login: Login) -> bool:
        """The login rate limiter: past its failures, an address or user waits."""
        session = self.session
        now = time.time()
        verdict = self.server.limiter.check(session.identity.client_addr, login.user, now)
        if verdict.allowed:
            return True
        self.server.counters.logins_throttled += 1
        wait = max(1, round(verdict.retry_after))
        event = session.events.event(
            "login_throttled",
            now,
            limited_by=verdict.limited_by.value,
            retry_after=round(verdict.retry_after, 3),
        )
        logger.warning(
            "session %s: login of %s from %s throttled (%s) for %.1fs",
            session.session_id,
            login.user,
            session.identity.client_addr,
            verdict.limited_by.value,
            verdict.retry_after,
        )
        session.fatal(
            c.SQLSTATE_INVALID_AUTHORIZATION,
            f"too many failed logins from this {verdict.limited_by.value}; try again in {wait} s",
            reason="login_throttled",
            events=[event],
        )
        return False

    def _failed(self, exc: AuthenticationError, reason: str = "auth_failed") -> None:
        """pgwarden refused the login itself (its own check, or its own upstream login)."""
        session = self.session
        self.server.counters.auth_failures += 1
        if reason == "auth_failed":
            ident = session.identity
            self.server.limiter.failed(ident.client_addr, ident.user, time.time())
        event = session.events.event(
            "auth_failure", time.time(), sqlstate=exc.sqlstate, error=str(exc)
        )
        session.fatal(exc.sqlstate, str(exc), reason=reason, detail=exc.detail, events=[event])

    # --- pgwarden's own authentication (auth.mode proxy / cert) -----------------------------

    def _local_login(self, local: LocalAuth) -> None:
        session = self.session
        if self.handshake.take_early():
            raise FrontendProtocolError("unexpected message before the authentication request")
        self.local = local
        self.login = local.login
        session.phase = Phase.LOGIN
        if local.mode == "cert":
            self._start_local(local, None, 0)
        else:
            self.server.spawn(self._look_up_verifier(local))

    async def _look_up_verifier(self, local: LocalAuth) -> None:
        """The user's secret from the users file, else auth_query on the server."""
        session = self.session
        login = local.login
        try:
            verifier, iterations = await credentials.verifier_for(
                self.server.users, self.server.auth_query, login.database, login.user
            )
        except AuthQueryError as exc:
            logger.error("session %s: auth_query lookup failed: %s", session.session_id, exc)
            session.fatal(
                exc.sqlstate,
                f'pgwarden could not look up the password of user "{login.user}" on the '
                "server (auth_query); see pgwarden's log",
                reason="auth_query_failed",
            )
            return
        if session.phase is Phase.LOGIN:
            self._start_local(local, verifier, iterations)

    def _start_local(self, local: LocalAuth, verifier: Verifier | None, iterations: int) -> None:
        session = self.session
        try:
            greeting, done = local.start(self.secured, self.server.local_auth, verifier, iterations)
        except AuthenticationError as exc:
            self._failed(exc)
            return
        if local.end_identity:
            session.set_identity(
                self.who.authenticated(session.identity, local.end_identity, local.identity_source)
            )
        if greeting:
            session.send(greeting, None)
        if done:
            session.phase = Phase.CONNECTING
            self._go_upstream(local.login)

    def _local_message(self, data: bytes) -> None:
        session = self.session
        local = self.local
        assert local is not None
        for kind, body, _raw in self.handshake.auth_messages(data):
            if kind == ord("X"):
                session.close_silently("client_terminated")
                return
            try:
                out, done = local.client_message(body)
            except AuthenticationError as exc:
                self._failed(exc)
                return
            session.send(out, None)
            if done:
                # The client proved its password; its AuthenticationOk waits for the server.
                self.server.limiter.succeeded(
                    session.identity.client_addr, local.login.user, time.time()
                )
                session.phase = Phase.CONNECTING
                self._go_upstream(local.login)
                return

    # --- the server leg -------------------------------------------------------------------

    def _go_upstream(self, login: Login) -> None:
        """Connect to the server with ``login``'s packet (pgwarden.identity when propagated)."""
        self.server.spawn(self._connect_upstream(self.who.packet(login, self.session.identity)))

    async def _connect_upstream(self, packet: bytes) -> None:
        session = self.session
        try:
            link = await self.server.connect_upstream(
                lambda: Side(session, False), session.contexts
            )
        except UpstreamError as exc:
            logger.error("session %s: %s", session.session_id, exc)
            session.fatal(exc.sqlstate, str(exc), reason="upstream_unreachable")
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
        session = self.session
        if session.phase is Phase.CLOSED or session.phase is Phase.CLOSING:
            transport.close()
            return
        session.upstream_transport(transport)
        self.upstream_tls = tls
        self.upstream_cert = server_cert
        session.phase = Phase.AUTH
        local = self.local
        if local is not None:
            login = local.login
            password = credentials.passfile_password(
                self.server.passfile, self.cfg.upstream, login.database, login.user
            )
            self.auth = local.upstream_relay(password, server_cert)
        elif self.login is not None:
            self.auth = AuthRelay(self.login)
        transport.write(packet + self.handshake.take_early())

    def server_message(self, kind: int, body: bytes) -> bytes | None:
        """A watched server message during authentication."""
        session = self.session
        relay = self.auth
        if session.phase is not Phase.AUTH or relay is None:
            return b""  # the session is closing: nothing more for the client
        try:
            out, step = relay.on_message(kind, body)
        except AuthenticationError as exc:
            logger.error("session %s: upstream login failed: %s", session.session_id, exc)
            self._failed(exc, reason="upstream_login_failed")
            return b""
        if step is AuthStep.TO_SERVER:
            if session.upstream is not None:
                session.upstream.write(relay.to_server)
        elif step is AuthStep.BACKEND_KEY:
            assert relay.server_key is not None
            pid, secret = relay.server_key
            self.handshake.server_key = relay.server_key
            session.backend_started(pid)
            self.server.backend_started(session, pid, secret)
        elif step is AuthStep.PARAMETER:
            session.parameter_status(*relay.parameter)
        elif step is AuthStep.FAILED:
            self._server_refused(relay.failure)
        elif step is AuthStep.READY:
            self.done()
            self.server.limiter.succeeded(
                session.identity.client_addr, session.identity.user, time.time()
            )
            session.ready(relay.ready_status)
        return out

    def _server_refused(self, fields: dict[str, str]) -> None:
        session = self.session
        self.server.counters.auth_failures += 1
        if self.local is None and fields.get("C") == c.SQLSTATE_INVALID_PASSWORD:
            # The server refused the client's password. Its other refusals (pg_hba, the
            # channel-binding downgrade) guess nothing, so they do not count.
            ident = session.identity
            self.server.limiter.failed(ident.client_addr, ident.user, time.time())
        event = session.events.event(
            "auth_failure",
            time.time(),
            sqlstate=fields.get("C", "XX000"),
            error=self.server.gate.audit_error(fields.get("M", ""), "", (), False),
        )
        session.end_reason = "auth_failed"
        session.phase = Phase.CLOSING
        session.queue_event(event)

    # --- audit facts ------------------------------------------------------------------------

    def session_start(self) -> dict[str, Any]:
        """The fields of ``session_start`` that describe how the client got in."""
        login = self.login
        secured = self.secured
        return {
            "protocol_version": f"3.{self.auth.protocol_minor if self.auth else 0}",
            "tls": self.client_tls,
            "client_tls": (
                {**secured.facts.audit(), "direct": self.tls_direct}
                if secured is not None
                else None
            ),
            "auth_mode": self.cfg["auth.mode"],
            **({"client_auth": self.local.method} if self.local is not None else {}),
            "upstream_tls": self.upstream_tls.audit() if self.upstream_tls else None,
            "server_version": self.session.server_params.get("server_version", ""),
            **({"role": login.role} if login is not None and login.role else {}),
            **self.who.start_fields(),
        }

    def attempt_fields(self) -> dict[str, Any] | None:
        """``session_end`` of a connection that never became a session: rate-limited per
        client address, so a port scan cannot flood the trail (None: suppressed)."""
        session = self.session
        allowed, suppressed = self.server.attempts.admit(session.identity.client_addr, time.time())
        if not allowed:
            return None
        reason = session.end_reason or "client_disconnected"
        if (
            reason == "client_disconnected"
            and self.login is None
            and self.handshake.encryption_requests
        ):
            reason = "encryption_refused"  # asked for TLS/GSSAPI, got 'N', and left
        fields: dict[str, Any] = {"reason": reason, "started": False}
        if suppressed:
            fields["suppressed_before"] = suppressed
        return fields
