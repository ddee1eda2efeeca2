"""Nothing runs unaudited (issue 10 §6), against a real proxy process and a real server.

* While the trail cannot write, statements are not *forwarded* (not only their results held):
  pipelined INSERTs sent during a disk-full outage never reach the server, and a kill -9
  during the outage loses nothing that ran.
* ``audit.write_ahead``: statements held on the server (a lock wait) when the proxy is killed
  -9 run and commit after it died; on the next start each of them has a record
  (``outcome: unknown``). Without write-ahead the same scenario leaves them unrecorded — the
  gap the mode closes, shown by the same test.
* With write-ahead and a full disk, not even the first statement is forwarded.

The disk is "filled" with RLIMIT_FSIZE on the proxy process (writes past it fail with EFBIG,
as on a full disk); lifting the soft limit needs no privilege.
"""

from __future__ import annotations

import contextlib
import re
import resource
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import admin, readiness, unique, wait_until

pytestmark = pytest.mark.e2e

IN_FLIGHT = 6  # clients whose INSERT waits for a lock when the proxy is killed


def _count(pg: Any, table: str) -> int:
    with admin(pg) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
        return int(row[0]) if row else 0


def _ids(pg: Any, table: str) -> set[int]:
    with admin(pg) as conn:
        return {int(r[0]) for r in conn.execute(f"select id from {table}")}


def _stays(check: Any, seconds: float) -> bool:
    """``check()`` holds for the whole window (a bounded wait for something that must NOT
    happen; the same window sees it happen at once on code that forwards)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            return False
        time.sleep(0.05)
    return True


def _fill_disk(proxy: Any) -> None:
    size = (proxy.audit_dir / "audit.jsonl").stat().st_size
    resource.prlimit(proxy.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


def _free_disk(proxy: Any) -> None:
    resource.prlimit(proxy.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)


def _table(pg: Any, prefix: str) -> str:
    name = unique(prefix)
    with admin(pg) as conn:
        conn.execute(f"create table {name} (id int primary key)")
    return name


def _in_background(fn: Any) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(psycopg.Error):  # the proxy was killed under it
            fn()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_no_statement_is_forwarded_while_the_trail_cannot_write(
    proxy_factory: Any, pg: Any
) -> None:
    table = _table(pg, "outage")
    proxy = proxy_factory()
    trigger = psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5)
    writer = psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5)
    assert writer.execute("select 1").fetchone() == (1,)
    _fill_disk(proxy)
    # A statement forwarded while the trail still looked healthy: its record cannot be
    # written, so the trail turns unhealthy (and its result stays held).
    _in_background(lambda: trigger.execute("select 'trigger'"))
    wait_until(lambda: not readiness(proxy)["checks"]["audit_trail"], 15, "the trail to fail")

    def pipeline() -> None:
        with writer.pipeline():
            for n in range(50):
                writer.execute(f"insert into {table} values ({n})")

    _in_background(pipeline)
    assert _stays(lambda: _count(pg, table) == 0, 1.5), "INSERTs ran while the trail failed"
    proxy.kill()  # during the outage: whatever ran would now be unaudited for ever
    assert _stays(lambda: _count(pg, table) == 0, 0.5)


def test_statements_wait_out_an_outage_and_then_run_audited(proxy_factory: Any, pg: Any) -> None:
    table = _table(pg, "outage_ok")
    proxy = proxy_factory()
    conn = psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5)
    trigger = psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5)
    try:
        _fill_disk(proxy)
        _in_background(lambda: trigger.execute("select 'trigger'"))
        wait_until(lambda: not readiness(proxy)["checks"]["audit_trail"], 15, "the trail to fail")
        done = threading.Event()

        def insert() -> None:
            with conn.pipeline():
                for n in range(10):
                    conn.execute(f"insert into {table} values ({n})")
            done.set()

        _in_background(insert)
        assert _stays(lambda: _count(pg, table) == 0, 1.0)
        _free_disk(proxy)
        wait_until(done.is_set, 30, "the INSERTs after the outage")
        assert _count(pg, table) == 10
    finally:
        conn.close()
        trigger.close()
    texts = {e.get("statement") for e in proxy.events("query")}
    assert all(f"insert into {table} values ({n})" in texts for n in range(10))


def _run_inserts(dsn: str, table: str, ids: list[int], mode: str) -> None:
    """INSERT ``ids`` through the proxy: ``simple`` protocol, ``extended``, or a ``pipeline``
    (extended, one Sync for all)."""
    cursor = psycopg.ClientCursor if mode == "simple" else psycopg.Cursor
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5, cursor_factory=cursor) as conn:
        if mode == "pipeline":
            with conn.pipeline():
                for ident in ids:
                    conn.execute(f"insert into {table} values ({ident})")
        else:
            for ident in ids:
                conn.execute(f"insert into {table} values ({ident})")


def _recorded(events: list[dict[str, Any]], table: str) -> dict[int, dict[str, Any]]:
    """The query record of each INSERT into ``table``, by id (the last one wins)."""
    found: dict[int, dict[str, Any]] = {}
    pattern = re.compile(rf"insert into {table} values \((\d+)\)")
    for event in events:
        if event.get("type") != "query":
            continue
        match = pattern.fullmatch(str(event.get("statement") or ""))
        if match:
            found[int(match.group(1))] = event
    return found


@pytest.mark.parametrize(
    ("write_ahead", "fsync"),
    [(True, "interval"), (True, "always"), (False, "interval")],
    ids=["write_ahead", "write_ahead_fsync_always", "default"],
)
def test_kill_9_with_statements_held_on_the_server(
    proxy_factory: Any, pg: Any, write_ahead: bool, fsync: str
) -> None:
    table = _table(pg, "inflight")
    app = unique("inflight")
    proxy = proxy_factory("--audit-write-ahead", str(write_ahead).lower(), "--audit-fsync", fsync)
    dsn = proxy.dsn() + ("&" if "?" in proxy.dsn() else "?") + f"application_name={app}"
    _run_inserts(dsn, table, [1, 2, 3], "simple")  # finished before the kill
    _run_inserts(dsn, table, [4, 5], "extended")
    holder = admin(pg)
    holder.execute("begin")
    holder.execute(f"lock table {table} in exclusive mode")  # INSERTs wait; the lock is ours
    modes = ["simple", "extended", "pipeline"]
    waiting: list[int] = []
    threads = []
    for client in range(IN_FLIGHT):
        mode = modes[client % 3]
        ids = [100 + client * 10 + k for k in range(3 if mode == "pipeline" else 1)]
        waiting += ids
        threads.append(
            _in_background(lambda ids=ids, mode=mode: _run_inserts(dsn, table, ids, mode))
        )

    def blocked() -> bool:
        with admin(pg) as conn:
            row = conn.execute(
                "select count(*) from pg_stat_activity where application_name = %s "
                "and wait_event_type = 'Lock'",
                (app,),
            ).fetchone()
            return row is not None and row[0] == IN_FLIGHT

    wait_until(blocked, 20, f"{IN_FLIGHT} INSERTs waiting for the lock")
    proxy.kill()
    holder.execute("commit")  # the server now runs (and commits) what it was sent
    holder.close()

    def finished() -> bool:
        with admin(pg) as conn:
            row = conn.execute(
                "select count(*) from pg_stat_activity where application_name = %s", (app,)
            ).fetchone()
            return row is not None and row[0] == 0

    wait_until(finished, 20, "the server to finish the orphaned statements")
    for thread in threads:
        thread.join(10)
    committed = _ids(pg, table)
    assert set(waiting) <= committed, "the orphaned INSERTs should have committed"
    proxy.start()  # same audit directory and flags: recovery runs here
    if write_ahead:
        wait_until(
            lambda: len(proxy.events("dispatch_recovery")) >= 2, 15, "the second start's recovery"
        )
    records = _recorded(proxy.events(), table)
    missing = sorted(committed - records.keys())
    completed = {i for i, e in records.items() if "outcome" not in e}
    unknown = {i for i, e in records.items() if e.get("outcome") == "unknown"}
    assert {1, 2, 3, 4, 5} <= completed
    if write_ahead:
        assert missing == [], f"committed on the server but not in the trail: {missing}"
        assert unknown == set(waiting)
        protocols = {records[i]["protocol"] for i in waiting}
        assert protocols == {"simple", "extended"}
        recovery = proxy.events("dispatch_recovery")[-1]
        assert sorted(recovery["closed"]) == sorted(records[i]["dispatch"] for i in waiting)
        verify = subprocess.run(
            [sys.executable, "-m", "proxy", "verify", str(proxy.audit_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
    else:
        # The gap write_ahead closes: statements that committed, with no record at all.
        assert missing == sorted(waiting)


def test_with_write_ahead_a_full_disk_stops_even_the_first_statement(
    proxy_factory: Any, pg: Any
) -> None:
    table = _table(pg, "wa_full")
    proxy = proxy_factory("--audit-write-ahead", "true")
    conn = psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5)
    assert conn.execute("select 1").fetchone() == (1,)
    _fill_disk(proxy)
    # No statement ran since the disk filled: the trail still looks healthy. The INSERT's
    # dispatch record is the write that fails, so the INSERT is never sent.
    _in_background(lambda: conn.execute(f"insert into {table} values (1)"))
    wait_until(lambda: not readiness(proxy)["checks"]["audit_trail"], 15, "the trail to fail")
    assert _stays(lambda: _count(pg, table) == 0, 1.5), "forwarded without its dispatch"
    proxy.kill()
    assert _stays(lambda: _count(pg, table) == 0, 0.5)
    proxy.start()
    wait_until(lambda: len(proxy.events("dispatch_recovery")) >= 2, 15, "the recovery")
    # Never dispatched (the write failed), never run, nothing to close.
    assert proxy.events("dispatch_recovery")[-1]["closed"] == []
    assert not [e for e in proxy.events("query") if table in str(e.get("statement"))]
