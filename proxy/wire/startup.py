"""The first packet of a connection: it has no type byte, only a length and a code."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxy.errors import FrontendProtocolError
from proxy.wire import constants as c

_HEADER = struct.Struct("!II")


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: bytes  # 4 bytes for protocol 3.0, up to 256 for 3.2


@dataclass(frozen=True, slots=True)
class StartupMessage:
    major: int
    minor: int
    params: tuple[tuple[str, str], ...]  # in the order the client sent them

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.params:
            if key == name:
                return value
        return default


Startup = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def startup_length(buf: bytes | bytearray, max_length: int = c.MAX_STARTUP_PACKET) -> int | None:
    """Length of the first packet in ``buf`` (including its length word), or None if fewer
    than 4 bytes arrived. Raises before anything is allocated if the length is impossible."""
    if len(buf) < 4:
        return None
    (length,) = struct.unpack_from("!I", buf, 0)
    if length < 8:
        raise FrontendProtocolError(f"invalid startup packet length {length}")
    if length > max_length:
        raise FrontendProtocolError(f"startup packet of {length} bytes exceeds {max_length}")
    return int(length)


def parse_startup(packet: bytes) -> Startup:
    """Decode one complete first packet (length word included)."""
    length, code = _HEADER.unpack_from(packet, 0)
    if length != len(packet):
        raise FrontendProtocolError("startup packet length mismatch")
    if code == c.SSL_REQUEST_CODE:
        if length != 8:
            raise FrontendProtocolError("invalid SSLRequest length")
        return SSLRequest()
    if code == c.GSSENC_REQUEST_CODE:
        if length != 8:
            raise FrontendProtocolError("invalid GSSENCRequest length")
        return GSSENCRequest()
    if code == c.CANCEL_REQUEST_CODE:
        secret = packet[12:]
        if length < 16 or len(secret) > 256:
            raise FrontendProtocolError("invalid CancelRequest length")
        (pid,) = struct.unpack_from("!I", packet, 8)
        return CancelRequest(pid, bytes(secret))
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise FrontendProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2",
            c.SQLSTATE_FEATURE_NOT_SUPPORTED,
        )
    return StartupMessage(major, minor, _parse_params(packet, 8))


def _parse_params(packet: bytes, offset: int) -> tuple[tuple[str, str], ...]:
    if not packet.endswith(b"\x00"):
        raise FrontendProtocolError("invalid startup packet layout: missing terminator")
    fields = packet[offset:-1].split(b"\x00")
    # A well-formed list is name\0value\0...name\0value\0 then the final \0: after removing
    # the terminator, the split leaves an empty last element when the list is non-empty.
    if fields == [b""]:
        fields = []
    elif fields[-1] == b"":
        fields.pop()
    else:
        raise FrontendProtocolError("invalid startup packet layout")
    if len(fields) % 2:
        raise FrontendProtocolError("invalid startup packet layout: odd number of fields")
    try:
        pairs = [(fields[i].decode(), fields[i + 1].decode()) for i in range(0, len(fields), 2)]
    except UnicodeDecodeError:
        raise FrontendProtocolError("invalid startup packet: parameters are not UTF-8") from None
    if any(not name for name, _ in pairs):
        raise FrontendProtocolError("invalid startup packet layout: empty parameter name")
    return tuple(pairs)


def encode_startup(major: int, minor: int, params: tuple[tuple[str, str], ...]) -> bytes:
    body = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in params) + b"\x00"
    return struct.pack("!II", 8 + len(body), (major << 16) | minor) + body


def encode_cancel(pid: int, secret: bytes) -> bytes:
    return struct.pack("!III", 12 + len(secret), c.CANCEL_REQUEST_CODE, pid) + secret
