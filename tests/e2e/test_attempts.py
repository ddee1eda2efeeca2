"""Every connection attempt leaves a record, with real clients (issue 9 §5)."""

from __future__ import annotations

import socket
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import wait_until
from tests.support import rawpg

pytestmark = pytest.mark.e2e


def _ends(proxy: Any, reason: str) -> list[dict[str, Any]]:
    return [e for e in proxy.events("session_end") if e.get("reason") == reason]


def test_refused_and_failed_attempts_are_recorded(proxy_factory: Any, pg: Any) -> None:
    proxy = proxy_factory()
    with rawpg.RawConn(proxy.host, proxy.port) as raw:
        raw.send(b"X\x00\x00\x00\x04")
        raw.wait_closed()
    with rawpg.RawConn(proxy.host, proxy.port) as raw:
        raw.send(rawpg.startup({"user": "alice", "database": "app", "replication": "true"}))
        raw.drain(timeout=5)
    with rawpg.RawConn(proxy.host, proxy.port) as raw:
        raw.send(rawpg.ssl_request())
        assert raw.recv_bytes(1) == b"N"  # a client with sslmode=require leaves now
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(user="alice", password="wrong"), connect_timeout=5)
    for reason in ("invalid_startup_packet", "replication_refused", "encryption_refused"):
        wait_until(lambda r=reason: _ends(proxy, r), 10, reason)  # type: ignore[misc]
    failed = wait_until(lambda: _ends(proxy, "auth_failed"), 10, "auth_failed end")
    assert failed[0]["user"] == "alice" and failed[0]["started"] is False
    assert all(e["client_addr"] == "127.0.0.1" for e in proxy.events("session_end"))


def test_unreachable_upstream_is_recorded(proxy_factory: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    proxy = proxy_factory("--upstream", f"127.0.0.1:{dead_port}")
    with pytest.raises(psycopg.OperationalError, match="could not connect to the upstream"):
        psycopg.connect(proxy.dsn(), connect_timeout=5)
    [end] = wait_until(lambda: _ends(proxy, "upstream_unreachable"), 10, "record")
    assert end["user"] == "postgres" and end["started"] is False
