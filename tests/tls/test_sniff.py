"""Direct TLS detection and PostgreSQL 17's ALPN rule, from bytes."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.tls import sniff
from proxy.tls.sniff import ClientHello, ClientHelloError, FirstBytes
from proxy.wire.startup import encode_startup


def _hello(alpn: list[str] | None, server_name: str | None = "db.example.com") -> bytes:
    """A real ClientHello, as OpenSSL writes it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _records(handshake: bytes, size: int) -> bytes:
    """The same handshake bytes re-fragmented into records of ``size`` bytes."""
    chunks = [handshake[i : i + size] for i in range(0, len(handshake), size)]
    return b"".join(struct.pack("!BBBH", 0x16, 3, 1, len(c)) + c for c in chunks)


def test_classify_first_byte() -> None:
    assert sniff.classify(b"") is FirstBytes.NEED_MORE
    assert sniff.classify(_hello(["postgresql"])[:1]) is FirstBytes.TLS
    assert sniff.classify(encode_startup(3, 0, (("user", "a"),))) is FirstBytes.STARTUP
    assert sniff.classify(struct.pack("!II", 8, 80877103)) is FirstBytes.STARTUP  # SSLRequest
    assert sniff.classify(b"GET / HTTP/1.1\r\n") is FirstBytes.STARTUP  # the parser refuses it


def test_libpq17_style_hello() -> None:
    hello = sniff.parse_client_hello(_hello(["postgresql"]))
    assert hello == ClientHello((b"postgresql",), "db.example.com")
    assert sniff.alpn_refusal(hello, direct=True) is None
    assert sniff.alpn_refusal(hello, direct=False) is None


def test_no_alpn_refused_only_for_direct() -> None:
    hello = sniff.parse_client_hello(_hello(None, server_name=None))
    assert hello == ClientHello(None, None)
    refusal = sniff.alpn_refusal(hello, direct=True)
    assert refusal is not None and "without ALPN" in refusal.reason and refusal.alert == b""
    assert sniff.alpn_refusal(hello, direct=False) is None


def test_other_protocols_get_the_fatal_alert() -> None:
    hello = sniff.parse_client_hello(_hello(["h2", "http/1.1"]))
    assert hello is not None and hello.alpn == (b"h2", b"http/1.1")
    for direct in (True, False):
        refusal = sniff.alpn_refusal(hello, direct)
        assert refusal is not None
        assert refusal.alert == b"\x15\x03\x03\x00\x02\x02\x78"
        assert "h2, http/1.1" in refusal.reason


def test_incomplete_needs_more_at_every_cut() -> None:
    data = _hello(["postgresql"])
    for cut in range(len(data)):
        assert sniff.parse_client_hello(data[:cut]) is None, cut
    # bytes after the ClientHello (none expected, but harmless) do not matter
    assert sniff.parse_client_hello(data + b"\x16\x03") is not None


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_hello_split_over_records(size: int) -> None:
    data = _hello(["x", "postgresql"])
    handshake = data[5:]
    assert sniff.parse_client_hello(_records(handshake, size)) == ClientHello(
        (b"x", b"postgresql"), "db.example.com"
    )


def test_malformed_hellos_are_our_error() -> None:
    good = _hello(["postgresql"])
    with pytest.raises(ClientHelloError, match="record type 23"):
        sniff.parse_client_hello(b"\x17" + good[1:])
    with pytest.raises(ClientHelloError, match="bad version"):
        sniff.parse_client_hello(b"\x16\x09" + good[2:])
    with pytest.raises(ClientHelloError, match="invalid TLS record length"):
        sniff.parse_client_hello(b"\x16\x03\x01\xff\xff")
    with pytest.raises(ClientHelloError, match="handshake type 2"):
        sniff.parse_client_hello(good[:5] + b"\x02" + good[6:])
    huge = struct.pack("!BBBH", 0x16, 3, 1, 4) + b"\x01\x7f\xff\xff"
    with pytest.raises(ClientHelloError, match="exceeds"):
        sniff.parse_client_hello(huge)


def test_duplicate_alpn_extension_is_refused() -> None:
    ext = struct.pack("!HH", 16, 13) + struct.pack("!H", 11) + b"\x0apostgresql"
    body = (
        (b"\x03\x03" + b"r" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00")
        + struct.pack("!H", 2 * len(ext))
        + ext
        + ext
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    with pytest.raises(ClientHelloError, match="duplicate TLS extension 16"):
        sniff.parse_client_hello(_records(handshake, 1000))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=400))
def test_garbage_gives_none_or_our_error(garbage: bytes, cut: int) -> None:
    base = _HELLO
    data = base[:cut] + garbage
    try:
        result = sniff.parse_client_hello(data)
    except ClientHelloError:
        return
    assert result is None or isinstance(result, ClientHello)


_HELLO = _hello(["postgresql"])


def test_after_handshake_rule() -> None:
    assert sniff.negotiated_alpn_refusal("postgresql", direct=True) is None
    assert sniff.negotiated_alpn_refusal(None, direct=False) is None
    assert sniff.negotiated_alpn_refusal(None, direct=True) is not None
    assert sniff.negotiated_alpn_refusal("h2", direct=False) is not None
