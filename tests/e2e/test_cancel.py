"""CancelRequest through the proxy: psycopg, asyncpg, raw, psql Ctrl-C; precise and late cancels."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.e2e.kit import Target, admin, sleep_until_cancelled, unique, wait_until
from tests.support import rawpg

pytestmark = pytest.mark.e2e


def _running(pg: Any, app: str, needle: str = "pg_sleep") -> int | None:
    """The pid of the backend of ``app`` while it is executing ``needle``."""
    with admin(pg) as conn:
        row = conn.execute(
            "select pid from pg_stat_activity where application_name = %s and state = 'active'"
            " and query like %s",
            (app, f"%{needle}%"),
        ).fetchone()
    return int(row[0]) if row else None


def test_psycopg_cancel(target: Target, pg: Any) -> None:
    app, other_app = unique("cancel_me"), unique("cancel_other")
    with (
        target.connect(application_name=app) as victim,
        target.connect(application_name=other_app) as bystander,
        ThreadPoolExecutor(2) as pool,
    ):
        victim_result = pool.submit(sleep_until_cancelled, victim)
        bystander_result = pool.submit(
            lambda: bystander.execute("select pg_sleep(1.5), 'still here'").fetchone()
        )
        wait_until(lambda: _running(pg, app), 5, "the victim's pg_sleep to start")
        wait_until(lambda: _running(pg, other_app), 5, "the bystander's pg_sleep to start")
        started = time.monotonic()
        victim.cancel()
        assert victim_result.result(timeout=5) == "57014"
        assert time.monotonic() - started < 3, "cancel took too long"
        assert bystander_result.result(timeout=10) == ("", "still here"), (
            "a cancel must hit only its own session"
        )
        assert victim.execute("select 'alive'").fetchone() == ("alive",)


def test_asyncpg_timeout_cancels(target: Target, pg: Any) -> None:
    app = unique("asyncpg_cancel")

    async def run() -> float:
        conn = await asyncpg.connect(
            target.dsn(), timeout=5, server_settings={"application_name": app}
        )
        try:
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetch("select pg_sleep(30)", timeout=0.5)
            started = time.monotonic()
            assert await asyncio.wait_for(conn.fetchval("select 7"), 5) == 7
            return time.monotonic() - started
        finally:
            await asyncio.wait_for(conn.close(), 5)

    elapsed = asyncio.run(run())
    assert elapsed < 3, f"next query waited {elapsed:.1f}s: the sleep was not cancelled"
    assert _running(pg, app) is None


def _cancel(target: Target, key: tuple[int, bytes]) -> bytes:
    """Send a CancelRequest on a new socket; return whatever came back before the close."""
    with rawpg.RawConn(target.host, target.port) as sock:
        sock.send(rawpg.cancel_request(*key))
        return sock.wait_closed(5)


@pytest.mark.parametrize("minor", [0, 2], ids=["3.0", "3.2"])
def test_raw_cancel_request(target: Target, pg: Any, minor: int) -> None:
    """The key the client got (4 bytes in 3.0, 32 in 3.2 if offered) cancels its statement."""
    app = unique("raw_cancel")
    with target.raw(extra={"application_name": app}, minor=minor) as conn:
        assert conn.key is not None
        conn.send(rawpg.query("select pg_sleep(30)"))
        wait_until(lambda: _running(pg, app), 5, "pg_sleep to start")
        started = time.monotonic()
        assert _cancel(target, conn.key) == b"", "nothing may be written on a cancel socket"
        msgs = conn.recv_until("Z", 5)
        assert time.monotonic() - started < 3
        errors = [m.fields() for m in msgs if m.type == "E"]
        assert [e["C"] for e in errors] == ["57014"], rawpg.summary(msgs)
        assert msgs[-1].status == "I"
        assert rawpg.types(conn.simple("select 1")) == "TDCZ"
    if target.proxy is not None:
        event = target.proxy.wait_for(
            lambda e: (
                e["type"] == "query"
                and e["application_name"] == app
                and "pg_sleep" in e["statement"]
            )
        )[0]
        assert event["sqlstate"] == "57014" and "cancel" in event["error"], event


def test_cancel_with_wrong_key_ignored(target: Target, pg: Any) -> None:
    app = unique("wrong_key")
    with target.raw(extra={"application_name": app}) as conn:
        assert conn.key is not None
        pid, secret = conn.key
        conn.send(rawpg.query("select pg_sleep(1.0), 'done'"))
        wait_until(lambda: _running(pg, app), 5, "pg_sleep to start")
        forged = bytes(b ^ 0xFF for b in secret)
        assert _cancel(target, (pid, forged)) == b""
        assert _cancel(target, (pid, secret + b"\x00")) == b""  # an overlong secret
        assert _cancel(target, (pid ^ 1, secret)) == b""  # somebody else's pid
        msgs = conn.recv_until("Z", 5)
        assert "E" not in rawpg.types(msgs), f"a forged key cancelled: {rawpg.summary(msgs)}"


@pytest.mark.parametrize("secret_len", [0, 3, 300], ids=["empty", "3-bytes", "300-bytes"])
def test_malformed_cancel_request_gets_no_bytes(target: Target, secret_len: int) -> None:
    """Postgres never answers on a cancel socket, even for a malformed CancelRequest."""
    with target.raw() as conn:
        assert conn.key is not None
        got = _cancel(target, (conn.key[0], b"k" * secret_len))
        assert got == b"", f"a {secret_len}-byte cancel secret was answered with {got!r}"
        assert rawpg.types(conn.simple("select 1")) == "TDCZ"


def test_late_cancel_dropped(target: Target, pg: Any) -> None:
    """A cancel arriving after the statement finished must not hit the next statement."""
    with target.raw() as conn:
        assert conn.key is not None
        assert rawpg.types(conn.simple("select 1")) == "TDCZ"
        assert _cancel(target, conn.key) == b""
        msgs = conn.simple("select pg_sleep(0.5), 'next'")
        assert [m.describe() for m in msgs if m.type in "DE"] == [("D", ("", "next"))], (
            rawpg.summary(msgs)
        )


def test_psql_ctrl_c(target: Target, pg: Any) -> None:
    app = unique("psql_sigint")
    env = {**os.environ, "PGAPPNAME": app, "PGCONNECT_TIMEOUT": "5"}
    proc = subprocess.Popen(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", target.dsn(), "-c", "select pg_sleep(30)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        wait_until(lambda: _running(pg, app), 5, "psql's pg_sleep to start")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "canceling statement due to user request" in err, err


def test_cancel_many_sessions_only_targets(target: Target, pg: Any) -> None:
    """Four sessions sleep; cancel two of them; the other two finish normally."""
    apps = [unique(f"multi_cancel{i}") for i in range(4)]
    conns = [target.raw(extra={"application_name": a}) for a in apps]
    try:
        for conn in conns:
            conn.send(rawpg.query("select pg_sleep(1.5), 'ok'"))
        for app in apps:
            wait_until(partial(_running, pg, app), 5, f"{app} to start")
        for conn in conns[:2]:
            assert conn.key is not None
            threading.Thread(target=_cancel, args=(target, conn.key)).start()
        results: list[Future[list[rawpg.Msg]]] = []
        with ThreadPoolExecutor(4) as pool:
            results = [pool.submit(c.recv_until, "Z", 8) for c in conns]
            codes = [[m.sqlstate for m in f.result(10) if m.type == "E"] for f in results]
        assert codes == [["57014"], ["57014"], [], []], codes
    finally:
        for conn in conns:
            conn.close()


def test_psycopg_cancel_with_protocol_3_2(target: Target, pg: Any) -> None:
    """libpq 18 asking for 3.2 (longer cancel keys) gets a working session and a working cancel."""
    if psycopg.pq.version() < 180000:
        pytest.fail(f"this test needs libpq >= 18, psycopg has {psycopg.pq.version()}")
    app = unique("cancel_32")
    dsn = target.dsn(application_name=app, max_protocol_version="3.2")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        with ThreadPoolExecutor(1) as pool:
            result = pool.submit(sleep_until_cancelled, conn)
            wait_until(lambda: _running(pg, app), 5, "pg_sleep to start")
            conn.cancel_safe(timeout=5)
            assert result.result(timeout=5) == "57014"
        assert conn.execute("select 2").fetchone() == (2,)


def test_cancel_storm(target: Target, pg: Any) -> None:
    """50 CancelRequests at once for 10 sleeping sessions: each session is cancelled once."""
    apps = [unique(f"storm{i}") for i in range(10)]
    conns = [target.raw(extra={"application_name": a}) for a in apps]
    try:
        for conn in conns:
            conn.send(rawpg.query("select pg_sleep(30)"))
        for app in apps:
            wait_until(partial(_running, pg, app), 5, f"{app} to start")
        keys = [c.key for c in conns for _ in range(5)]
        assert all(k is not None for k in keys)
        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda k: _cancel(target, k), keys, timeout=15))
        assert answers == [b""] * len(keys)
        for conn in conns:
            msgs = conn.recv_until("Z", 5)
            assert [m.sqlstate for m in msgs if m.type == "E"] == ["57014"], rawpg.summary(msgs)
            assert rawpg.types(conn.simple("select 1")) == "TDCZ"
        assert time.monotonic() - started < 10
    finally:
        for conn in conns:
            conn.close()
