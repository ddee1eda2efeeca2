"""Audit completeness: concurrent mixed-protocol clients get exactly one event per statement."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.e2e.kit import unique, wait_until
from tests.support import rawpg

pytestmark = pytest.mark.e2e

STATEMENTS = 50
ROW_TAGS = ("SELECT", "INSERT", "UPDATE", "DELETE", "COPY")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _simple(dsn: str, app: str, table: str) -> int:
    """psycopg ClientCursor: the simple Query protocol; every 10th statement fails."""
    errors = 0
    with psycopg.connect(
        dsn, autocommit=True, application_name=app, cursor_factory=psycopg.ClientCursor
    ) as conn:
        for i in range(STATEMENTS):
            try:
                if i % 10 == 9:
                    conn.execute("select 1/0")
                elif i % 2:
                    conn.execute(f"insert into {table} values ({i}, %s)", (app,))
                else:
                    conn.execute("select %s::int", (i,))
            except psycopg.errors.DivisionByZero:
                errors += 1
    return errors


def _extended(dsn: str, app: str, table: str) -> int:
    async def run() -> int:
        conn = await asyncpg.connect(dsn, timeout=5, server_settings={"application_name": app})
        errors = 0
        try:
            for i in range(STATEMENTS):
                try:
                    if i % 10 == 9:
                        await conn.fetchval("select $1::int / 0", i)
                    elif i % 5 == 1:
                        await conn.execute(f"update {table} set v = $1 where id = -1", app)
                    else:
                        assert await conn.fetchval("select $1::int + 1", i) == i + 1
                except asyncpg.DivisionByZeroError:
                    errors += 1
        finally:
            await conn.close()
        return errors

    return asyncio.run(asyncio.wait_for(run(), 60))


def _pipeline(dsn: str, app: str, table: str) -> int:
    """psycopg pipeline mode, a Sync every 10 statements; one failing batch."""
    errors = 0
    with psycopg.connect(dsn, autocommit=True, application_name=app) as conn:
        for batch in range(STATEMENTS // 10):
            try:
                with conn.pipeline():
                    for i in range(10):
                        n = batch * 10 + i
                        if batch == 2 and i == 9:
                            conn.execute("select 1/0")
                        else:
                            conn.execute(f"insert into {table} values (%s, %s)", (1000 + n, app))
            except psycopg.errors.DivisionByZero:
                errors += 1
    return errors


def _copy(dsn: str, app: str, table: str) -> int:
    """25 x (COPY FROM STDIN + SELECT count) on one connection."""
    with psycopg.connect(dsn, autocommit=True, application_name=app) as conn:
        for i in range(STATEMENTS // 2):
            with conn.cursor().copy(f"copy {table} (id, v) from stdin") as copy:
                copy.write_row((10_000 + i, app))
            conn.execute(f"select count(*) from {table} where v = %s", (app,))
    return 0


CLIENTS: list[tuple[str, Callable[[str, str, str], int], int]] = [
    ("simple", _simple, 5),
    ("simple", _simple, 5),
    ("extended", _extended, 5),
    ("extended", _extended, 5),
    ("pipeline", _pipeline, 1),
    ("pipeline", _pipeline, 1),
    ("copy", _copy, 0),
    ("extended", _extended, 5),
]


def test_concurrent_mixed_clients_complete(proxy_factory: Any, pg: Any) -> None:
    proxy = proxy_factory()
    setup_app = unique("complete_setup")
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name=setup_app) as conn:
        tables = [unique("t_complete") for _ in CLIENTS]
        for table in tables:
            conn.execute(f"create table {table}(id int, v text)")
    apps = [unique(f"complete_{kind}") for kind, _, _ in CLIENTS]
    with ThreadPoolExecutor(len(CLIENTS)) as pool:
        futures = [
            pool.submit(fn, proxy.dsn(), app, table)
            for (_, fn, _), app, table in zip(CLIENTS, apps, tables, strict=True)
        ]
        errors = [f.result(timeout=90) for f in futures]
    assert errors == [want for _, _, want in CLIENTS], errors

    def ended() -> list[dict[str, Any]] | None:
        ends = [e for e in proxy.events("session_end") if e["application_name"] in apps]
        return ends if len(ends) == len(apps) else None

    wait_until(ended, 15, "a session_end per client")
    events = proxy.events()
    for (kind, _, want_errors), app in zip(CLIENTS, apps, strict=True):
        mine = [e for e in events if e.get("application_name") == app]
        starts = [e for e in mine if e["type"] == "session_start"]
        ends = [e for e in mine if e["type"] == "session_end"]
        queries = [e for e in mine if e["type"] == "query"]
        assert len(starts) == 1 and len(ends) == 1, f"{kind} {app}: {len(starts)}/{len(ends)}"
        session = starts[0]["session_id"]
        assert len(queries) == STATEMENTS, (
            f"{kind} client {app}: {len(queries)} query events for {STATEMENTS} statements: "
            f"{[q['statement'] for q in queries]}"
        )
        assert {e["session_id"] for e in mine} == {session}, f"{kind}: mixed session ids"
        assert ends[0]["statements"] == STATEMENTS, ends[0]
        assert ends[0]["bytes_from_client"] > 0 and ends[0]["bytes_to_client"] > 0, ends[0]
        assert ends[0]["duration_ms"] >= 0
        failed = [q for q in queries if q["error"] is not None]
        assert len(failed) == want_errors, f"{kind}: {[q['statement'] for q in failed]}"
        for q in queries:
            _check_query_event(q, starts[0], kind)


def _check_query_event(q: dict[str, Any], start: dict[str, Any], kind: str) -> None:
    where = f"{kind} event {q.get('seq')}: {q}"
    assert q["v"] == 1, where
    assert TS.match(q["ts"]), where
    datetime.strptime(q["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert q["user"] == "postgres" and q["database"] == "postgres", where
    assert isinstance(q["duration_ms"], int | float) and q["duration_ms"] >= 0, where
    assert q["tx_status"] in ("I", "T", "E"), where
    assert q["backend_pid"] == start["backend_pid"], where
    assert q["protocol"] == ("simple" if kind == "simple" else "extended") or (
        kind == "copy" and q["protocol"] in ("simple", "extended")
    ), where
    assert isinstance(q["statement"], str) and q["statement"], where
    if q["error"] is None:
        assert q["sqlstate"] in (None, "00000"), where
        if q.get("suspended"):
            # A portal the client stopped reading (asyncpg fetchval uses a row limit): the
            # server sent no CommandComplete; rows is what the client fetched.
            assert q["command_tag"] is None and isinstance(q["rows"], int), where
        else:
            assert q["command_tag"], where
            if q["command_tag"].split()[0] in ROW_TAGS:
                assert isinstance(q["rows"], int), where
                assert q["rows"] == int(q["command_tag"].split()[-1]), where
    else:
        assert q["sqlstate"] == "22012", where
        assert "division by zero" in q["error"], where
    for key in (
        "seq",
        "prev_hash",
        "hash",
        "proxy_id",
        "client_addr",
        "client_port",
        "fingerprint",
        "decision",
    ):
        assert key in q, f"missing {key}: {where}"


def test_fire_and_forget_statements_audited(proxy: Any, pg: Any) -> None:
    """A client sends INSERT and vanishes without reading: whatever committed is audited."""
    table = unique("t_forget")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"create table {table}(id int)")
    apps = []
    for i in range(20):
        app = unique("forget")
        apps.append(app)
        raw = rawpg.RawConn(proxy.host, proxy.port)
        raw.login(extra={"application_name": app})
        raw.send(rawpg.query(f"insert into {table} values ({i})"))
        raw.close()  # at once: the reply is never read
    wait_until(
        lambda: (
            len([e for e in proxy.events("session_end") if e["application_name"] in apps])
            == len(apps)
        ),
        15,
        "every vanished session to end",
    )
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        committed = {row[0] for row in conn.execute(f"select id from {table}")}
        conn.execute(f"drop table {table}")
    audited = {
        int(e["statement"].rsplit("(", 1)[1].rstrip(")"))
        for e in proxy.events("query")
        if e["application_name"] in apps
    }
    missing = sorted(committed - audited)
    assert not missing, (
        f"{len(missing)} of {len(committed)} committed inserts have no audit event: ids {missing}"
    )


def test_login_storm(proxy: Any) -> None:
    """60 clients connect at once (SCRAM and trust mixed); every one is served and audited."""
    app = unique("storm")

    async def one(i: int) -> int:
        user, password = ("alice", "alice-pw") if i % 2 else ("dave", None)
        conn = await asyncpg.connect(
            proxy.dsn(user, "app", password),
            timeout=20,
            server_settings={"application_name": f"{app}_{i}"},
        )
        try:
            return int(await conn.fetchval("select $1::int", i))
        finally:
            await conn.close()

    async def run() -> list[int]:
        return list(await asyncio.gather(*(one(i) for i in range(60))))

    assert asyncio.run(asyncio.wait_for(run(), 60)) == list(range(60))
    names = {f"{app}_{i}" for i in range(60)}
    wait_until(
        lambda: (
            len([e for e in proxy.events("session_end") if e["application_name"] in names]) == 60
        ),
        15,
        "60 session_end",
    )
    queries = [e for e in proxy.events("query") if e["application_name"] in names]
    assert sorted(int(e["rows"]) for e in queries) == [1] * 60
    assert {e["user"] for e in queries} == {"alice", "dave"}
