"""Graceful shutdown: stop accepting, let running statements finish (up to the grace
period), close every session with 57P01, and flush the audit trail last."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.support import rawpg

pytestmark = pytest.mark.e2e


def test_sigterm_lets_the_running_statement_finish(proxy_factory: Any) -> None:
    proxy = proxy_factory("--shutdown-grace", "20s")
    idle = rawpg.RawConn(proxy.host, proxy.port, 10)
    idle.login(extra={"application_name": "idle-client"})
    result: dict[str, Any] = {}

    def run_long() -> None:
        # Autocommit: nothing is owed after the statement, so the 57P01 that ends the (then
        # idle) session during shutdown cannot fail a COMMIT at the end of the block.
        with psycopg.connect(proxy.dsn(), application_name="busy-client", autocommit=True) as conn:
            result["value"] = conn.execute("select pg_sleep(1.5), 42").fetchone()

    busy = threading.Thread(target=run_long)
    busy.start()
    deadline = time.monotonic() + 10
    while not [e for e in proxy.events("session_start") if e["application_name"] == "busy-client"]:
        assert time.monotonic() < deadline, "busy client never started"
        time.sleep(0.05)
    time.sleep(0.3)  # let the pg_sleep reach the server
    proxy.signal(signal.SIGTERM)
    # The idle client is told at once, with the code PostgreSQL uses on shutdown.
    msgs, closed = idle.drain(5)
    idle.close()
    assert closed and msgs and msgs[-1].type == "E" and msgs[-1].sqlstate == "57P01"
    busy.join(15)
    assert result.get("value") == ("", 42)  # the running statement completed
    assert proxy.stop(timeout=15) == 0
    events = proxy.events()
    ends = [e for e in events if e["type"] == "session_end"]
    assert {e["application_name"] for e in ends} >= {"idle-client", "busy-client"}
    assert any(
        e["type"] == "query" and e["statement"] == "select pg_sleep(1.5), 42" for e in events
    )


def test_grace_period_bounds_the_wait(proxy_factory: Any) -> None:
    proxy = proxy_factory("--shutdown-grace", "1s")
    conn = rawpg.RawConn(proxy.host, proxy.port, 10)
    conn.login()
    conn.send(rawpg.query("select pg_sleep(30)"))
    time.sleep(0.3)
    started = time.monotonic()
    proxy.signal(signal.SIGTERM)
    msgs, closed = conn.drain(10)
    conn.close()
    assert closed and msgs[-1].sqlstate == "57P01", rawpg.summary(msgs)
    assert proxy.stop(timeout=10) == 0
    assert time.monotonic() - started < 6


def test_a_second_signal_stops_now_and_names_what_it_waited_for(proxy_factory: Any) -> None:
    proxy = proxy_factory("--shutdown-grace", "60s")
    conn = rawpg.RawConn(proxy.host, proxy.port, 10)
    conn.login(extra={"application_name": "long-report"})
    conn.send(rawpg.query("select pg_sleep(30)"))
    time.sleep(0.3)  # let the statement reach the server
    proxy.signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "more for 1 sessions" not in proxy.stderr_text():
        assert time.monotonic() < deadline, proxy.stderr_text()
        time.sleep(0.05)
    waiting = [line for line in proxy.stderr_text().splitlines() if "more for 1 sessions" in line]
    assert waiting and "(active" in waiting[0] and "select pg_sleep(30)" in waiting[0]
    started = time.monotonic()
    proxy.signal(signal.SIGINT)  # the operator presses Ctrl-C again
    msgs, closed = conn.drain(10)
    conn.close()
    assert closed and msgs[-1].sqlstate == "57P01", rawpg.summary(msgs)
    assert proxy.stop(timeout=10) == 0
    assert time.monotonic() - started < 5  # not the 60 s grace
    assert "second signal: stopping now, 1 sessions get 57P01" in proxy.stderr_text()
    end = [e for e in proxy.events("session_end") if e["application_name"] == "long-report"]
    assert end and end[0]["reason"] == "shutdown"


def test_readiness_and_stopping_are_told_to_systemd(proxy_factory: Any, tmp_path: Any) -> None:
    import socket

    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(20)
    try:
        proxy = proxy_factory(env={"NOTIFY_SOCKET": str(path)})
        assert listener.recv(4096).decode().split("\n") == ["READY=1", "STATUS=serving"]
        proxy.signal(signal.SIGHUP)
        reloading = listener.recv(4096).decode().split("\n")
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        assert listener.recv(4096).decode().split("\n") == ["READY=1", "STATUS=serving"]
        proxy.signal(signal.SIGTERM)
        assert listener.recv(4096).decode().split("\n") == ["STOPPING=1", "STATUS=shutting down"]
        assert proxy.stop(timeout=10) == 0
    finally:
        listener.close()
