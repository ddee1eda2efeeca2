"""Policy enforcement on the wire: a blocked statement never runs, the client gets its normal
insufficient-privilege error, and client and server stay in the same transaction state
(protocol-pitfalls.md §3: "poison the server, substitute the error")."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.e2e.kit import unique, wait_until
from tests.support import rawpg

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
defaults:
  action: allow
  on_unparsable: block
rules:
  - id: no-unbounded-delete
    when: {commands: [DELETE, UPDATE], missing_where: true}
    action: block
    severity: high
    message: Add a WHERE clause; unbounded writes are not allowed here.
  - id: watch-secrets
    when: {tables: [secrets]}
    action: flag
    severity: medium
    notify: true
    message: secrets table accessed
"""


@pytest.fixture(scope="module")
def guarded(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.support.proxyproc import ProxyFactory

    tmp = tmp_path_factory.mktemp("blocking")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    factory = ProxyFactory(pg, tmp)
    try:
        yield factory(policies=[policy])
    finally:
        factory.close()


@pytest.fixture
def table(pg: Any) -> Iterator[str]:
    name = unique("blk")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"create table {name} (id int primary key, v text)")
        conn.execute(f"insert into {name} values (1, 'keep')")
    yield name
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")


def _count(pg: Any, table: str) -> int:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
        assert row is not None
        return int(row[0])


def _blocked_events(proxy: Any, table: str) -> list[dict[str, Any]]:
    return [
        e
        for e in proxy.events("query")
        if e["decision"]["action"] == "block" and table in (e["statement"] or "")
    ]


def test_blocked_when_idle_is_answered_without_touching_the_server(
    guarded: Any, table: str, pg: Any
) -> None:
    with psycopg.connect(guarded.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            conn.execute(f"delete from {table}")
        assert "Add a WHERE clause" in str(err.value)
        assert err.value.diag.message_detail == "pgwarden rule: no-unbounded-delete"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("select 1").fetchone() == (1,)  # the session keeps working
    assert _count(pg, table) == 1
    events = wait_until(lambda: _blocked_events(guarded, table) or None, 5, "blocked event")
    event = events[-1]
    assert event["sqlstate"] == "42501" and event["rows"] is None
    assert event["decision"]["rules"] == [
        {"id": "no-unbounded-delete", "action": "block", "severity": "high"}
    ]


def test_blocked_inside_a_transaction_makes_commit_roll_back(
    guarded: Any, table: str, pg: Any
) -> None:
    with psycopg.connect(guarded.dsn()) as conn:
        conn.execute(f"insert into {table} values (2, 'new')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"update {table} set v = 'x'")
        # The server was made to fail in the same place: the transaction is aborted there too.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        cur = conn.execute("commit")
        assert cur.statusmessage == "ROLLBACK"
    assert _count(pg, table) == 1  # nothing of the transaction was committed


def test_blocked_in_a_failed_transaction(guarded: Any, table: str) -> None:
    with psycopg.connect(guarded.dsn()) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"delete from {table}")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("select 2").fetchone() == (2,)


def test_whole_multi_statement_query_is_blocked(guarded: Any, table: str, pg: Any) -> None:
    with rawpg.RawConn(guarded.host, guarded.port, 5) as conn:
        conn.login(user="postgres", database="postgres")
        conn.send(rawpg.query(f"insert into {table} values (3, 'a'); delete from {table}"))
        msgs = conn.recv_until("Z")
        assert rawpg.types(msgs) == "EZ" and msgs[0].sqlstate == "42501", rawpg.summary(msgs)
    assert _count(pg, table) == 1  # the allowed INSERT before the DELETE did not run either


def test_blocked_mid_pipeline_rolls_back_the_batch(guarded: Any, table: str, pg: Any) -> None:
    with psycopg.connect(guarded.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute(f"insert into {table} values (%s, %s)", (4, "batch"))
            conn.execute(f"delete from {table} where true")
            conn.execute(f"insert into {table} values (%s, %s)", (5, "after"))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(f"select count(*) from {table}").fetchone() == (1,)
    assert _count(pg, table) == 1  # the earlier INSERT of the batch rolled back with it


def test_asyncpg_prepared_statement_is_blocked_and_connection_survives(
    guarded: Any, table: str, pg: Any
) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(guarded.dsn(), timeout=5)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="WHERE clause"):
                await conn.prepare(f"delete from {table}")  # Parse is where it is refused
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f"update {table} set v = $1", "x")
            assert await conn.fetchval("select $1::int * 2", 21) == 42
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert _count(pg, table) == 1


def test_blocked_parse_with_flush_and_no_sync_answers_at_once(guarded: Any, table: str) -> None:
    with rawpg.RawConn(guarded.host, guarded.port, 5) as conn:
        conn.login(user="postgres", database="postgres")
        conn.send(
            rawpg.parse(f"delete from {table}", "s1"), rawpg.describe("S", "s1"), rawpg.flush()
        )
        first = conn.recv(timeout=5)
        assert first.type == "E" and first.sqlstate == "42501", first
        conn.send(rawpg.sync())
        rest = conn.recv_until("Z")
        assert rawpg.types(rest) == "Z" and rest[-1].status == "I"
        # The blocked name does not exist on the server: binding it fails like PostgreSQL.
        conn.send(rawpg.bind("p", "s1"), rawpg.execute("p"), rawpg.sync())
        msgs = conn.recv_until("Z")
        assert rawpg.types(msgs) == "EZ" and msgs[0].sqlstate == "26000"
        conn.send(rawpg.query("select 7"))
        assert [m.row() for m in conn.recv_until("Z") if m.type == "D"] == [["7"]]


def test_flag_with_notify_runs_and_sends_a_notice(guarded: Any, pg: Any) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("create table if not exists secrets (id int)")
    notices: list[str] = []
    with psycopg.connect(guarded.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        assert conn.execute("select count(*) from secrets").fetchone() == (0,)
    assert notices == ["secrets table accessed"]
    events = wait_until(
        lambda: (
            [e for e in guarded.events("query") if e["statement"] == "select count(*) from secrets"]
            or None
        ),
        5,
        "flagged event",
    )
    assert events[-1]["decision"]["action"] == "flag" and events[-1]["rows"] == 1


def test_unparsable_text_is_blocked_with_the_parser_reason(guarded: Any) -> None:
    with psycopg.connect(guarded.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as err:
            conn.execute("selec 1")
        assert "syntax error at or near" in str(err.value)
        assert err.value.diag.message_detail == "pgwarden rule: unparsable"
        assert conn.execute("select 1").fetchone() == (1,)


def test_monitor_mode_records_would_be_blocks_and_runs_them(
    proxy_factory: Any, tmp_path: Path, table: str, pg: Any
) -> None:
    policy = tmp_path / "monitor.yaml"
    policy.write_text(
        POLICY.replace("  on_unparsable: block\n", "  on_unparsable: block\n  mode: monitor\n")
    )
    proxy = proxy_factory(policies=[policy])
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        cur = conn.execute(f"delete from {table}")
        assert cur.rowcount == 1
    event = wait_until(
        lambda: (
            [e for e in proxy.events("query") if e["statement"] == f"delete from {table}"] or None
        ),
        5,
        "monitor event",
    )[-1]
    assert event["decision"]["action"] == "flag"
    assert event["decision"]["intended"] == "block"
    assert event["decision"]["mode"] == "monitor"
    assert event["command_tag"] == "DELETE 1"


def test_function_call_messages_are_judged_by_the_function_they_name(
    proxy_factory: Any, pg: Any
) -> None:
    """The FunctionCall protocol names a function by OID only: lo_import (OID 764) must not
    slip past a policy that blocks server-file functions for non-admins."""
    root = Path(__file__).resolve().parents[2]
    proxy = proxy_factory(policies=[root / "policies" / "default.yaml"])
    with rawpg.RawConn(proxy.host, proxy.port, 5) as conn:
        conn.login(user="dave", database="app")
        conn.send(rawpg.function_call(764, [b"/etc/passwd"]))
        msgs = conn.recv_until("Z")
        assert rawpg.types(msgs) == "EZ" and msgs[0].sqlstate == "42501", rawpg.summary(msgs)
        assert "no-server-file-functions" in msgs[0].fields().get("D", "")
        # An allowed call still works: int4 abs() is OID 1397.
        conn.send(rawpg.function_call(1397, [(-5).to_bytes(4, "big", signed=True)]))
        msgs = conn.recv_until("Z")
        assert rawpg.types(msgs) == "VZ", rawpg.summary(msgs)
    events = wait_until(
        lambda: [e for e in proxy.events("query") if e["protocol"] == "function_call"] or None,
        5,
        "function call events",
    )
    assert events[0]["statement"] == "<function call oid=764 pg_catalog.lo_import>"
    assert events[0]["decision"]["action"] == "block"
    # Named from PostgreSQL's catalog (the shipped pg_proc list) and judged by that name.
    assert events[-1]["statement"] == "<function call oid=1397 pg_catalog.abs>"
    assert events[-1]["decision"]["action"] == "allow"
