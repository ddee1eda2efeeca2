"""What the client leg answers, decided from the settings alone (no I/O).

The handshake state machine asks these questions at its TLS steps; each answer is a value
(bytes to send, or a :class:`Refusal` to turn into a FATAL ErrorResponse).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.tls.contexts import TLSContexts
from proxy.tls.peer import PeerCert, cert_identity
from proxy.tls.settings import ClientMode, ClientTLS
from proxy.wire import constants as c


@dataclass(frozen=True, slots=True)
class Refusal:
    """A login refused before authentication: send FATAL with these, then close."""

    sqlstate: str
    message: str
    hint: str = ""


def answer_ssl_request(contexts: TLSContexts) -> bytes:
    """The one byte answering an SSLRequest: ``S`` when the client leg has TLS, else ``N``."""
    return b"S" if contexts.client is not None else b"N"


def accepts_direct_tls(contexts: TLSContexts) -> bool:
    """Whether a connection opening with a TLS ClientHello is served (else closed)."""
    return contexts.client is not None and contexts.settings.client.direct


def plaintext_refusal(settings: ClientTLS, host: str, user: str, database: str) -> Refusal | None:
    """For a startup packet that arrived without TLS: refuse it when the mode requires TLS
    (SQLSTATE 28000, as PostgreSQL's ``hostssl``-only configuration does)."""
    if not settings.mode.requires_tls:
        return None
    return Refusal(
        c.SQLSTATE_INVALID_AUTHORIZATION,
        f'pgwarden requires encryption: connection for host "{host}", user "{user}", '
        f'database "{database}" arrived without it',
        "Connect with sslmode=require or stronger.",
    )


def certificate_refusal(settings: ClientTLS, cert: PeerCert | None, user: str) -> Refusal | None:
    """After the startup packet of a TLS client: refuse a missing certificate in verify
    modes, and in verify-full one that does not name ``user``."""
    if not settings.mode.requires_cert:
        return None
    if not cert:
        return Refusal(
            c.SQLSTATE_INVALID_AUTHORIZATION, "connection requires a valid client certificate"
        )
    if settings.mode is ClientMode.VERIFY_FULL:
        identity = cert_identity(cert, settings.identity)
        if identity != user:
            field = settings.identity.value
            return Refusal(
                c.SQLSTATE_INVALID_AUTHORIZATION,
                f'certificate validation (verify-full) failed for user "{user}": {field} mismatch',
                f"The certificate's {field} must be exactly the user name."
                if identity is not None
                else f"The certificate has no single {field}.",
            )
    return None
