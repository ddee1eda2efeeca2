"""Direct TLS (PostgreSQL 17's ``sslnegotiation=direct``), decided from bytes alone.

A v3 connection starts with a startup packet whose first byte is 0 (its length word is at
most 10,000); a direct-TLS connection starts with a TLS handshake record, first byte 0x16.
One byte tells them apart, as PostgreSQL 17 does.

PostgreSQL 17 then insists on ALPN: a client that offers protocols but not ``postgresql``
gets a fatal ``no_application_protocol`` alert (either way of negotiating), and a direct
connection without ALPN is closed after the handshake. :func:`parse_client_hello` reads the
offer from the ClientHello (possibly split over several records), so the decision can be
taken before any TLS engine sees the bytes; :func:`negotiated_alpn_refusal` is the check
after the handshake, for when only the negotiated protocol is known.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from proxy.errors import FrontendProtocolError

ALPN_POSTGRESQL = b"postgresql"

_RECORD_HANDSHAKE = 0x16
_HANDSHAKE_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_MAX_RECORD = 16384 + 256  # TLSPlaintext.length must not exceed 2^14; slack as OpenSSL
# A ClientHello with post-quantum key shares is ~2 KB; anything near this limit is hostile.
MAX_CLIENT_HELLO = 32768

# A plaintext TLS alert record: level fatal (2), no_application_protocol (120), RFC 7301.
NO_APPLICATION_PROTOCOL_ALERT = bytes((0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x78))


class FirstBytes(Enum):
    NEED_MORE = "need_more"
    STARTUP = "startup"  # a startup packet (plaintext; maybe SSLRequest/GSSENCRequest)
    TLS = "tls"  # a TLS handshake record: direct TLS


def classify(buf: bytes | bytearray | memoryview) -> FirstBytes:
    """What a new connection's first bytes are."""
    if not buf:
        return FirstBytes.NEED_MORE
    return FirstBytes.TLS if buf[0] == _RECORD_HANDSHAKE else FirstBytes.STARTUP


class ClientHelloError(FrontendProtocolError):
    """The bytes are not a well-formed TLS ClientHello."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    alpn: tuple[bytes, ...] | None  # None: no ALPN extension at all
    server_name: str | None


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ClientHelloError(f"truncated {self.what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int) -> bytes:
        return self.take(self.uint(size))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _handshake_bytes(buf: bytes) -> bytes | None:
    """The handshake layer bytes of the leading records, once the first handshake message
    is complete (None: need more). Records of another type in between are an error."""
    out = bytearray()
    pos = 0
    while True:
        if len(buf) - pos < 5:
            return None
        kind, major, _minor, length = struct.unpack_from("!BBBH", buf, pos)
        if kind != _RECORD_HANDSHAKE:
            raise ClientHelloError(f"expected a TLS handshake record, got record type {kind}")
        if major != 3:
            raise ClientHelloError("not a TLS record (bad version)")
        if length == 0 or length > _MAX_RECORD:
            raise ClientHelloError(f"invalid TLS record length {length}")
        if len(buf) - pos - 5 < length:
            return None
        out += buf[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(out) >= 4:
            total = 4 + int.from_bytes(out[1:4], "big")
            if total > MAX_CLIENT_HELLO:
                raise ClientHelloError(f"ClientHello of {total} bytes exceeds {MAX_CLIENT_HELLO}")
            if len(out) >= total:
                return bytes(out[:total])


def parse_client_hello(buf: bytes | bytearray) -> ClientHello | None:
    """The ALPN offer and server name of the ClientHello at the start of ``buf``.

    None while the ClientHello is incomplete; :class:`ClientHelloError` for anything that
    is not one (the caller closes the connection). Never allocates beyond
    :data:`MAX_CLIENT_HELLO`."""
    handshake = _handshake_bytes(bytes(buf))
    if handshake is None:
        return None
    if handshake[0] != _HANDSHAKE_CLIENT_HELLO:
        raise ClientHelloError(f"expected a ClientHello, got handshake type {handshake[0]}")
    hello = _Reader(handshake[4:], "ClientHello")
    hello.take(2 + 32)  # legacy_version, random
    if len(hello.vector(1)) > 32:
        raise ClientHelloError("session id longer than 32 bytes")
    suites = hello.vector(2)
    if not suites or len(suites) % 2:
        raise ClientHelloError("invalid cipher suite list")
    if not hello.vector(1):
        raise ClientHelloError("empty compression method list")
    alpn: tuple[bytes, ...] | None = None
    server_name: str | None = None
    if hello.left == 0:  # no extensions at all (legal before TLS 1.3)
        return ClientHello(None, None)
    extensions = _Reader(hello.vector(2), "extensions")
    if hello.left:
        raise ClientHelloError("trailing bytes after the ClientHello extensions")
    seen: set[int] = set()
    while extensions.left:
        kind = extensions.uint(2)
        data = extensions.vector(2)
        if kind in seen:
            raise ClientHelloError(f"duplicate TLS extension {kind}")
        seen.add(kind)
        if kind == _EXT_ALPN:
            alpn = _alpn(data)
        elif kind == _EXT_SERVER_NAME:
            server_name = _server_name(data)
    return ClientHello(alpn, server_name)


def _alpn(data: bytes) -> tuple[bytes, ...]:
    outer = _Reader(data, "ALPN extension")
    names = _Reader(outer.vector(2), "ALPN protocol list")
    if outer.left:
        raise ClientHelloError("trailing bytes in the ALPN extension")
    out = []
    while names.left:
        name = names.vector(1)
        if not name:
            raise ClientHelloError("empty ALPN protocol name")
        out.append(name)
    if not out:
        raise ClientHelloError("empty ALPN protocol list")
    return tuple(out)


def _server_name(data: bytes) -> str | None:
    outer = _Reader(data, "server_name extension")
    names = _Reader(outer.vector(2), "server name list")
    while names.left:
        kind = names.uint(1)
        name = names.vector(2)
        if kind == 0:
            try:
                return name.decode("ascii")
            except UnicodeDecodeError:
                raise ClientHelloError("server name is not ASCII") from None
    return None


@dataclass(frozen=True, slots=True)
class AlpnRefusal:
    """Why a TLS connection is refused; ``alert`` is what to write before closing (when
    the refusal comes before the handshake, as PostgreSQL's fatal alert does)."""

    reason: str
    alert: bytes = b""


def alpn_refusal(hello: ClientHello, direct: bool) -> AlpnRefusal | None:
    """PostgreSQL 17's rule, decided from the ClientHello: an offer must include
    ``postgresql``; a direct connection must make an offer."""
    if hello.alpn is None:
        if direct:
            return AlpnRefusal(
                "received direct SSL connection request without ALPN protocol negotiation extension"
            )
        return None
    if ALPN_POSTGRESQL not in hello.alpn:
        offered = ", ".join(p.decode("ascii", "replace") for p in hello.alpn)
        return AlpnRefusal(
            f"client offered ALPN protocols ({offered}) but not postgresql",
            NO_APPLICATION_PROTOCOL_ALERT,
        )
    return None


def negotiated_alpn_refusal(selected: str | None, direct: bool) -> AlpnRefusal | None:
    """The same rule after a handshake, from ``SSLObject.selected_alpn_protocol()``.

    Python's server side does not fail a handshake whose offer lacks our protocol; it
    completes without ALPN. So for direct TLS "nothing selected" is refused either way;
    for SSLRequest TLS only :func:`alpn_refusal` (the ClientHello) can see a bad offer."""
    if selected is None:
        if direct:
            return AlpnRefusal(
                "received direct SSL connection request without ALPN protocol negotiation extension"
            )
        return None
    if selected != ALPN_POSTGRESQL.decode():
        return AlpnRefusal(f"received SSL connection request with unexpected ALPN {selected!r}")
    return None
