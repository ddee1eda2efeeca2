"""Extended Query protocol: pipelines, errors until Sync, statements/portals, Flush, row limits."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.e2e.kit import Target, settle, unique
from tests.support import rawpg as r

pytestmark = pytest.mark.e2e


def _queries(target: Target, app: str) -> list[dict[str, Any]]:
    assert target.proxy is not None
    return [e for e in settle(target.proxy, app) if e["type"] == "query"]


def test_psycopg_pipeline(target: Target) -> None:
    app = unique("pipeline")
    table = unique("t_pipe")
    with target.connect(application_name=app) as conn:
        conn.execute(f"create table {table}(id int primary key, v text)")
        with conn.pipeline() as p:
            cursors = []
            for i in range(30):
                cursors.append(
                    conn.execute(f"insert into {table} values (%s, %s) returning id", (i, f"v{i}"))
                )
                if i % 10 == 9:
                    p.sync()
            total = conn.execute(f"select count(*), sum(id) from {table}")
        assert [c.fetchone() for c in cursors] == [(i,) for i in range(30)]
        assert total.fetchone() == (30, sum(range(30)))
        conn.execute(f"drop table {table}")
    if target.proxy is None:
        return
    events = _queries(target, app)
    inserts = [e for e in events if e["statement"].startswith(f"insert into {table}")]
    assert len(inserts) == 30, [e["statement"] for e in events]
    assert all(e["command_tag"] == "INSERT 0 1" and e["rows"] == 1 for e in inserts)
    assert all(e["protocol"] == "extended" for e in inserts)
    assert [e["command_tag"] for e in events if "count(*)" in e["statement"]] == ["SELECT 1"]


def test_psycopg_pipeline_error_discards_until_sync(target: Target) -> None:
    app = unique("pipe_err")
    table = unique("t_pipe_err")
    with target.connect(application_name=app) as conn:
        conn.execute(f"create table {table}(id int primary key)")
        with pytest.raises(psycopg.errors.UniqueViolation), conn.pipeline() as p:
            conn.execute(f"insert into {table} values (1)")
            conn.execute(f"insert into {table} values (1)")
            conn.execute(f"insert into {table} values (2)")
            p.sync()
        assert conn.execute(f"select count(*) from {table}").fetchone() == (0,)
        conn.execute(f"drop table {table}")
    if target.proxy is None:
        return
    events = [e for e in _queries(target, app) if e["statement"].startswith("insert")]
    assert [(e["statement"][-3:], e["sqlstate"]) for e in events] == [
        ("(1)", None),
        ("(1)", "23505"),
    ], events


def _script(target: Target, *messages: bytes, syncs: int = 1) -> list[r.Msg]:
    with target.raw() as conn:
        conn.send(*messages)
        return conn.recv_n_ready(syncs)


def test_raw_error_mid_pipeline(target: Target) -> None:
    msgs = _script(
        target,
        r.parse("select 1"),
        r.bind(),
        r.execute(),
        r.parse("select 1/0"),
        r.bind(),
        r.execute(),
        r.parse("select 3"),
        r.bind(),
        r.execute(),
        r.sync(),
        r.parse("select 4"),
        r.bind(),
        r.execute(),
        r.sync(),
        syncs=2,
    )
    summary = r.summary(msgs)
    # 1/0 is folded by the planner, so the error comes at Bind.
    assert r.types(msgs) == "12DC1EZ12DCZ", summary
    assert msgs[5].sqlstate == "22012"


def test_raw_sync_in_later_packet(target: Target) -> None:
    with target.raw() as conn:
        conn.send(
            r.parse("select 1/0"), r.bind(), r.execute(), r.parse("select 2"), r.bind(), r.execute()
        )
        first = conn.recv(5)
        assert first.type == "1"
        err = conn.recv(5)  # the error (at Bind: constant folding) is flushed at once
        assert err.type == "E" and err.sqlstate == "22012", err
        assert conn.recv_quiet(0.3) == [], "nothing more before Sync"
        conn.send(r.sync())
        assert r.summary(conn.recv_until("Z")) == [("Z", "I")]


def test_raw_statements_portals_describe_close(target: Target) -> None:
    msgs = _script(
        target,
        r.parse("select $1::int + 1 as n", "s1", [23]),
        r.describe("S", "s1"),
        r.bind("p1", "s1", ["41"]),
        r.describe("P", "p1"),
        r.execute("p1"),
        r.parse("select 'unnamed' as u"),
        r.bind(),
        r.describe("P", ""),
        r.execute(),
        r.parse("set application_name = 'x_ext'"),
        r.bind(),
        r.describe("P"),
        r.execute(),
        r.close("P", "p1"),
        r.close("S", "s1"),
        r.close("S", "no_such_statement"),
        r.close("P", "no_such_portal"),
        r.sync(),
    )
    assert r.types(msgs) == "1tT2TDC12TDC12nC3333SZ", r.summary(msgs)
    assert msgs[5].row() == ["42"] and msgs[10].row() == ["unnamed"]


def test_raw_flush_without_sync(target: Target) -> None:
    with target.raw() as conn:
        conn.send(r.parse("select 7 as seven", "f1"), r.describe("S", "f1"), r.flush())
        got = [conn.recv(3) for _ in range(3)]
        assert r.types(got) == "1tT", "Flush must deliver replies without waiting for Sync"
        conn.send(r.bind("", "f1"), r.execute(), r.flush())
        got = [conn.recv(3) for _ in range(3)]
        assert r.summary(got) == [("2", b""), ("D", ("7",)), ("C", "SELECT 1")]
        conn.send(r.sync())
        assert r.summary(conn.recv_until("Z")) == [("Z", "I")]


def test_raw_error_with_flush_no_sync(target: Target) -> None:
    with target.raw() as conn:
        conn.send(r.parse("select nope"), r.flush())
        err = conn.recv(3)
        assert err.type == "E" and err.sqlstate == "42703"
        conn.send(r.bind(), r.execute(), r.sync())
        assert r.summary(conn.recv_until("Z")) == [("Z", "I")]


def test_raw_row_limit_portal_suspended(target: Target) -> None:
    app = unique("suspend")
    with target.raw(extra={"application_name": app}) as conn:
        conn.send(
            r.parse("select g from generate_series(1, 10) g"),
            r.bind(),
            r.execute("", 3),
            r.execute("", 3),
            r.execute("", 0),
            r.sync(),
        )
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "12DDDsDDDsDDDDCZ", r.summary(msgs)
        assert msgs[-2].tag == "SELECT 4"
        # A named portal in an explicit transaction survives Sync and dies at COMMIT.
        conn.send(r.query("begin"))
        conn.recv_until("Z")
        conn.send(
            r.parse("select g from generate_series(1, 5) g", "ps"),
            r.bind("np", "ps"),
            r.execute("np", 2),
            r.sync(),
        )
        assert r.types(conn.recv_until("Z")) == "12DDsZ"
        conn.send(r.execute("np", 0), r.sync())
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "DDDCZ" and msgs[-2].tag == "SELECT 3", r.summary(msgs)
        conn.send(r.query("commit"))
        conn.recv_until("Z")
        conn.send(r.execute("np", 0), r.sync())
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "EZ" and msgs[0].sqlstate == "34000", r.summary(msgs)
    if target.proxy is None:
        return
    events = [e for e in _queries(target, app) if "generate_series" in e["statement"]]
    assert [(e["rows"], e["command_tag"]) for e in events] == [
        (10, "SELECT 4"),
        (5, "SELECT 3"),
    ] or [e["rows"] for e in events] == [10, 5], (
        f"one event per portal run, rows summed over Executes: {events}"
    )


@pytest.mark.parametrize(
    ("sql", "want"),
    [
        ("select 1 as one", "12DsZ"),
        ("select 1/(random() * 0)::int", "12EZ"),
        ("select 1 where false", "12CZ"),
    ],
    ids=["suspended", "error", "no-rows"],
)
def test_raw_max_rows_then_sync(target: Target, sql: str, want: str) -> None:
    """asyncpg's fetchval/fetchrow: Execute(max_rows=1) + Sync, the portal dies suspended.

    The statement ran, so it is audited, even though no CommandComplete ever comes.
    """
    app = unique("maxrows1")
    with target.raw(extra={"application_name": app}) as conn:
        conn.send(r.parse(sql, "mr1"), r.bind("", "mr1"), r.execute("", 1), r.sync())
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == want, r.summary(msgs)
    if target.proxy is None:
        return
    events = [e for e in _queries(target, app) if e["statement"] == sql]
    assert len(events) == 1, f"{sql!r} ran once; events: {events}"
    event = events[0]
    if want == "12EZ":
        assert event["sqlstate"] == "22012", event
    else:
        assert event["error"] is None and event["rows"] == want.count("D"), event


def test_raw_error_at_bind_audited(target: Target) -> None:
    """Planning errors surface at Bind (constant folding); the failed statement is audited."""
    app = unique("bind_err")
    with target.raw(extra={"application_name": app}) as conn:
        conn.send(
            r.parse("select $1::int / 0", "", [0]), r.bind("", "", ["3"]), r.execute(), r.sync()
        )
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "1EZ" and msgs[1].sqlstate == "22012", r.summary(msgs)
    if target.proxy is None:
        return
    events = _queries(target, app)
    assert [(e["statement"], e["sqlstate"]) for e in events] == [("select $1::int / 0", "22012")], (
        events
    )


def test_raw_bind_missing_statement(target: Target) -> None:
    msgs = _script(target, r.bind("", "never_parsed"), r.execute(), r.sync())
    assert r.types(msgs) == "EZ" and msgs[0].sqlstate == "26000", r.summary(msgs)


def test_raw_unnamed_statement_destroyed_by_query(target: Target) -> None:
    with target.raw() as conn:
        conn.send(r.parse("select 1"), r.sync())
        assert r.types(conn.recv_until("Z")) == "1Z"
        assert r.types(conn.simple("select 2")) == "TDCZ"
        conn.send(r.bind(), r.execute(), r.sync())
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "EZ" and msgs[0].sqlstate == "26000", r.summary(msgs)


def test_raw_parse_error_then_reuse_name(target: Target) -> None:
    with target.raw() as conn:
        conn.send(
            r.parse("selec 1", "reuse"),
            r.sync(),
            r.parse("select 1", "reuse"),
            r.bind("", "reuse"),
            r.execute(),
            r.sync(),
        )
        msgs = conn.recv_n_ready(2)
        assert r.types(msgs) == "EZ12DCZ", r.summary(msgs)
        assert msgs[0].sqlstate == "42601"


def test_raw_simple_query_inside_extended_batch(target: Target) -> None:
    msgs = _script(
        target,
        r.parse("select 1"),
        r.bind(),
        r.execute(),
        r.query("select 2"),
        r.bind(),
        r.execute(),
        r.sync(),
        syncs=2,
    )
    # The Query commits the extended batch so far and destroys the unnamed statement.
    assert r.types(msgs) == "12DCTDCZEZ", r.summary(msgs)


def test_raw_pipeline_repeated(target: Target) -> None:
    """SPQR-style: a whole pipelined group, sent in one write, five times over."""
    group = [r.parse("select $1::text", "rp", [25]), r.sync()]
    for i in range(20):
        group += [r.bind("", "rp", [f"v{i}"]), r.execute()]
    group += [r.sync(), r.close("S", "rp"), r.sync()]
    with target.raw() as conn:
        for _ in range(5):
            conn.send(*group)
            msgs = conn.recv_n_ready(3)
            assert r.types(msgs) == "1Z" + "2DC" * 20 + "Z" + "3Z", r.summary(msgs)
            assert [m.row()[0] for m in msgs if m.type == "D"] == [f"v{i}" for i in range(20)]


def test_asyncpg_prepared_and_executemany(target: Target) -> None:
    import asyncio

    import asyncpg

    app = unique("asyncpg_ext")
    table = unique("t_apg")

    async def run() -> tuple[int, list[int]]:
        conn = await asyncpg.connect(
            target.dsn(), timeout=5, server_settings={"application_name": app}
        )
        try:
            await conn.execute(f"create table {table}(id int, v text)")
            await conn.executemany(
                f"insert into {table} values ($1, $2)", [(i, str(i)) for i in range(20)]
            )
            stmt = await conn.prepare(f"select id from {table} where id < $1 order by id")
            got = [row["id"] for row in await stmt.fetch(5)]
            count = await conn.fetchval(f"select count(*) from {table}")
            await conn.execute(f"drop table {table}")
            return int(count), got
        finally:
            await conn.close()

    assert asyncio.run(asyncio.wait_for(run(), 15)) == (20, [0, 1, 2, 3, 4])
    if target.proxy is None:
        return
    inserts = [e for e in _queries(target, app) if e["statement"].startswith("insert")]
    assert len(inserts) == 20 and all(e["rows"] == 1 for e in inserts), inserts


def test_differential_extended(pg: Any, proxy: Any) -> None:
    """The same extended-protocol scripts, direct and through the proxy, give the same replies."""
    scripts: list[list[bytes]] = [
        [
            r.parse("select $1::int * 2", "", [0]),
            r.bind("", "", ["21"]),
            r.describe("P"),
            r.execute(),
            r.sync(),
        ],
        [r.parse("select 1/0"), r.bind(), r.execute(), r.sync()],
        [r.describe("S", "missing"), r.sync()],
        [
            r.parse("select g from generate_series(1,4) g"),
            r.bind(),
            r.execute("", 1),
            r.execute("", 1),
            r.close("P", ""),
            r.sync(),
        ],
        [r.parse("select $1", "", [25]), r.bind("", "", [None]), r.execute(), r.sync()],
        [
            r.parse("begin"),
            r.bind(),
            r.execute(),
            r.parse("select nope"),
            r.sync(),
            r.query("rollback"),
        ],
    ]
    out = {}
    for name, host, port in (("direct", pg.host, pg.port), ("proxy", proxy.host, proxy.port)):
        with r.RawConn(host, port) as conn:
            conn.login()
            results = []
            for script in scripts:
                conn.send(*script)
                results.append(r.summary(conn.recv_n_ready(sum(m[:1] in b"SQ" for m in script))))
            out[name] = results
    for script, direct, through in zip(scripts, out["direct"], out["proxy"], strict=True):
        assert through == direct, f"{[m[:1] for m in script]}: proxy {through} != {direct}"


def test_raw_trailing_describe_portal_then_sync(target: Target) -> None:
    """postgres.js style: Describe portal sent alone, Sync in a later write (PgDog #1508)."""
    with target.raw() as conn:
        conn.send(r.parse("select 1 as a"), r.bind(), r.execute())
        conn.send(r.describe("P"))
        conn.send(r.sync())
        msgs = conn.recv_until("Z", 5)
        assert r.types(msgs) == "12DCTZ", r.summary(msgs)


def test_raw_large_parse_bind_and_long_names(target: Target) -> None:
    """Parse and Bind far larger than one read; a statement name larger than a small buffer."""
    name = "s" + "n" * 5000
    big_sql = "select length($1::text) as n /* " + "c" * 200_000 + " */"
    param = "p" * 3_000_000
    with target.raw(timeout=20) as conn:
        conn.send(
            r.parse(big_sql, name, [25]),
            r.bind("", name, [param]),
            r.execute(),
            r.close("S", name),
            r.sync(),
        )
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "12DC3Z", r.summary(msgs)
        assert msgs[2].row() == [str(len(param))]


def test_raw_half_buffer_prepare_in_pipeline(target: Target) -> None:
    """Many mid-sized Parse messages in one write, so messages straddle read boundaries."""
    messages = []
    for i in range(40):
        messages += [
            r.parse(f"select {i} as k /* {'x' * (2000 + i * 37)} */", f"hb{i}"),
            r.bind("", f"hb{i}"),
            r.execute(),
        ]
    messages.append(r.sync())
    with target.raw(timeout=10) as conn:
        conn.send(*messages)
        msgs = conn.recv_until("Z")
        assert r.types(msgs) == "12DC" * 40 + "Z"
        assert [m.row()[0] for m in msgs if m.type == "D"] == [str(i) for i in range(40)]


def test_psycopg_server_side_prepared(target: Target) -> None:
    """psycopg prepare=True: one Parse, many Bind/Execute; one event per execution."""
    app = unique("prepared")
    with target.connect(application_name=app) as conn:
        for i in range(5):
            got = conn.execute("select %s::int * 3 as tripled", (i,), prepare=True).fetchone()
            assert got == (i * 3,)
    if target.proxy is None:
        return
    events = [e for e in _queries(target, app) if "tripled" in e["statement"]]
    assert len(events) == 5, events
    assert all(e["statement_name"] for e in events), "a named statement's name is recorded"
    assert len({e["statement_name"] for e in events}) == 1, events
    assert [e["rows"] for e in events] == [1] * 5
