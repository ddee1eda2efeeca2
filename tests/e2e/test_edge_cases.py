"""Corner cases of message flow that proxies tend to get wrong, direct vs through the proxy."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from tests.e2e.kit import Target, settle, unique
from tests.support import rawpg as r

pytestmark = pytest.mark.e2e


def _queries(target: Target, app: str) -> list[dict[str, Any]]:
    assert target.proxy is not None
    return [e for e in settle(target.proxy, app) if e["type"] == "query"]


def test_copy_inside_multi_statement_query(target: Target) -> None:
    """One Query: SELECT, COPY FROM STDIN, COPY TO STDOUT, SELECT; one ReadyForQuery at the end."""
    app = unique("multi_copy")
    table = unique("t_mcopy")
    with target.raw(extra={"application_name": app}) as conn:
        conn.simple(f"create table {table}(x int)")
        conn.send(
            r.query(
                f"select 'a'; copy {table} from stdin; copy {table} to stdout; "
                f"select count(*) from {table}"
            )
        )
        head = [conn.recv() for _ in range(4)]
        assert r.types(head) == "TDCG", r.summary(head)
        conn.send(r.copy_data(b"1\n2\n3\n"), r.copy_done())
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "CHdddcCTDCZ", r.summary(msgs)
        assert msgs[0].tag == "COPY 3" and msgs[6].tag == "COPY 3"
        assert msgs[8].row() == ["3"]
        conn.simple(f"drop table {table}")
    if target.proxy is None:
        return
    tags = [e["command_tag"] for e in _queries(target, app)]
    assert tags == ["CREATE TABLE", "SELECT 1", "COPY 3", "COPY 3", "SELECT 1", "DROP TABLE"], tags


def test_notices_between_rows(target: Target) -> None:
    app = unique("notice_rows")
    fn = unique("noisy")
    with target.raw(extra={"application_name": app}) as conn:
        conn.simple(
            f"create function {fn}(i int) returns int language plpgsql as "
            f"$$ begin raise notice 'row %', i; return i; end $$"
        )
        msgs = conn.simple(f"select {fn}(g) from generate_series(1, 3) g")
        assert r.types(msgs) == "TNDNDNDCZ", r.summary(msgs)
        assert [m.fields()["M"] for m in msgs if m.type == "N"] == ["row 1", "row 2", "row 3"]
        conn.simple(f"drop function {fn}")
    if target.proxy is None:
        return
    select = [e for e in _queries(target, app) if e["statement"].startswith("select")]
    assert [(e["command_tag"], e["rows"]) for e in select] == [("SELECT 3", 3)], select


def test_pipelined_simple_queries(target: Target) -> None:
    """Several Query messages in one write, mixed with an extended batch."""
    with target.raw() as conn:
        conn.send(
            r.query("select 1"),
            r.query("select 1/0"),
            r.parse("select 2"),
            r.bind(),
            r.execute(),
            r.sync(),
            r.query("select 3"),
        )
        msgs = conn.recv_n_ready(4)
        assert r.types(msgs) == "TDCZEZ12DCZTDCZ", r.summary(msgs)


def test_lone_sync_and_flush(target: Target) -> None:
    with target.raw() as conn:
        conn.send(r.flush())
        assert conn.recv_quiet(0.3) == []
        conn.send(r.sync(), r.sync())
        assert r.summary(conn.recv_n_ready(2)) == [("Z", "I"), ("Z", "I")]


def test_thousand_statements_in_one_query(target: Target) -> None:
    app = unique("thousand")
    with target.raw(extra={"application_name": app}, timeout=20) as conn:
        msgs = conn.simple("".join(f"select {i};" for i in range(1000)))
        assert r.types(msgs) == "TDC" * 1000 + "Z"
    if target.proxy is None:
        return
    events = _queries(target, app)
    assert len(events) == 1000, len(events)
    assert [e["statement"].strip().rstrip(";") for e in events[:3]] == [
        "select 0",
        "select 1",
        "select 2",
    ]


def test_latin1_client_encoding(target: Target) -> None:
    """Statement text arrives in the client's encoding; rows come back in it too."""
    app = unique("latin1")
    with target.raw(extra={"application_name": app, "client_encoding": "LATIN1"}) as conn:
        assert conn.params.get("client_encoding") == "LATIN1"
        conn.send(
            r.frame(b"Q", "select 'café' as word, length('café')".encode("latin-1") + b"\x00")
        )
        msgs = conn.recv_until("Z")
        rows = [m.body for m in msgs if m.type == "D"]
        assert r.types(msgs) == "TDCZ", r.summary(msgs)
        assert "café".encode("latin-1") in rows[0] and rows[0].endswith(b"4"), rows
    if target.proxy is None:
        return
    events = _queries(target, app)
    assert [e["statement"] for e in events] == ["select 'café' as word, length('café')"], events


def test_binary_parameters_and_results(target: Target) -> None:
    with target.raw() as conn:
        conn.send(
            r.parse("select $1::int8 * 2 as doubled, $2::bytea as raw", "", [20, 17]),
            r.bind(
                "",
                "",
                [struct.pack("!q", 2**40), b"\x00\x01\xff"],
                result_formats=[1],
                param_formats=[1],
            ),
            r.execute(),
            r.sync(),
        )
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "12DCZ", r.summary(msgs)
        body = msgs[2].body
        assert body == (
            struct.pack("!H", 2)
            + struct.pack("!i", 8)
            + struct.pack("!q", 2**41)
            + struct.pack("!i", 3)
            + b"\x00\x01\xff"
        )


def test_startup_without_user(target: Target) -> None:
    with target.raw(login=False) as conn:
        conn.send(r.startup({"database": "postgres"}))
        msgs, closed = conn.drain(5)
    assert closed and r.types(msgs) == "E", r.summary(msgs)
    assert msgs[0].sqlstate in ("28000", "08P01"), msgs[0].fields()


def test_startup_unknown_database(target: Target) -> None:
    with target.raw(login=False) as conn:
        conn.send(r.startup({"user": "postgres", "database": "no_such_db_here"}))
        msgs, closed = conn.drain(5)
    assert closed and r.types(msgs) in ("E", "RE"), r.summary(msgs)
    assert msgs[-1].sqlstate == "3D000", msgs[-1].fields()


def test_second_startup_packet_in_session(target: Target) -> None:
    """A startup packet after login is not a message: protocol violation, closed."""
    with target.raw() as conn:
        conn.send(r.startup({"user": "postgres", "database": "postgres"}))
        msgs, closed = conn.drain(5)
    assert closed, r.summary(msgs)
    assert [m.sqlstate for m in msgs if m.type == "E"] in ([], ["08P01"]), r.summary(msgs)


def test_password_before_startup(target: Target) -> None:
    with target.raw(login=False) as conn:
        conn.send(r.password("sneaky"))
        msgs, closed = conn.drain(5)
    assert closed and r.types(msgs) in ("", "E"), r.summary(msgs)


def test_terminate_mid_pipeline(target: Target, pg: Any) -> None:
    """Terminate after an unsynced Execute: the implicit transaction is rolled back."""
    table = unique("t_term")
    with target.connect() as setup:
        setup.execute(f"create table {table}(x int)")
    try:
        with target.raw() as conn:
            conn.send(
                r.parse(f"insert into {table} values (1)"), r.bind(), r.execute(), r.terminate()
            )
            conn.wait_closed(5)
        with target.connect() as check:
            assert check.execute(f"select count(*) from {table}").fetchone() == (0,)
    finally:
        with target.connect() as setup:
            setup.execute(f"drop table {table}")


def test_audit_names_statement_and_portal(target: Target) -> None:
    app = unique("names")
    with target.raw(extra={"application_name": app}) as conn:
        conn.send(r.query("begin"))
        conn.recv_until("Z")
        conn.send(
            r.parse("select 42", "named_stmt"),
            r.bind("named_portal", "named_stmt"),
            r.execute("named_portal"),
            r.sync(),
        )
        assert r.types(conn.recv_until("Z")) == "12DCZ"
        conn.send(r.query("commit"))
        conn.recv_until("Z")
    if target.proxy is None:
        return
    events = [e for e in _queries(target, app) if e["statement"] == "select 42"]
    assert len(events) == 1, events
    event = events[0]
    assert (event["statement_name"], event["portal"]) == ("named_stmt", "named_portal"), event
    assert event["protocol"] == "extended" and event["tx_status"] == "T", event


@pytest.mark.parametrize("kind", [b"S", b"H", b"C", b"D", b"E"])
def test_small_message_over_limit(target: Target, kind: bytes) -> None:
    """Sync/Flush/Close/Describe/Execute are small messages: 20 kB of body is a violation."""
    body = {
        b"S": b"x" * 20_000,
        b"H": b"x" * 20_000,
        b"C": b"S" + b"n" * 20_000 + b"\x00",
        b"D": b"S" + b"n" * 20_000 + b"\x00",
        b"E": b"p" * 20_000 + b"\x00\x00\x00\x00\x00",
    }
    with target.raw() as conn:
        conn.send(r.frame(kind, body[kind]))
        msgs, closed = conn.drain(5)
    assert closed, r.summary(msgs)
    assert [m.sqlstate for m in msgs if m.type == "E"] in ([], ["08P01"]), r.summary(msgs)


def test_half_closed_client_still_gets_its_reply(target: Target) -> None:
    """Query, then shutdown(SHUT_WR): Postgres still answers before it sees the EOF."""
    import socket

    with target.raw() as conn:
        conn.send(r.query("select 'late reply'"))
        conn.sock.shutdown(socket.SHUT_WR)
        msgs, closed = conn.drain(5)
    assert r.types(msgs) == "TDCZ", r.summary(msgs)
    assert closed


def test_session_byte_counts(target: Target) -> None:
    """session_end counts exactly the bytes that crossed the client socket."""
    app = unique("bytes")
    sent = received = 0
    with target.raw(login=False) as conn:
        startup = r.startup({"user": "postgres", "database": "postgres", "application_name": app})
        conn.send(startup)
        sent += len(startup)
        login = conn.recv_until("Z")
        for request in (
            r.query("select repeat('b', 5000)"),
            r.parse("select 1"),
            r.bind(),
            r.execute(),
            r.sync(),
        ):
            conn.send(request)
            sent += len(request)
        replies = conn.recv_n_ready(2)
        conn.send(r.terminate())
        sent += 5
        conn.wait_closed(5)
        received = sum(5 + len(m.body) for m in login + replies)
    if target.proxy is None:
        return
    end = next(e for e in settle(target.proxy, app) if e["type"] == "session_end")
    assert (end["bytes_from_client"], end["bytes_to_client"]) == (sent, received), end
    assert end["statements"] == 2, end
