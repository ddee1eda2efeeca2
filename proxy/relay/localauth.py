"""pgwarden authenticating the client itself (``auth.mode`` ``proxy`` or ``cert``), sans-IO.

* ``proxy``: the first of ``auth.client_methods`` that the user's secret can answer (as
  PostgreSQL picks for a pg_hba method): SCRAM-SHA-256, ``-PLUS`` bound to the certificate
  pgwarden presented when the client leg is TLS (:mod:`proxy.auth.scram_server`); md5 with an
  md5 entry; cleartext (``password``) against either, only over TLS unless
  ``auth.cleartext_without_tls`` says otherwise (:mod:`proxy.auth.password`). The client's
  key recovered from its SCRAM proof, its cleartext password or its md5 entry then logs
  pgwarden in upstream (an ``auth.passfile`` password comes first).
* ``cert``: the verified client certificate's identity field (``client_tls.identity``) must
  be the user name, or be allowed that role by ``auth.ident_file``'s map (pg_ident.conf);
  the server then has to accept pgwarden with a passfile password or without one (trust,
  or ``cert`` with ``upstream_tls.cert_file``).

The client's protocol version (3.0 or 3.2) is answered by pgwarden before the server is
connected, and pgwarden asks the server for the same; a server that only speaks 3.0 changes
nothing the client sees, since 3.0 and 3.2 differ only in the cancel key's length and the
server's 4-byte key, relayed as it is, is valid in 3.2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from proxy.auth import password as pw
from proxy.auth.identmap import IdentMap
from proxy.auth.password import Md5Secret, Verifier
from proxy.auth.scram import DEFAULT_ITERATIONS, ClientKeys, ScramSecret
from proxy.auth.scram_client import ScramClient
from proxy.auth.scram_server import ScramPhase, ScramServer
from proxy.errors import AuthenticationError
from proxy.identity import IdentitySource
from proxy.relay.handshake import AuthRelay, Login
from proxy.tls.clientleg import SecuredClient
from proxy.tls.peer import cert_identity, subject_dn
from proxy.tls.settings import CertIdentity
from proxy.wire import constants as c

logger = logging.getLogger("pgwarden.auth")

MODES = frozenset({"proxy", "cert"})
SCRAM, MD5, PASSWORD = "scram-sha-256", "md5", "password"
CLIENT_METHODS = (SCRAM, MD5, PASSWORD)


@dataclass(frozen=True, slots=True)
class LocalAuthSettings:
    """How pgwarden authenticates clients (the ``auth.*`` keys, the ident map as loaded)."""

    methods: tuple[str, ...] = (SCRAM,)
    cleartext_without_tls: bool = False
    identity: CertIdentity = CertIdentity.CN
    ident: IdentMap | None = None
    ident_map: str = ""


def choose_method(methods: tuple[str, ...], verifier: Verifier | None, tls: bool) -> str | None:
    """The method a user is asked for: the first configured one its secret answers; None
    when only ``password`` is configured and ``tls`` (or its override) is false.

    ``md5`` with a SCRAM secret means SCRAM, as in PostgreSQL (an md5 pg_hba line uses SCRAM
    for a role whose password is a SCRAM secret). An unknown user (None) fails only at the
    password, as in PostgreSQL's mock exchange.
    """
    fallback = None
    for method in methods:
        if method == PASSWORD:
            if tls:
                return PASSWORD
        elif method == SCRAM:
            if not isinstance(verifier, Md5Secret):
                return SCRAM
            fallback = SCRAM  # an md5 entry cannot answer SCRAM: the mock exchange fails it
        elif method == MD5:
            # An unknown user gets SCRAM's mock exchange, as from PostgreSQL with its default
            # password_encryption, so md5 being asked tells that an md5 entry exists, not
            # that a user does.
            return MD5 if isinstance(verifier, Md5Secret) else SCRAM
    return fallback


class LocalAuth:
    """One client's login to pgwarden itself."""

    __slots__ = (
        "_method",
        "_mock_iterations",
        "_salt",
        "_scram",
        "_verifier",
        "end_identity",
        "identity_source",
        "keys",
        "login",
        "md5_secret",
        "method",
        "mode",
        "password",
    )

    def __init__(self, mode: str, login: Login) -> None:
        self.mode = mode
        self.login = login
        self._scram: ScramServer | None = None
        self._method = ""
        self._salt = b""
        self._mock_iterations = DEFAULT_ITERATIONS
        self._verifier: Verifier | None = None
        # After success, what logs pgwarden in upstream as the same role:
        self.keys: ClientKeys | None = None  # recovered from a SCRAM proof
        self.password: str | None = None  # the client's cleartext password
        self.md5_secret: Md5Secret | None = None  # answers the server's md5 challenge
        self.end_identity = ""  # who is behind the role, when that says more (cert subject)
        self.identity_source: IdentitySource | None = None
        # How the client proved itself, for session_start: SCRAM-SHA-256(-PLUS), md5,
        # password or cert.
        self.method = ""

    def start(
        self,
        secured: SecuredClient | None,
        settings: LocalAuthSettings,
        verifier: Verifier | None = None,
        mock_iterations: int = DEFAULT_ITERATIONS,
    ) -> tuple[bytes, bool]:
        """What to send the client first, and whether the client is already authenticated
        (cert). ``verifier``: the user's secret (users file or auth_query), None when there
        is none. Raises AuthenticationError for a refused certificate or method."""
        greeting = self.login.negotiation(self.login.protocol_minor, [])
        if self.mode == "cert":
            self._check_certificate(secured, settings)
            self.method = "cert"
            return greeting, True
        tls = secured is not None
        method = choose_method(settings.methods, verifier, tls or settings.cleartext_without_tls)
        if method is None:
            # Only `password` is configured and the client leg is plaintext.
            raise AuthenticationError(
                "pgwarden does not ask for a cleartext password over an unencrypted connection",
                c.SQLSTATE_INVALID_AUTHORIZATION,
                "Connect with sslmode=require, or allow it with auth.cleartext_without_tls.",
            )
        self._method = method
        self._verifier = verifier
        self._mock_iterations = mock_iterations
        if method == PASSWORD:
            return greeting + pw.cleartext_request(), False
        if method == MD5:
            self._salt = pw.new_salt()
            return greeting + pw.md5_request(self._salt), False
        self._scram = ScramServer(
            self.login.user,
            verifier if isinstance(verifier, ScramSecret) else None,
            server_cert=secured.own_cert if secured is not None else None,
            mock_iterations=mock_iterations,
        )
        return greeting + self._scram.sasl_request(), False

    def _check_certificate(
        self, secured: SecuredClient | None, settings: LocalAuthSettings
    ) -> None:
        cert = secured.peer_cert if secured is not None else None
        named = cert_identity(cert, settings.identity)
        user = self.login.user
        failed = AuthenticationError(
            f'certificate authentication failed for user "{user}"',
            c.SQLSTATE_INVALID_AUTHORIZATION,
            ""
            if settings.ident is not None
            else f"The certificate's {settings.identity.value} must be exactly the user name.",
        )
        if named is None:
            raise failed
        if settings.ident is not None:
            if not settings.ident.allows(settings.ident_map, named, user):
                # PostgreSQL logs this and tells the client nothing more.
                logger.info(
                    'no match in usermap "%s" for user "%s" authenticated as "%s"',
                    settings.ident_map,
                    user,
                    named,
                )
                raise failed
        elif named != user:
            raise failed
        self.end_identity = subject_dn(cert)
        self.identity_source = IdentitySource.CERTIFICATE

    def client_message(self, body: bytes) -> tuple[bytes, bool]:
        """A password or SASL message body from the client → what to send it, and whether
        the password was right. Raises AuthenticationError (PostgreSQL's SQLSTATE and
        text)."""
        user = self.login.user
        if self._method == PASSWORD:
            self.password = pw.check_cleartext(body, user, self._verifier, self._mock_iterations)
            self.method = PASSWORD
            return b"", True
        if self._method == MD5:
            entry = self._verifier if isinstance(self._verifier, Md5Secret) else None
            pw.check_md5(body, user, entry, self._salt)
            self.md5_secret = entry
            self.method = MD5
            return b"", True
        scram = self._scram
        if scram is None:
            raise AuthenticationError("unexpected password message", c.SQLSTATE_PROTOCOL_VIOLATION)
        if scram.phase is ScramPhase.OFFERED:
            return scram.initial_response(body), False
        final = scram.final_response(body)
        self.keys = scram.upstream_keys()
        self.method = scram.mechanism
        return final, True

    def upstream_relay(self, passfile_password: str | None, server_cert: bytes | None) -> AuthRelay:
        """The relay of pgwarden's own upstream login as the client's role, with the best
        credential held: an auth.passfile password, else the client's cleartext password,
        else its recovered SCRAM key; an md5 entry answers a server asking for md5."""
        password = passfile_password if passfile_password is not None else self.password
        client = (
            ScramClient(password=password, server_cert=server_cert)
            if password is not None
            else ScramClient(keys=self.keys, server_cert=server_cert)
            if self.keys is not None
            else None
        )
        return AuthRelay(
            self.login,
            upstream_login=client,
            local=True,
            password=password,
            md5_secret=self.md5_secret,
        )
