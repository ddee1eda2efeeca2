"""pgwarden authenticating the client itself (``auth.mode`` ``proxy`` or ``cert``), sans-IO.

* ``proxy``: SCRAM-SHA-256 against the users file, ``-PLUS`` bound to the certificate
  pgwarden presented when the client leg is TLS (:mod:`proxy.auth.scram_server`); the
  client's key recovered from its proof then logs pgwarden in upstream.
* ``cert``: the verified client certificate's identity field (``client_tls.identity``) must
  be the user name, as PostgreSQL's ``cert`` method without a map; the server then has to
  accept pgwarden without a password (trust, or ``cert`` with ``upstream_tls.cert_file``).

The client is asked for protocol 3.0 in these modes (a NegotiateProtocolVersion from
pgwarden when it asked for more), because its negotiation must be answered before the
server is even connected.
"""

from __future__ import annotations

from dataclasses import replace

from proxy.auth.scram import ClientKeys
from proxy.auth.scram_server import ScramPhase, ScramServer
from proxy.auth.users import UsersFile
from proxy.errors import AuthenticationError
from proxy.relay.handshake import Login
from proxy.tls.clientleg import SecuredClient
from proxy.tls.peer import cert_identity, subject_dn
from proxy.tls.settings import CertIdentity
from proxy.wire import constants as c

MODES = frozenset({"proxy", "cert"})


class LocalAuth:
    """One client's login to pgwarden itself."""

    __slots__ = ("_scram", "end_identity", "keys", "login", "mode")

    def __init__(self, mode: str, login: Login) -> None:
        self.mode = mode
        # 3.0 towards the server: the client's negotiation is answered by pgwarden.
        self.login = replace(login, protocol_minor=0)
        self._scram: ScramServer | None = None
        self.keys: ClientKeys | None = None  # proxy mode, after success: the upstream login
        self.end_identity = ""  # who is behind the role, when that says more (cert subject)

    def start(
        self, users: UsersFile | None, secured: SecuredClient | None, identity: CertIdentity
    ) -> tuple[bytes, bool]:
        """What to send the client first, and whether the client is already authenticated
        (cert). Raises AuthenticationError for a refused certificate."""
        greeting = self.login.negotiation(0, [])
        if self.mode == "cert":
            cert = secured.peer_cert if secured is not None else None
            if cert_identity(cert, identity) != self.login.user:
                raise AuthenticationError(
                    f'certificate authentication failed for user "{self.login.user}"',
                    c.SQLSTATE_INVALID_AUTHORIZATION,
                    f"The certificate's {identity.value} must be exactly the user name.",
                )
            self.end_identity = subject_dn(cert)
            return greeting, True
        assert users is not None, "auth.mode proxy loads its users file at start-up"
        self._scram = ScramServer(
            self.login.user,
            users.secret(self.login.user),
            server_cert=secured.own_cert if secured is not None else None,
            mock_iterations=users.typical_iterations,
        )
        return greeting + self._scram.sasl_request(), False

    def client_message(self, body: bytes) -> tuple[bytes, bool]:
        """A SASL message body from the client → what to send it, and whether the password
        was right. Raises AuthenticationError (PostgreSQL's SQLSTATE and text)."""
        scram = self._scram
        if scram is None:
            raise AuthenticationError("unexpected password message", c.SQLSTATE_PROTOCOL_VIOLATION)
        if scram.phase is ScramPhase.OFFERED:
            return scram.initial_response(body), False
        final = scram.final_response(body)
        self.keys = scram.upstream_keys()
        return final, True
