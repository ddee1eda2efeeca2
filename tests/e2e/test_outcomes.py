"""Did it commit? Rolled-back writes are findable with a real client (issue 9 §2)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import admin, scratch_table, unique, wait_events
from tests.support import rawpg

pytestmark = pytest.mark.e2e


@pytest.fixture
def table(pg: Any) -> Iterator[str]:
    with scratch_table(pg, "outc", 5) as name:
        yield name


def _logs(proxy: Any, *flags: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "logs", str(proxy.audit_dir), "--format", "json", *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_rolled_back_update_is_found_and_committed_one_too(proxy: Any, pg: Any, table: str) -> None:
    app = unique("outc_app")
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.login(extra={"application_name": app})
        conn.simple(f"update {table} set q = -777 where id = 2; select 1/0")
        conn.simple(f"update {table} set q = 30 where id = 3")
        conn.simple("begin")
        conn.simple(f"update {table} set q = 40 where id = 4")
        conn.simple("rollback")
    with psycopg.connect(proxy.dsn(), application_name=app) as conn:  # not autocommit
        conn.execute(f"update {table} set q = 50 where id = 5")
        conn.commit()
    wait_events(proxy, 1, "session_end", application_name=app)
    with admin(pg) as check:
        rows = dict(check.execute(f"select id, q from {table}").fetchall())
    assert rows == {1: 1, 2: 2, 3: 30, 4: 4, 5: 50}
    rolled = {e["statement"] for e in _logs(proxy, "--rolled-back", "--app", app)}
    committed = {e["statement"] for e in _logs(proxy, "--committed", "--app", app)}
    assert f"update {table} set q = -777 where id = 2" in rolled
    assert f"update {table} set q = 40 where id = 4" in rolled
    assert f"update {table} set q = 30 where id = 3" in committed
    assert f"update {table} set q = 50 where id = 5" in committed
    assert not rolled & committed


def _outcome_of(proxy: Any, app: str, statement: str) -> str:
    events = wait_events(proxy, 1, "transaction", application_name=app)
    queries = {e["seq"]: e for e in proxy.events("query") if e["application_name"] == app}
    for tx in events:
        if any(queries.get(s, {}).get("statement") == statement for s in tx["statements"]):
            return str(tx["outcome"])
    raise AssertionError(f"no transaction event names {statement!r}: {events}")


def test_failed_commit_disconnect_and_server_crash(proxy: Any, pg: Any, table: str) -> None:
    # A COMMIT that fails (a deferred constraint): everything in the transaction rolled back.
    app = unique("outc_commit")
    child = f"{table}_d"
    with admin(pg) as setup:
        setup.execute(
            f"create table {child} (id int references {table}(id) deferrable initially deferred)"
        )
    try:
        with rawpg.RawConn(proxy.host, proxy.port) as conn:
            conn.login(extra={"application_name": app})
            conn.simple("begin")
            conn.simple(f"insert into {child} values (999)")
            replies = conn.simple("commit")
            assert [m.fields()["C"] for m in replies if m.type == "E"] == ["23503"]
    finally:
        with admin(pg) as setup:
            setup.execute(f"drop table {child}")
    assert _outcome_of(proxy, app, f"insert into {child} values (999)") == "rolled_back"
    # The client vanishes inside a transaction: the server rolls it back.
    app = unique("outc_gone")
    conn = rawpg.RawConn(proxy.host, proxy.port)
    conn.login(extra={"application_name": app})
    conn.simple("begin")
    conn.simple(f"update {table} set q = 0 where id = 1")
    conn.close()
    assert _outcome_of(proxy, app, f"update {table} set q = 0 where id = 1") == "rolled_back"
    # The server connection dies inside a transaction: the outcome is not known.
    app = unique("outc_crash")
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.login(extra={"application_name": app})
        pid = conn.key[0]
        conn.simple("begin")
        conn.simple(f"update {table} set q = 0 where id = 2")
        with admin(pg) as other:
            other.execute("select pg_terminate_backend(%s)", (pid,))
        conn.drain(timeout=5)
    assert _outcome_of(proxy, app, f"update {table} set q = 0 where id = 2") == "unknown"
    with admin(pg) as check:
        assert check.execute(
            f"select q from {table} where id in (1, 2) order by id"
        ).fetchall() == [
            (1,),
            (2,),
        ]
