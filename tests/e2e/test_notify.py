"""Unsolicited server messages, FunctionCall, server FATAL, and clients that vanish."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from tests.e2e.kit import Target, admin, backend_gone, settle, unique, wait_until
from tests.support import rawpg as r

pytestmark = pytest.mark.e2e


def test_notify_delivered_while_idle(target: Target) -> None:
    channel = unique("chan")
    with target.raw() as listener, target.connect() as notifier:
        assert r.types(listener.simple(f"listen {channel}")) == "CZ"
        notifier.execute(f"notify {channel}, 'hello'")
        msg = listener.recv(5)
        assert msg.type == "A", r.summary([msg])
        assert msg.notification()[1:] == (channel, "hello")
        # Not delivered after a rollback.
        notifier.execute("begin")
        notifier.execute(f"notify {channel}, 'rolled back'")
        notifier.execute("rollback")
        notifier.execute(f"notify {channel}, 'second'")
        msg = listener.recv(5)
        assert msg.notification()[1:] == (channel, "second")
        assert listener.recv_quiet(0.2) == []


def test_function_call(target: Target) -> None:
    """FunctionCall 'F' by OID (int4pl), and the large-object functions libpq uses."""
    app = unique("fastpath")
    with target.raw(extra={"application_name": app}) as conn:
        oids = {
            m.row()[0]: int(m.row()[1] or 0)
            for m in conn.simple(
                "select proname, oid from pg_proc where pronamespace = 'pg_catalog'::regnamespace"
                " and proname in ('int4pl', 'lo_creat', 'lo_unlink')"
            )
            if m.type == "D"
        }
        conn.send(
            r.function_call(
                oids["int4pl"], [struct.pack("!i", 40), struct.pack("!i", 2)], result_format=1
            )
        )
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "VZ", r.summary(msgs)
        assert msgs[0].body == struct.pack("!i", 4) + struct.pack("!i", 42)
        conn.send(r.function_call(oids["lo_creat"], [struct.pack("!i", -1)], result_format=1))
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "VZ", r.summary(msgs)
        lo_oid = struct.unpack("!I", msgs[0].body[4:8])[0]
        conn.send(r.function_call(oids["lo_unlink"], [struct.pack("!I", lo_oid)], 1))
        assert r.types(conn.recv_until("Z")) == "VZ"
        conn.send(r.function_call(4_000_000_000, [], 1))
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "EZ" and msgs[0].sqlstate == "42883", r.summary(msgs)
    if target.proxy is None:
        return
    calls = [e for e in settle(target.proxy, app) if e.get("protocol") == "function_call"]
    assert len(calls) == 4, calls
    assert calls[-1]["sqlstate"] == "42883", calls[-1]


def test_server_fatal_relayed(target: Target, pg: Any) -> None:
    with target.raw() as victim, target.raw() as other:
        pid = int(victim.simple("select pg_backend_pid()")[1].row()[0] or 0)
        with admin(pg) as conn:
            assert conn.execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        msg = victim.recv(5)
        fields = msg.fields()
        assert (msg.type, fields.get("S"), fields.get("C")) == ("E", "FATAL", "57P01"), fields
        assert victim.wait_closed(5) == b""
        assert r.types(other.simple("select 1")) == "TDCZ", "others must not notice"
    with target.raw() as fresh:
        assert r.types(fresh.simple("select 1")) == "TDCZ"


def test_disconnect_mid_transaction_rolls_back(target: Target, pg: Any) -> None:
    table = unique("t_vanish")
    with target.connect() as setup:
        setup.execute(f"create table {table}(x int)")
    try:
        conn = target.raw()
        pid = int(conn.simple("select pg_backend_pid()")[1].row()[0] or 0)
        assert conn.simple("begin")[-1].status == "T"
        assert r.types(conn.simple(f"insert into {table} values (1)")) == "CZ"
        conn.close()  # no Terminate: the socket just goes away
        wait_until(lambda: backend_gone(pg, pid), 5, f"backend {pid} to exit")
        with admin(pg) as check:
            assert check.execute(f"select count(*) from {table}").fetchone() == (0,)
    finally:
        with target.connect() as setup:
            setup.execute(f"drop table {table}")


def test_disconnect_mid_message_forwards_nothing(target: Target, pg: Any) -> None:
    table = unique("t_half")
    with target.connect() as setup:
        setup.execute(f"create table {table}(x int)")
    try:
        conn = target.raw()
        pid = int(conn.simple("select pg_backend_pid()")[1].row()[0] or 0)
        whole = r.query(f"insert into {table} values (42)")
        conn.send(whole[:-3])  # all but the end of the statement text and its terminator
        conn.close()
        wait_until(lambda: backend_gone(pg, pid), 5, f"backend {pid} to exit")
        with admin(pg) as check:
            assert check.execute(f"select count(*) from {table}").fetchone() == (0,)
    finally:
        with target.connect() as setup:
            setup.execute(f"drop table {table}")


def test_terminate_message_closes(target: Target, pg: Any) -> None:
    with target.raw() as conn:
        pid = int(conn.simple("select pg_backend_pid()")[1].row()[0] or 0)
        conn.send(r.terminate())
        assert conn.wait_closed(5) == b""
    wait_until(lambda: backend_gone(pg, pid), 5, f"backend {pid} to exit")


def test_idle_in_transaction_timeout_fatal_relayed(target: Target, pg: Any) -> None:
    """The server ends an idle transaction on its own (25P03) while no request is outstanding."""
    with target.raw() as conn:
        pid = int(conn.simple("select pg_backend_pid()")[1].row()[0] or 0)
        conn.simple("set idle_in_transaction_session_timeout = '300ms'")
        assert conn.simple("begin")[-1].status == "T"
        msg = conn.recv(5)
        fields = msg.fields()
        assert (msg.type, fields.get("S"), fields.get("C")) == ("E", "FATAL", "25P03"), fields
        assert conn.wait_closed(5) == b""
    wait_until(lambda: backend_gone(pg, pid), 5, f"backend {pid} to exit")
    with target.raw() as fresh:
        assert r.types(fresh.simple("select 1")) == "TDCZ"


def test_psql_describe_plus(target: Target) -> None:
    """psql's catalog queries (\\d+) through the proxy print exactly what they print direct."""
    import subprocess

    table = unique("t_dplus")
    with target.connect() as conn:
        conn.execute(f"create table {table}(id int primary key, v text default 'x')")
    try:
        done = subprocess.run(
            ["psql", "-X", "-d", target.dsn(), "-c", f"\\d+ {table}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 0, done.stderr
        assert f'Table "public.{table}"' in done.stdout and f"{table}_pkey" in done.stdout
        assert "Access method: heap" in done.stdout, done.stdout
    finally:
        with target.connect() as conn:
            conn.execute(f"drop table {table}")


def test_backend_terminated_mid_statement_audited(target: Target, pg: Any) -> None:
    app = unique("killed_mid")
    with target.raw(extra={"application_name": app}) as conn:
        pid = int(conn.simple("select pg_backend_pid()")[1].row()[0] or 0)
        conn.send(r.query("select pg_sleep(30)"))
        with admin(pg) as check:
            wait_until(
                lambda: check.execute(
                    "select 1 from pg_stat_activity where pid = %s and query like %s",
                    (pid, "%pg_sleep(30)%"),
                ).fetchone(),
                5,
                "pg_sleep to start",
            )
            check.execute("select pg_terminate_backend(%s)", (pid,))
        msgs, closed = conn.drain(5)
        assert closed and [m.sqlstate for m in msgs if m.type == "E"] == ["57P01"], r.summary(msgs)
    if target.proxy is None:
        return
    events = [e for e in settle(target.proxy, app) if e["type"] == "query"]
    sleeps = [e for e in events if "pg_sleep(30)" in e["statement"]]
    assert len(sleeps) == 1 and sleeps[0]["sqlstate"] == "57P01", events
