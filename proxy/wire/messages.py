"""Decoders for the messages the proxy must understand and encoders for the ones it creates.

Bodies are passed without the 5-byte header. Every decoder validates each field against the
message length and raises the caller-supplied error class (client and server bytes are both
untrusted, but the blame differs).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from proxy.errors import BackendProtocolError, FrontendProtocolError, ProtocolError

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")


def _cstr(body: bytes, pos: int, err: type[ProtocolError]) -> tuple[bytes, int]:
    if pos < len(body) and body[pos] == 0:
        # The unnamed statement or portal, most of what drivers send: an indexed byte is a
        # native read compiled, bytes.find a generic method call (~1,000 instructions).
        return b"", pos + 1
    end = body.find(b"\x00", pos)
    if end < 0:
        raise err("unterminated string in message")
    return body[pos:end], end + 1


def header(kind: int, body_length: int) -> bytes:
    return bytes((kind,)) + _U32.pack(body_length + 4)


def message(kind: int, body: bytes) -> bytes:
    return bytes((kind,)) + _U32.pack(len(body) + 4) + body


# --- frontend ------------------------------------------------------------------------------


def query_text(body: bytes) -> bytes:
    """The SQL of a Query ('Q') message, without its terminator."""
    if not body.endswith(b"\x00"):
        raise FrontendProtocolError("invalid Query message: missing terminator")
    return body[:-1]


class Parse:
    """A decoded Parse. A value (``Final`` fields), built per Parse message: a plain class,
    because a frozen dataclass's ``__init__`` stays interpreted in the compiled build."""

    __slots__ = ("name", "param_types", "query")

    def __init__(self, name: bytes, query: bytes, param_types: tuple[int, ...]) -> None:
        self.name: Final = name
        self.query: Final = query
        self.param_types: Final = param_types

    def __repr__(self) -> str:
        return f"Parse({self.name!r}, {self.query!r}, {self.param_types!r})"


def decode_parse(body: bytes) -> Parse:
    err = FrontendProtocolError
    name, pos = _cstr(body, 0, err)
    query, pos = _cstr(body, pos, err)
    if pos + 2 > len(body):
        raise err("invalid Parse message: truncated")
    (count,) = _I16.unpack_from(body, pos)
    pos += 2
    if count < 0 or pos + 4 * count != len(body):
        raise err("invalid Parse message: parameter type count does not match length")
    types = struct.unpack_from(f"!{count}I", body, pos) if count else ()
    return Parse(name, query, tuple(types))


@dataclass(frozen=True, slots=True)
class Bind:
    portal: bytes
    statement: bytes
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]


def bind_names(body: bytes) -> tuple[bytes, bytes]:
    """Portal and statement names of a Bind, without decoding parameters (hot path)."""
    err = FrontendProtocolError
    portal, pos = _cstr(body, 0, err)
    statement, _ = _cstr(body, pos, err)
    return portal, statement


def decode_bind(body: bytes) -> Bind:
    err = FrontendProtocolError
    portal, pos = _cstr(body, 0, err)
    statement, pos = _cstr(body, pos, err)
    end = len(body)

    def i16() -> int:
        nonlocal pos
        if pos + 2 > end:
            raise err("invalid Bind message: truncated")
        (v,) = _I16.unpack_from(body, pos)
        pos += 2
        return int(v)

    nformats = i16()
    if nformats < 0:
        raise err("invalid Bind message: negative format count")
    formats = tuple(i16() for _ in range(nformats))
    nparams = i16()
    if nparams < 0:
        raise err("invalid Bind message: negative parameter count")
    params: list[bytes | None] = []
    for _ in range(nparams):
        if pos + 4 > end:
            raise err("invalid Bind message: truncated parameter")
        (length,) = _I32.unpack_from(body, pos)
        pos += 4
        if length == -1:
            params.append(None)
            continue
        if length < 0 or pos + length > end:
            raise err("invalid Bind message: bad parameter length")
        params.append(body[pos : pos + length])
        pos += length
    nresults = i16()
    if nresults < 0 or pos + 2 * nresults != end:
        raise err("invalid Bind message: result format count does not match length")
    return Bind(portal, statement, formats, tuple(params))


def decode_execute(body: bytes) -> tuple[bytes, int]:
    """Portal name and row limit (0 = all) of an Execute."""
    portal, pos = _cstr(body, 0, FrontendProtocolError)
    if pos + 4 != len(body):
        raise FrontendProtocolError("invalid Execute message length")
    (limit,) = _I32.unpack_from(body, pos)
    return portal, int(limit)


def decode_target(body: bytes, what: str) -> tuple[int, bytes]:
    """Describe/Close: ('S' or 'P', name)."""
    if len(body) < 2 or body[0] not in b"SP":
        raise FrontendProtocolError(f"invalid {what} message: bad target type")
    name, pos = _cstr(body, 1, FrontendProtocolError)
    if pos != len(body):
        raise FrontendProtocolError(f"invalid {what} message length")
    return body[0], name


def function_oid(body: bytes) -> int:
    if len(body) < 4:
        raise FrontendProtocolError("invalid FunctionCall message")
    (oid,) = _U32.unpack_from(body, 0)
    return int(oid)


@dataclass(frozen=True, slots=True)
class FunctionCall:
    oid: int
    arg_formats: tuple[int, ...]
    args: tuple[bytes | None, ...]


def decode_function_call(body: bytes) -> FunctionCall:
    err = FrontendProtocolError
    try:
        (oid,) = _U32.unpack_from(body, 0)
        (nformats,) = _I16.unpack_from(body, 4)
        pos = 6
        formats = struct.unpack_from(f"!{nformats}h", body, pos) if nformats > 0 else ()
        pos += 2 * max(nformats, 0)
        (nargs,) = _I16.unpack_from(body, pos)
        pos += 2
        args: list[bytes | None] = []
        for _ in range(max(nargs, 0)):
            (length,) = _I32.unpack_from(body, pos)
            pos += 4
            if length < 0:
                args.append(None)
                continue
            if pos + length > len(body):
                raise err("invalid FunctionCall message: truncated argument")
            args.append(body[pos : pos + length])
            pos += length
        if nformats < 0 or nargs < 0 or pos + 2 != len(body):
            raise err("invalid FunctionCall message")
    except struct.error:
        raise err("invalid FunctionCall message: truncated") from None
    return FunctionCall(int(oid), tuple(formats), tuple(args))


# --- backend -------------------------------------------------------------------------------


def decode_fields(body: bytes, err: type[ProtocolError] = BackendProtocolError) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields keyed by their one-letter codes."""
    fields: dict[str, str] = {}
    pos = 0
    end = len(body)
    while pos < end:
        code = body[pos]
        if code == 0:
            if pos + 1 != end:
                raise err("ErrorResponse has data after its terminator")
            return fields
        value, pos = _cstr(body, pos + 1, err)
        fields[chr(code)] = value.decode("utf-8", "replace")
    raise err("ErrorResponse is missing its terminator")


def decode_command_tag(body: bytes) -> str:
    if not body.endswith(b"\x00"):
        raise BackendProtocolError("invalid CommandComplete message")
    return body[:-1].decode("utf-8", "replace")


def rows_from_tag(tag: str) -> int | None:
    """Row count in a command tag ("INSERT 0 5", "SELECT 3", "COPY 10"); None if it has none."""
    head, _, tail = tag.rpartition(" ")
    if head and tail.isdigit() and head.split(" ", 1)[0] in _COUNTING_TAGS:
        return int(tail)
    return None


_COUNTING_TAGS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "SELECT", "MERGE", "MOVE", "FETCH", "COPY", "CREATE"}
)


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = _cstr(body, 0, BackendProtocolError)
    value, pos = _cstr(body, pos, BackendProtocolError)
    if pos != len(body):
        raise BackendProtocolError("invalid ParameterStatus length")
    return name.decode("utf-8", "replace"), value.decode("utf-8", "replace")


def decode_backend_key(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8 or len(body) > 4 + 256:
        raise BackendProtocolError("invalid BackendKeyData length")
    (pid,) = _U32.unpack_from(body, 0)
    return int(pid), body[4:]


def auth_code(body: bytes) -> int:
    if len(body) < 4:
        raise BackendProtocolError("invalid Authentication message")
    (code,) = _I32.unpack_from(body, 0)
    return int(code)


def sasl_mechanisms(body: bytes) -> list[bytes]:
    """Mechanism names of an AuthenticationSASL (code 10) body."""
    if not body.endswith(b"\x00\x00"):
        raise BackendProtocolError("invalid AuthenticationSASL message")
    return [m for m in body[4:-1].split(b"\x00") if m]


def encode_sasl_mechanisms(mechanisms: list[bytes]) -> bytes:
    body = _I32.pack(10) + b"".join(m + b"\x00" for m in mechanisms) + b"\x00"
    return message(ord("R"), body)


# --- messages the proxy creates -----------------------------------------------------------


def _fields(severity: str, sqlstate: str, text: str, detail: str, hint: str) -> bytes:
    parts = [
        b"S" + severity.encode(),
        b"V" + severity.encode(),
        b"C" + sqlstate.encode(),
        b"M" + text.encode(),
    ]
    if detail:
        parts.append(b"D" + detail.encode())
    if hint:
        parts.append(b"H" + hint.encode())
    return b"\x00".join(parts) + b"\x00\x00"


def error_response(
    sqlstate: str, text: str, *, severity: str = "ERROR", detail: str = "", hint: str = ""
) -> bytes:
    return message(ord("E"), _fields(severity, sqlstate, text, detail, hint))


def notice_response(text: str, *, detail: str = "", severity: str = "WARNING") -> bytes:
    return message(ord("N"), _fields(severity, "01000", text, detail, ""))


def ready_for_query(status: int) -> bytes:
    return b"Z\x00\x00\x00\x05" + bytes((status,))


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return message(ord("K"), _U32.pack(pid) + secret)


def negotiate_protocol_version(newest_minor: int, unsupported: list[str]) -> bytes:
    # The field is the whole version code (major << 16 | minor), as PostgreSQL sends it.
    body = _U32.pack((3 << 16) | newest_minor) + _I32.pack(len(unsupported))
    body += b"".join(o.encode() + b"\x00" for o in unsupported)
    return message(ord("v"), body)


def decode_parameter_description(body: bytes) -> tuple[int, ...]:
    """ParameterDescription: the type OID of each parameter of a prepared statement."""
    if len(body) < 2:
        raise BackendProtocolError("invalid ParameterDescription message")
    (count,) = struct.unpack_from("!H", body, 0)
    if len(body) != 2 + 4 * count:
        raise BackendProtocolError("invalid ParameterDescription message")
    return struct.unpack_from(f"!{count}I", body, 2)


def decode_negotiate_protocol_version(body: bytes) -> tuple[int, list[str]]:
    """NegotiateProtocolVersion: the newest minor version the sender supports and the
    protocol options it did not recognise."""
    if len(body) < 8:
        raise BackendProtocolError("invalid NegotiateProtocolVersion message")
    newest, count = struct.unpack_from("!II", body, 0)
    pos = 8
    names = []
    for _ in range(count):
        name, pos = _cstr(body, pos, BackendProtocolError)
        names.append(name.decode("utf-8", "replace"))
    return newest & 0xFFFF, names


def query(sql: str) -> bytes:
    return message(ord("Q"), sql.encode() + b"\x00")


def parse(name: bytes, sql: str) -> bytes:
    return message(ord("P"), name + b"\x00" + sql.encode() + b"\x00" + b"\x00\x00")


def bind_missing_statement(statement: bytes) -> bytes:
    """A Bind of the unnamed portal to ``statement`` with no parameters."""
    return message(ord("B"), b"\x00" + statement + b"\x00" + b"\x00\x00" * 3)


SYNC = b"S\x00\x00\x00\x04"
FLUSH = b"H\x00\x00\x00\x04"
TERMINATE = b"X\x00\x00\x00\x04"
