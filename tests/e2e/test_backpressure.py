"""Back-pressure: a client that stops reading must not make the proxy buffer the result."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.kit import admin, unique, wait_until
from tests.support import rawpg as r

pytestmark = pytest.mark.e2e

RESULT_MB = 120
ALLOWED_GROWTH_MB = 40


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _backend_blocked_on_client(pg: Any, app: str) -> bool:
    with admin(pg) as conn:
        row = conn.execute(
            "select wait_event from pg_stat_activity where application_name = %s"
            " and state = 'active'",
            (app,),
        ).fetchone()
    return row is not None and row[0] == "ClientWrite"


def test_slow_reader_does_not_inflate_proxy(proxy_factory: Any, pg: Any) -> None:
    proxy = proxy_factory()
    app = unique("slow_reader")
    with r.RawConn(proxy.host, proxy.port) as warm:
        warm.login()
        warm.simple("select repeat('w', 1000) from generate_series(1, 2000)")
    before = _rss_mb(proxy.pid)
    with r.RawConn(proxy.host, proxy.port, timeout=20) as conn:
        conn.login(extra={"application_name": app})
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        conn.send(r.query(f"select repeat('x', 1000) from generate_series(1, {RESULT_MB * 1000})"))
        # The server can only block on writing when the proxy stopped reading from it.
        wait_until(
            lambda: _backend_blocked_on_client(pg, app),
            15,
            "the backend to block on ClientWrite (the proxy pausing its reads)",
        )
        growth = _rss_mb(proxy.pid) - before
        assert growth < ALLOWED_GROWTH_MB, (
            f"proxy RSS grew by {growth:.0f} MB while a client did not read a {RESULT_MB} MB result"
        )
        # Now read a little: the stream resumes.
        first = [conn.recv(5) for _ in range(10)]
        assert r.types(first) == "T" + "D" * 9
    with r.RawConn(proxy.host, proxy.port) as other:
        other.login()
        assert r.types(other.simple("select 1")) == "TDCZ"
