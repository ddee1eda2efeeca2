"""pgwarden's own connections to PostgreSQL, with TLS as ``upstream_tls`` says.

:func:`open_upstream` does what libpq does before the startup packet: SSLRequest, the
server's one-byte answer, the TLS handshake (or direct TLS, PostgreSQL 17+), then hands the
connection to the caller's protocol exactly as ``loop.create_connection(factory, ...)``
would, so a Protocol-based session adopts it unchanged. A server that answers ``N`` when TLS
is required is an error, never a silent downgrade; so are plaintext bytes behind the ``S``
(CVE-2021-23222) and a direct-TLS server that does not negotiate ALPN ``postgresql``.

:func:`send_cancel` forwards a CancelRequest over the same kind of connection and returns
once the server has closed it (the server closes after signalling the backend).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from proxy.config import Upstream
from proxy.errors import UpstreamError
from proxy.tls.contexts import ALPN_PROTOCOL
from proxy.tls.peer import TLSFacts, tls_facts
from proxy.tls.settings import UpstreamTLS
from proxy.wire import constants as c

P = TypeVar("P", bound=asyncio.BaseProtocol)

SSL_REQUEST = struct.pack("!II", 8, c.SSL_REQUEST_CODE)


class UpstreamTLSError(UpstreamError):
    """TLS towards the server could not be set up as configured (never downgraded)."""

    sqlstate = c.SQLSTATE_CANNOT_CONNECT


@dataclass(frozen=True, slots=True)
class UpstreamLink(Generic[P]):
    """An open connection to the server, already handed to ``protocol``."""

    transport: asyncio.Transport
    protocol: P
    tls: TLSFacts | None  # None: plaintext

    @property
    def server_certificate(self) -> bytes | None:
        """The server's certificate (DER), for SCRAM channel binding; None in plaintext."""
        obj = self.transport.get_extra_info("ssl_object")
        return obj.getpeercert(binary_form=True) if obj is not None else None


class _Negotiator(asyncio.Protocol):
    """Holds the connection while pgwarden negotiates; nothing reaches the caller's
    protocol until the connection is what the settings demand."""

    def __init__(self, expect_answer: bool = True) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if not expect_answer:  # direct TLS: no SSLRequest, so no answer to wait for
            self.answer.set_result(b"")
        self.early = bytearray()  # bytes after TLS came up, before the caller's protocol
        self.lost: Exception | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)
            # Read nothing more in plaintext: whatever follows the answer is the TLS
            # engine's to judge (start_tls resumes reading), never trusted bytes.
            if self.transport is not None:
                self.transport.pause_reading()
        else:
            self.early += data

    def plaintext_after_answer(self) -> bool:
        """Bytes came after the one-byte answer, before TLS started (CVE-2021-23222): they
        were sent in plaintext and may have been injected."""
        return len(self.answer.result()) > 1 or bool(self.early)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc
        if not self.answer.done():
            self.answer.set_exception(
                UpstreamError("the server closed the connection before answering the SSLRequest")
            )


def _adopt(
    transport: asyncio.Transport, negotiator: _Negotiator, factory: Callable[[], P]
) -> tuple[asyncio.Transport, P]:
    protocol = factory()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if negotiator.early and isinstance(protocol, asyncio.Protocol):
        protocol.data_received(bytes(negotiator.early))
    if negotiator.closed:
        protocol.connection_lost(negotiator.lost)
    return transport, protocol


def _tls_failure(upstream: Upstream, exc: BaseException) -> UpstreamTLSError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = f"certificate verify failed: {exc.verify_message}"
    elif isinstance(exc, ssl.SSLError):
        detail = str(exc.reason or exc).lower().replace("_", " ")
    else:
        detail = str(exc) or type(exc).__name__
    return UpstreamTLSError(
        f"TLS handshake with the upstream server at {upstream} failed: {detail}"
    )


async def open_upstream(
    factory: Callable[[], P],
    upstream: Upstream,
    settings: UpstreamTLS,
    context: ssl.SSLContext | None,
    *,
    handshake_timeout: float = 10.0,
) -> UpstreamLink[P]:
    """Connect to ``upstream`` and hand the connection to ``factory()``'s protocol.

    Raises :class:`UpstreamTLSError` when TLS cannot be had as configured, and lets the
    ``OSError``/``TimeoutError`` of the TCP connect through (the caller reports those as
    "cannot connect"). The caller bounds the whole call with its own timeout."""
    loop = asyncio.get_running_loop()
    if upstream.unix_path:
        # PostgreSQL offers no TLS on its Unix socket; the settings check refused the modes
        # that require it, so whatever is left (disable, prefer) is plaintext here.
        transport, protocol = await loop.create_unix_connection(factory, upstream.unix_path)
        return UpstreamLink(transport, protocol, None)
    if not settings.mode.attempts_tls or context is None:
        transport, protocol = await loop.create_connection(factory, upstream.host, upstream.port)
        return UpstreamLink(transport, protocol, None)
    server_name = settings.server_name or upstream.host
    if settings.direct:
        return await _direct(loop, factory, upstream, context, server_name, handshake_timeout)
    raw, negotiator = await loop.create_connection(_Negotiator, upstream.host, upstream.port)
    try:
        raw.write(SSL_REQUEST)
        answer = await negotiator.answer
        if answer[:1] == b"S":
            # Checked in the same step as start_tls swaps the protocol: anything that
            # reaches us after this is decrypted.
            if negotiator.plaintext_after_answer():
                raise UpstreamTLSError(
                    "the upstream server sent unencrypted data after its SSL response "
                    "(possible man-in-the-middle)"
                )
            try:
                secured = await loop.start_tls(
                    raw,
                    negotiator,
                    context,
                    server_hostname=server_name,
                    ssl_handshake_timeout=handshake_timeout,
                )
            except (ssl.SSLError, ConnectionError) as exc:
                raise _tls_failure(upstream, exc) from None
            if secured is None:
                raise UpstreamTLSError(f"the upstream server at {upstream} closed during TLS")
            transport, protocol = _adopt(secured, negotiator, factory)
            return UpstreamLink(transport, protocol, _facts(transport))
        if answer[:1] == b"N":
            if len(answer) > 1:
                raise UpstreamTLSError("the upstream server sent data after refusing TLS")
            if settings.mode.requires_tls:
                raise UpstreamTLSError(
                    f"the upstream server at {upstream} does not accept TLS (it answered N "
                    f"to SSLRequest) and upstream_tls.mode is {settings.mode.value}: "
                    "refusing to continue without encryption"
                )
            raw.resume_reading()
            transport, protocol = _adopt(raw, negotiator, factory)
            return UpstreamLink(transport, protocol, None)
        if answer[:1] == b"E":
            # Not authenticated yet, so its text is not shown (libpq does the same since
            # CVE-2024-10977).
            raise UpstreamTLSError(
                f"the upstream server at {upstream} answered the SSLRequest with an error"
            )
        raise UpstreamTLSError(
            f"the upstream server at {upstream} sent an invalid answer to SSLRequest: "
            f"{answer[:1]!r}"
        )
    except BaseException:
        raw.abort()
        raise


async def _direct(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], P],
    upstream: Upstream,
    context: ssl.SSLContext,
    server_name: str,
    handshake_timeout: float,
) -> UpstreamLink[P]:
    try:
        raw, negotiator = await loop.create_connection(
            lambda: _Negotiator(expect_answer=False),
            upstream.host,
            upstream.port,
            ssl=context,
            server_hostname=server_name,
            ssl_handshake_timeout=handshake_timeout,
        )
    except ssl.SSLError as exc:
        raise _tls_failure(upstream, exc) from None
    transport = raw
    selected = transport.get_extra_info("ssl_object").selected_alpn_protocol()
    if selected != ALPN_PROTOCOL:
        transport.abort()
        raise UpstreamTLSError(
            f"the upstream server at {upstream} did not negotiate ALPN {ALPN_PROTOCOL!r} on "
            "a direct TLS connection (PostgreSQL 17 or later is needed for direct TLS)"
        )
    adopted, protocol = _adopt(transport, negotiator, factory)
    return UpstreamLink(adopted, protocol, _facts(adopted))


def _facts(transport: asyncio.Transport) -> TLSFacts | None:
    obj = transport.get_extra_info("ssl_object")
    return tls_facts(obj) if obj is not None else None


class _UntilClosed(asyncio.Protocol):
    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        pass  # PostgreSQL never answers a CancelRequest; nothing to read

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def send_cancel(
    packet: bytes,
    upstream: Upstream,
    settings: UpstreamTLS,
    context: ssl.SSLContext | None,
    *,
    handshake_timeout: float = 10.0,
) -> None:
    """Forward a CancelRequest (``packet``, as encoded by ``encode_cancel``) and wait until
    the server has closed the connection. The caller bounds it with a timeout."""
    link = await open_upstream(
        _UntilClosed, upstream, settings, context, handshake_timeout=handshake_timeout
    )
    try:
        link.transport.write(packet)
        await link.protocol.closed
    finally:
        link.transport.close()
