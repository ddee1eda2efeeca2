"""What the client leg answers, decided from the settings alone (no I/O).

The handshake state machine asks these questions at its TLS steps; each answer is a value
(bytes to send, or a :class:`Refusal` to turn into a FATAL ErrorResponse).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from proxy.errors import PgWardenError
from proxy.tls.contexts import TLSContexts
from proxy.tls.peer import PeerCert, TLSFacts, cert_identity, tls_facts
from proxy.tls.settings import ClientMode, ClientTLS
from proxy.tls.sniff import negotiated_alpn_refusal
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


class ClientTLSRefused(PgWardenError):
    """The client's TLS connection cannot be served; close it without a message (as
    PostgreSQL does after a failed or refused handshake: the peer is not authenticated)."""


@dataclass(frozen=True, slots=True)
class SecuredClient:
    """A client leg after its TLS handshake."""

    transport: asyncio.Transport
    facts: TLSFacts
    peer_cert: PeerCert | None  # a verified client certificate, or None
    own_cert: bytes | None  # the certificate pgwarden presented (DER): ScramServer(server_cert=)


def secured(transport: asyncio.Transport, contexts: TLSContexts, direct: bool) -> SecuredClient:
    """Check a finished handshake (ALPN, PostgreSQL 17's rule) and describe it. For direct
    TLS, call it from ``connection_made`` (the handshake ran before)."""
    obj = transport.get_extra_info("ssl_object")
    if obj is None:
        raise ClientTLSRefused("the connection is not TLS")
    refusal = negotiated_alpn_refusal(obj.selected_alpn_protocol(), direct)
    if refusal is not None:
        raise ClientTLSRefused(refusal.reason)
    return SecuredClient(
        transport, tls_facts(obj), obj.getpeercert() or None, contexts.client_cert_der
    )


async def upgrade_client(
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    contexts: TLSContexts,
    *,
    handshake_timeout: float,
) -> SecuredClient:
    """The TLS handshake after ``answer_ssl_request`` returned ``S`` and it was written.

    In the step that writes the ``S`` the caller must have checked that nothing follows the
    SSLRequest in its buffer (CVE-2021-23214) and called ``transport.pause_reading()``, so
    whatever the client sends next is read by the TLS engine, not as plaintext.

    Bytes the client sends after the handshake can reach ``protocol.data_received`` *before*
    this coroutine resumes (a TLS 1.3 client sends its Finished and the startup packet
    together): the caller must hold them (a phase such as ``Phase.TLS_UPGRADE``) and process
    them only after this returns, writing to the returned transport, never the old one."""
    if contexts.client is None:
        raise ClientTLSRefused("no TLS on the client leg")
    loop = asyncio.get_running_loop()
    try:
        upgraded = await loop.start_tls(
            transport,
            protocol,
            contexts.client,
            server_side=True,
            ssl_handshake_timeout=handshake_timeout,
        )
    except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
        raise ClientTLSRefused(f"TLS handshake failed: {exc}") from None
    if upgraded is None:
        raise ClientTLSRefused("the client closed during the TLS handshake")
    return secured(upgraded, contexts, direct=False)
