"""Hostile or broken clients against the real proxy; other sessions must not notice."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.kit import unique
from tests.support import rawpg as r

pytestmark = pytest.mark.e2e

LOGIN_TIMEOUT = 1.0


@pytest.fixture
def small_proxy(proxy_factory: Any) -> Any:
    return proxy_factory(
        "--limits-max-message-size", "1MB", "--limits-login-timeout", f"{LOGIN_TIMEOUT}s"
    )


@pytest.fixture
def bystander(small_proxy: Any) -> Iterator[r.RawConn]:
    """A session opened before the bad client; it must keep working afterwards."""
    conn = r.RawConn(small_proxy.host, small_proxy.port)
    conn.login(extra={"application_name": unique("bystander")})
    yield conn
    assert r.types(conn.simple("select 1")) == "TDCZ", "the bystander session was disturbed"
    conn.close()
    with r.RawConn(small_proxy.host, small_proxy.port) as fresh:
        fresh.login()
        assert r.types(fresh.simple("select 2")) == "TDCZ", "new sessions must still work"
    assert small_proxy.returncode is None, small_proxy.stderr_text()


def _closed_without_service(proxy: Any, payload: bytes, timeout: float = 3.0) -> bytes:
    """Send ``payload`` as the first bytes; expect a close (maybe after one ErrorResponse)."""
    with r.RawConn(proxy.host, proxy.port) as conn:
        conn.send(payload)
        started = time.monotonic()
        got = conn.wait_closed(timeout)
        assert time.monotonic() - started < timeout
    assert not got.startswith((b"R", b"N", b"S", b"G")), f"bad startup was served: {got[:60]!r}"
    if got:
        assert got[:1] == b"E", f"only an ErrorResponse may come back: {got[:60]!r}"
        (length,) = struct.unpack("!I", got[1:5])
        msg = r.Msg("E", got[5 : 1 + length])
        assert msg.sqlstate in ("08P01", "28000", "0A000", "54000"), msg.fields()
        assert len(got) == 1 + length, "nothing after the ErrorResponse"
    return got


def test_startup_packet_too_large(small_proxy: Any, bystander: r.RawConn) -> None:
    packet = r.startup({"user": "postgres", "options": "-c x.y=" + "a" * 10_050})
    assert len(packet) > 10_000
    _closed_without_service(small_proxy, packet)


def test_startup_length_below_minimum(small_proxy: Any, bystander: r.RawConn) -> None:
    _closed_without_service(small_proxy, struct.pack("!I", 3) + b"\x00\x03\x00\x00")


def test_startup_absurd_length(small_proxy: Any, bystander: r.RawConn) -> None:
    """A 2 GB length must be refused at once, not awaited or allocated."""
    _closed_without_service(small_proxy, struct.pack("!II", 0x7FFFFFF0, 3 << 16) + b"user\x00")


def test_startup_unknown_code(small_proxy: Any, bystander: r.RawConn) -> None:
    _closed_without_service(small_proxy, struct.pack("!II", 8, 1234))


def test_startup_missing_terminator(small_proxy: Any, bystander: r.RawConn) -> None:
    body = struct.pack("!I", 3 << 16) + b"user\x00postgres\x00database\x00postgres"
    _closed_without_service(small_proxy, struct.pack("!I", len(body) + 4) + body)


def test_http_request_instead_of_startup(small_proxy: Any, bystander: r.RawConn) -> None:
    _closed_without_service(small_proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_garbage_after_startup(small_proxy: Any, bystander: r.RawConn) -> None:
    with r.RawConn(small_proxy.host, small_proxy.port) as conn:
        conn.login()
        conn.send(b"\xfe\x00\x00\x00\x08garbage!")
        msgs, closed = conn.drain(3)
        assert closed, f"a client sending an unknown message type must be closed: {msgs}"
        assert r.types(msgs) in ("", "E"), r.summary(msgs)
        if msgs:
            assert msgs[0].sqlstate == "08P01", msgs[0].fields()


def test_query_over_max_message_size(small_proxy: Any, bystander: r.RawConn) -> None:
    with r.RawConn(small_proxy.host, small_proxy.port, timeout=10) as conn:
        conn.login()
        big = r.query("select '" + "q" * 1_100_000 + "'")
        # the proxy may close before reading the whole message
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(big)
        msgs, closed = conn.drain(3)
        errors = [m for m in msgs if m.type == "E"]
        assert errors, f"an oversized Query needs an ErrorResponse, got {r.types(msgs)!r}"
        assert errors[0].sqlstate in ("08P01", "54000"), errors[0].fields()
        assert "T" not in r.types(msgs), "the oversized query must not have been executed"
        assert closed, "the connection must be closed after an oversized message"


def test_query_under_max_message_size_passes(small_proxy: Any, bystander: r.RawConn) -> None:
    with r.RawConn(small_proxy.host, small_proxy.port, timeout=10) as conn:
        conn.login()
        msgs = conn.simple("select length('" + "q" * 900_000 + "')")
        assert [m.row() for m in msgs if m.type == "D"] == [["900000"]]


@pytest.mark.parametrize(
    "partial",
    [b"", b"\x00\x00", r.startup({"user": "postgres"})[:12]],
    ids=["silent", "half-length", "half-packet"],
)
def test_login_timeout(small_proxy: Any, bystander: r.RawConn, partial: bytes) -> None:
    with r.RawConn(small_proxy.host, small_proxy.port) as conn:
        conn.send(partial)
        started = time.monotonic()
        conn.wait_closed(LOGIN_TIMEOUT + 3)
        assert time.monotonic() - started >= LOGIN_TIMEOUT * 0.5


def test_login_timeout_during_auth(small_proxy: Any, bystander: r.RawConn) -> None:
    """A client that gets the password request and never answers is closed too."""
    with r.RawConn(small_proxy.host, small_proxy.port) as conn:
        conn.send(r.startup({"user": "alice", "database": "app"}))
        assert conn.recv(3).type == "R"
        conn.wait_closed(LOGIN_TIMEOUT + 3)


def test_upstream_unreachable(proxy_factory: Any) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        dead_port = holder.getsockname()[1]  # bound, never listening: connections are refused
        proxy = proxy_factory("--upstream", f"127.0.0.1:{dead_port}")
        with r.RawConn(proxy.host, proxy.port) as conn:
            started = time.monotonic()
            conn.send(r.startup({"user": "postgres", "database": "postgres"}))
            msg = conn.recv(5)
            assert time.monotonic() - started < 3, "connection refused must be reported quickly"
            fields = msg.fields()
            assert msg.type == "E" and fields.get("C", "").startswith("08"), fields
            text = " ".join(fields.values())
            assert str(dead_port) in text or "upstream" in text.lower(), (
                f"the error should name the upstream: {fields}"
            )
            conn.wait_closed(3)
        assert proxy.returncode is None


def test_copydata_not_capped_by_max_message_size(small_proxy: Any, bystander: r.RawConn) -> None:
    """CopyData is streamed: a 5 MB CopyData message passes a 1 MB Query/Parse/Bind cap."""
    table = unique("t_bigcopy")
    with r.RawConn(small_proxy.host, small_proxy.port, timeout=20) as conn:
        conn.login()
        conn.simple(f"create table {table}(v text)")
        conn.send(r.query(f"copy {table} from stdin"))
        assert conn.recv().type == "G"
        row = b"y" * 5_000_000 + b"\n"
        conn.send(r.copy_data(row), r.copy_done())
        msgs = conn.recv_until("Z")
        assert r.summary(msgs) == [("C", "COPY 1"), ("Z", "I")], r.summary(msgs)
        rows = conn.simple(f"select length(v) from {table}")
        assert [m.row() for m in rows if m.type == "D"] == [["5000000"]]
        conn.simple(f"drop table {table}")


@pytest.mark.parametrize("kind", ["parse", "bind"])
def test_parse_bind_over_max_message_size(
    small_proxy: Any, bystander: r.RawConn, kind: str
) -> None:
    with r.RawConn(small_proxy.host, small_proxy.port, timeout=10) as conn:
        conn.login()
        if kind == "parse":
            big = r.parse("select '" + "p" * 1_100_000 + "'")
        else:
            big = r.parse("select $1::text", "", [25]) + r.bind("", "", ["b" * 1_100_000])
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(big, r.execute(), r.sync())
        msgs, closed = conn.drain(3)
        errors = [m for m in msgs if m.type == "E"]
        assert errors and errors[0].sqlstate in ("08P01", "54000"), r.summary(msgs)
        assert "D" not in r.types(msgs) and "C" not in r.types(msgs), r.summary(msgs)
        assert closed
