"""Durations mean what ``duration_scope`` says (issue 9 §1), checked against the server's own
``log_min_duration_statement = 0`` output for the same backend.

pgwarden measures from the request's arrival to its reply, so a statement-scoped duration is
never shorter than the server's own figure for that statement; a multi-statement Query is
recorded with the message's scope; statements the server answered together in a pipeline say
``pipeline``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import unique, wait_events
from tests.support import rawpg

pytestmark = pytest.mark.e2e

_LINE = re.compile(r"\[(\d+)\].*duration: ([0-9.]+) ms  (statement|execute [^:]*): (.*)")


def _server_durations(pg: Any, pid: int, timeout: float = 5.0) -> list[tuple[float, str]]:
    cluster = getattr(pg, "_cluster", None)
    if cluster is None or not hasattr(cluster, "server_log"):
        pytest.skip("needs the suite-started cluster's server log")
    deadline = time.monotonic() + timeout
    found: list[tuple[float, str]] = []
    while time.monotonic() < deadline:
        found = []
        for line in cluster.server_log().splitlines():
            match = _LINE.search(line)
            if match and int(match.group(1)) == pid:
                found.append((float(match.group(2)), match.group(4)))
        if found:
            return found
        time.sleep(0.1)
    return found


def _sleeps(proxy: Any, app: str) -> list[dict[str, Any]]:
    events = wait_events(proxy, 1, "query", application_name=app)
    return [e for e in events if "pg_sleep" in e["statement"]]


def _login_logging(conn: rawpg.RawConn, app: str) -> int:
    conn.login(extra={"application_name": app, "options": "-c log_min_duration_statement=0"})
    return conn.key[0]


def test_simple_statement_duration_is_statement_scoped(proxy: Any, pg: Any) -> None:
    app = unique("dur_simple")
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        pid = _login_logging(conn, app)
        conn.simple("select pg_sleep(0.15)")
    [event] = [
        e
        for e in wait_events(proxy, 1, "query", application_name=app)
        if "pg_sleep" in e["statement"]
    ]
    server = [d for d, text in _server_durations(pg, pid) if "pg_sleep" in text]
    assert event["duration_scope"] == "statement"
    assert event["duration_ms"] >= server[0] >= 150


def test_multi_statement_query_has_message_scope(proxy: Any, pg: Any) -> None:
    app = unique("dur_multi")
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        pid = _login_logging(conn, app)
        conn.simple("select 1; select pg_sleep(0.2); select 2")
    events = wait_events(proxy, 3, "query", application_name=app)[-3:]
    assert [e["duration_scope"] for e in events] == ["message"] * 3
    # One start for the message; PostgreSQL logs the whole string once.
    assert len({e["ts"] for e in events}) == 1
    [(server_ms, _)] = [(d, t) for d, t in _server_durations(pg, pid) if "pg_sleep" in t]
    assert events[-1]["duration_ms"] >= server_ms >= 200


def test_extended_statement_duration_is_statement_scoped(proxy: Any, pg: Any) -> None:
    app = unique("dur_ext")
    dsn = proxy.dsn() + f"?application_name={app}&options=-c%20log_min_duration_statement%3D0"
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.info.backend_pid
        conn.execute("select pg_sleep(%s)", (0.15,))
    [event] = [
        e
        for e in wait_events(proxy, 1, "query", application_name=app)
        if "pg_sleep" in e["statement"]
    ]
    server = [d for d, text in _server_durations(pg, pid) if "pg_sleep" in text]
    assert event["duration_scope"] == "statement"
    assert event["duration_ms"] >= max(server) >= 150


def test_pipelined_statements_sent_together_say_pipeline(proxy: Any, pg: Any) -> None:
    app = unique("dur_pipe")
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.login(extra={"application_name": app})
        pipeline = [rawpg.parse("select pg_sleep(0.05)")]
        for _ in range(3):
            pipeline += [rawpg.bind(), rawpg.execute()]
        conn.send(*pipeline, rawpg.sync())
        conn.recv_until("Z")
    events = wait_events(proxy, 3, "query", application_name=app)[-3:]
    scopes = [e["duration_scope"] for e in events]
    # The server sends nothing before Sync here: no statement's own end is on the wire.
    assert scopes[:2] == ["pipeline", "pipeline"]
    total = sum(e["duration_ms"] for e in events)
    assert total < 1000  # not three times the batch, as before


def test_exact_timings_time_each_pipelined_statement_alone(proxy_factory: Any, pg: Any) -> None:
    proxy = proxy_factory("--audit-exact-timings", "true")
    app = unique("dur_exact")
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        pid = _login_logging(conn, app)
        pipeline = [rawpg.parse("select pg_sleep(0.05)")]
        for _ in range(3):
            pipeline += [rawpg.bind(), rawpg.execute()]
        conn.send(*pipeline, rawpg.sync())
        conn.recv_until("Z")
    events = wait_events(proxy, 3, "query", application_name=app)[-3:]
    # The proxy asked the server to flush after each Execute: each completion was seen when
    # it was produced, so each statement has its own duration.
    assert [e["duration_scope"] for e in events] == ["statement"] * 3
    # Against what the server itself logged for each Execute, in order. The first starts when
    # it was forwarded and ends when its completion arrived: at least the server's time. A
    # later one starts when the proxy handled the previous completion, which a busy machine
    # may delay by a few milliseconds while the server already runs it; the pipeline as a
    # whole still starts before and ends after the server's work.
    server = [d for d, text in _server_durations(pg, pid) if "pg_sleep" in text][-3:]
    mine = [e["duration_ms"] for e in sorted(events, key=lambda e: e["seq"])]
    assert len(server) == 3 and all(s >= 50 for s in server), server
    assert mine[0] >= server[0], (mine, server)
    assert all(m >= s - 15 for m, s in zip(mine[1:], server[1:], strict=True)), (mine, server)
    assert sum(mine) >= sum(server), (mine, server)
