"""The authentication messages of a SASL exchange (both directions), sans-IO.

Server side: ``AuthenticationSASL`` (R, code 10, the mechanism list), ``SASLContinue`` (11),
``SASLFinal`` (12) and ``AuthenticationOk`` (0). Client side: the ``p`` message, which is a
``SASLInitialResponse`` (mechanism name, then an Int32 length and the data) first and a
plain ``SASLResponse`` (just the data) after.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxy.errors import FrontendProtocolError
from proxy.wire.messages import encode_sasl_mechanisms, message

AUTH_OK = 0
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I32 = struct.Struct("!i")
# Mechanism names are short; PostgreSQL caps the whole message by its own limits.
MAX_SASL_DATA = 10_000


def _auth(code: int, data: bytes = b"") -> bytes:
    return message(ord("R"), _I32.pack(code) + data)


def authentication_sasl(mechanisms: list[str]) -> bytes:
    return encode_sasl_mechanisms([m.encode("ascii") for m in mechanisms])


def authentication_sasl_continue(data: bytes) -> bytes:
    return _auth(AUTH_SASL_CONTINUE, data)


def authentication_sasl_final(data: bytes) -> bytes:
    return _auth(AUTH_SASL_FINAL, data)


def authentication_ok() -> bytes:
    return _auth(AUTH_OK)


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    mechanism: str
    data: bytes | None  # None: the client sent length -1 (no initial response)


def decode_sasl_initial_response(body: bytes) -> SASLInitialResponse:
    end = body.find(b"\x00")
    if end < 0:
        raise FrontendProtocolError("invalid SASLInitialResponse: unterminated mechanism name")
    try:
        mechanism = body[:end].decode("ascii")
    except UnicodeDecodeError:
        raise FrontendProtocolError("invalid SASLInitialResponse: mechanism name") from None
    if len(body) < end + 5:
        raise FrontendProtocolError("invalid SASLInitialResponse: truncated")
    (length,) = _I32.unpack_from(body, end + 1)
    data = body[end + 5 :]
    if length == -1 and not data:
        return SASLInitialResponse(mechanism, None)
    if length != len(data) or length > MAX_SASL_DATA:
        raise FrontendProtocolError("invalid SASLInitialResponse: length does not match")
    return SASLInitialResponse(mechanism, data)


def encode_sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(ord("p"), mechanism.encode("ascii") + b"\x00" + _I32.pack(len(data)) + data)


def encode_sasl_response(data: bytes) -> bytes:
    return message(ord("p"), data)
