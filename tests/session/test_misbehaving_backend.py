"""Tier 2: the real proxy in front of a fake backend that misbehaves.

Each case: the client gets a well-formed ErrorResponse (connection-class SQLSTATE) or a clean
close, never the backend's junk; the proxy logs a diagnostic line; and it keeps serving: a
second client hitting the same misbehaviour gets the same clean treatment and the proxy
process is still running.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import pytest

from tests.session.fakebackend import FakeBackend, Peer, Script, error, login_ok, message
from tests.support import rawpg

CONNECTION_CLASS = ("08P01", "08006", "08001", "08000")


async def _garbage_after_startup(peer: Peer) -> None:
    await peer.read_startup()
    await peer.send(b"\x01\x00\x00\x00\x0cgarbage!" + b"\xff" * 64)
    await asyncio.sleep(30)


async def _oversized_message(peer: Peer) -> None:
    await peer.read_startup()
    await peer.send(b"R" + struct.pack("!I", 0x7FFFFFF0) + b"\x00" * 16)
    await asyncio.sleep(30)  # never send the rest: the proxy must not wait for 2 GB


async def _close_mid_message(peer: Peer) -> None:
    await peer.read_startup()
    await peer.send(login_ok())
    await peer.read_message()  # the client's Query
    row_description = message(b"T", struct.pack("!H", 1) + b"col\x00" + b"\x00" * 18)
    await peer.send(row_description[:9])


async def _never_answers(peer: Peer) -> None:
    await peer.read_startup()
    await asyncio.sleep(30)


async def _fatal_without_sqlstate_at_startup(peer: Peer) -> None:
    await peer.read_startup()
    await peer.send(error({"S": "FATAL", "M": "no sqlstate here"}))


SCRIPTS: dict[str, Script] = {
    "garbage": _garbage_after_startup,
    "oversized": _oversized_message,
    "close-mid-message": _close_mid_message,
    "never-answers": _never_answers,
    "fatal-without-sqlstate": _fatal_without_sqlstate_at_startup,
}


def _outcome(conn: rawpg.RawConn, timeout: float) -> tuple[list[rawpg.Msg], bool]:
    """Messages received until the connection closes (True) or ``timeout`` passes (False).

    Fails if the connection closes in the middle of a message: junk was relayed.
    """
    try:
        return conn.drain(timeout)
    except rawpg.Closed:
        raise AssertionError(
            f"half a message reached the client: {bytes(conn.buf)[:60]!r}"
        ) from None


def _client_session(proxy: Any, query_first: bool) -> tuple[list[rawpg.Msg], bool]:
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.send(rawpg.startup({"user": "postgres", "database": "postgres"}))
        if query_first:
            login = conn.recv_until("Z", 5)
            assert rawpg.types(login)[0] == "R", rawpg.summary(login)
            conn.send(rawpg.query("select 1"))
        return _outcome(conn, 6)


def _assert_clean(msgs: list[rawpg.Msg], closed: bool, case: str) -> None:
    assert closed, f"{case}: the client was left hanging: {rawpg.summary(msgs)}"
    kinds = rawpg.types(msgs)
    assert kinds in ("", "E"), f"{case}: unexpected messages relayed: {rawpg.summary(msgs)}"
    if msgs:
        fields = msgs[0].fields()
        assert fields.get("S") in ("FATAL", "ERROR"), fields
        # The backend's own FATAL may be relayed as it came (without SQLSTATE); anything the
        # proxy says itself must carry a connection-class SQLSTATE.
        relayed = (
            case.startswith("fatal-without-sqlstate") and fields.get("M") == "no sqlstate here"
        )
        assert relayed or fields.get("C") in CONNECTION_CLASS, f"{case}: {fields}"


@pytest.mark.parametrize("case", list(SCRIPTS))
def test_misbehaving_backend(proxy_factory: Any, case: str) -> None:
    with FakeBackend(SCRIPTS[case]) as fake:
        proxy = proxy_factory(
            "--upstream",
            f"127.0.0.1:{fake.port}",
            "--limits-login-timeout",
            "2s",
            "--limits-connect-timeout",
            "2s",
        )
        before = len(proxy.stderr_text())
        for attempt in (1, 2):
            started = time.monotonic()
            msgs, closed = _client_session(proxy, query_first=case == "close-mid-message")
            _assert_clean(msgs, closed, f"{case} (client {attempt})")
            assert time.monotonic() - started < 5, f"{case}: took too long"
            assert proxy.returncode is None, f"{case}: the proxy died:\n{proxy.stderr_text()}"
        assert fake.connections == 2
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not proxy.stderr_text()[before:].strip():
            time.sleep(0.05)
        if case == "fatal-without-sqlstate":
            # A relayed backend FATAL at login is an auth failure: the audit trail records it.
            failures = proxy.wait_for(lambda e: e["type"] == "auth_failure", 5, count=2)
            assert all(f["error"] and "no sqlstate here" in f["error"] for f in failures), failures
            return
        assert proxy.stderr_text()[before:].strip(), f"{case}: no diagnostic line on stderr"


async def _error_without_sqlstate_after_query(peer: Peer) -> None:
    await peer.read_startup()
    await peer.send(login_ok())
    while True:
        kind, _ = await peer.read_message()
        if kind == b"X":
            return
        await peer.send(
            error({"S": "ERROR", "V": "ERROR", "M": "an error with no code"}) + message(b"Z", b"I")
        )


def test_error_without_sqlstate_mid_session(proxy_factory: Any) -> None:
    """Relay it (well-formed, the session stays usable) or end the session with 08P01."""
    with FakeBackend(_error_without_sqlstate_after_query) as fake:
        proxy = proxy_factory("--upstream", f"127.0.0.1:{fake.port}")
        for _ in range(2):
            with rawpg.RawConn(proxy.host, proxy.port) as conn:
                conn.login()
                conn.send(rawpg.query("select 1"))
                msgs, closed = _outcome(conn, 3)
                assert msgs and msgs[0].type == "E", rawpg.summary(msgs)
                if closed:
                    # Ending the session is fine, but then say why with a connection-class error
                    # rather than leave the client with a plain ERROR and no ReadyForQuery.
                    codes = [m.sqlstate for m in msgs if m.type == "E"]
                    assert codes[-1] in CONNECTION_CLASS, (
                        f"session closed after {rawpg.summary(msgs)}; stderr:\n"
                        f"{proxy.stderr_text()[-800:]}"
                    )
                else:
                    assert rawpg.types(msgs) == "EZ", rawpg.summary(msgs)
                    assert "an error with no code" in msgs[0].fields().get("M", "")
                    assert rawpg.types(conn.simple("select 2")) == "EZ", "session still usable"
        assert proxy.returncode is None, proxy.stderr_text()
        queries = proxy.wait_for(lambda e: e["type"] == "query", count=2)
        assert all(e["error"] for e in queries), queries


class _BlackHoleCancels:
    """Logs clients in; never answers a Query; swallows CancelRequests and never closes them."""

    def __init__(self) -> None:
        self.cancels_received = 0
        self.cancels_open = 0

    async def __call__(self, peer: Peer) -> None:
        (length,) = struct.unpack("!I", await peer.reader.readexactly(4))
        body = await peer.reader.readexactly(length - 4)
        if struct.unpack_from("!I", body)[0] == rawpg.CANCEL_CODE:
            self.cancels_received += 1
            self.cancels_open += 1
            try:
                while await peer.reader.read(1024):  # hold the socket until the proxy gives up
                    pass
            finally:
                self.cancels_open -= 1
            return
        await peer.send(login_ok())
        while True:
            kind, _ = await peer.read_message()
            if kind == b"X":
                return


def test_cancel_to_black_hole_upstream_times_out(proxy_factory: Any) -> None:
    """Odyssey's cancel-leak case: forwarded cancels must time out, not pile up."""
    script = _BlackHoleCancels()
    with FakeBackend(script) as fake:
        proxy = proxy_factory(
            "--upstream", f"127.0.0.1:{fake.port}", "--limits-cancel-timeout", "1s"
        )
        with rawpg.RawConn(proxy.host, proxy.port) as conn:
            conn.login()
            assert conn.key is not None
            conn.send(rawpg.query("select pg_sleep(30)"))  # the fake never answers it
            for _ in range(10):
                with rawpg.RawConn(proxy.host, proxy.port) as cancel:
                    cancel.send(rawpg.cancel_request(*conn.key))
                    assert cancel.wait_closed(3) == b"", "nothing may be written on a cancel socket"
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and script.cancels_received < 10:
                time.sleep(0.05)
            assert script.cancels_received == 10, script.cancels_received
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and script.cancels_open:
                time.sleep(0.05)
            assert script.cancels_open == 0, (
                f"{script.cancels_open} forwarded cancels still open after the 1s cancel timeout"
            )
        with rawpg.RawConn(proxy.host, proxy.port) as other:
            other.login()
        assert proxy.returncode is None, proxy.stderr_text()
