"""Codec tier: decoders validate every field; encoders produce what PostgreSQL sends."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import BackendProtocolError, FrontendProtocolError, ProtocolError
from proxy.wire import messages as m
from proxy.wire import startup as s


def test_parse_round_trip() -> None:
    body = m.parse(b"stmt", "SELECT $1")[5:]
    parsed = m.decode_parse(body)
    assert (parsed.name, parsed.query, parsed.param_types) == (b"stmt", b"SELECT $1", ())


def test_bind_with_null_and_values() -> None:
    body = (
        b"p\x00s\x00"
        + struct.pack("!hh", 1, 0)
        + struct.pack("!h", 2)
        + struct.pack("!i", 3)
        + b"abc"
        + struct.pack("!i", -1)
        + struct.pack("!h", 0)
    )
    bind = m.decode_bind(body)
    assert bind.portal == b"p" and bind.statement == b"s"
    assert bind.params == (b"abc", None)
    assert m.bind_names(body) == (b"p", b"s")


def test_bind_with_parameter_overrunning_message_is_refused() -> None:
    body = b"\x00\x00" + struct.pack("!hh", 0, 1) + struct.pack("!i", 100) + b"abc"
    with pytest.raises(FrontendProtocolError):
        m.decode_bind(body)


def test_error_fields_and_missing_sqlstate() -> None:
    fields = m.decode_fields(m.error_response("42501", "no", detail="rule x")[5:])
    assert fields == {"S": "ERROR", "V": "ERROR", "C": "42501", "M": "no", "D": "rule x"}
    # An ErrorResponse without SQLSTATE (PgBouncer CVE-2026-6666) decodes; callers default it.
    assert "C" not in m.decode_fields(b"SERROR\x00Mboom\x00\x00")


def test_error_without_terminator_is_a_backend_error() -> None:
    with pytest.raises(BackendProtocolError):
        m.decode_fields(b"SERROR\x00Mboom\x00")


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("INSERT 0 5", 5),
        ("SELECT 3", 3),
        ("UPDATE 0", 0),
        ("COPY 10", 10),
        ("CREATE TABLE", None),
        ("BEGIN", None),
        ("MERGE 2", 2),
        ("FETCH 7", 7),
    ],
)
def test_rows_from_tag(tag: str, rows: int | None) -> None:
    assert m.rows_from_tag(tag) == rows


def test_startup_round_trip() -> None:
    packet = s.encode_startup(3, 0, (("user", "u"), ("database", "d")))
    msg = s.parse_startup(packet)
    assert isinstance(msg, s.StartupMessage)
    assert msg.get("user") == "u" and msg.get("database") == "d" and msg.minor == 0


def test_startup_requires_terminator() -> None:
    packet = s.encode_startup(3, 0, (("user", "u"),))[:-1]
    packet = struct.pack("!I", len(packet)) + packet[4:]
    with pytest.raises(FrontendProtocolError):
        s.parse_startup(packet)


def test_startup_limits_checked_on_the_length_word() -> None:
    with pytest.raises(FrontendProtocolError):
        s.startup_length(struct.pack("!I", 20_000))
    with pytest.raises(FrontendProtocolError):
        s.startup_length(struct.pack("!I", 3))
    assert s.startup_length(b"\x00\x00") is None


def test_cancel_request_keys_of_both_versions() -> None:
    short = s.parse_startup(s.encode_cancel(42, b"abcd"))
    long = s.parse_startup(s.encode_cancel(42, bytes(32)))
    assert isinstance(short, s.CancelRequest) and short.secret == b"abcd"
    assert isinstance(long, s.CancelRequest) and len(long.secret) == 32


def test_protocol_2_is_refused_by_name() -> None:
    packet = struct.pack("!II", 9, 2 << 16) + b"\x00"
    with pytest.raises(FrontendProtocolError, match=r"unsupported frontend protocol 2\.0"):
        s.parse_startup(packet)


@given(st.binary(min_size=8, max_size=200))
def test_garbage_startup_raises_only_protocol_errors(data: bytes) -> None:
    packet = struct.pack("!I", len(data) + 4) + data
    with contextlib.suppress(ProtocolError):
        s.parse_startup(packet)
