"""Simple Query protocol: multi-statement strings, errors mid-string, empty queries."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.kit import Target, settle, unique
from tests.support import rawpg

pytestmark = pytest.mark.e2e


def _queries(target: Target, app: str) -> list[dict[str, Any]]:
    assert target.proxy is not None
    return [e for e in settle(target.proxy, app) if e["type"] == "query"]


def test_multi_statement(target: Target) -> None:
    app = unique("multi")
    table = unique("t_multi")
    sql = (
        f"select 1 as a; select 'x' as b, 2 as c; create temp table {table}(x int); "
        f"insert into {table} values (1), (2), (3); update {table} set x = x + 1 where x > 1; "
        f"delete from {table} where x = 4; drop table {table}"
    )
    with target.raw(extra={"application_name": app}) as conn:
        msgs = conn.simple(sql)
    assert rawpg.summary(msgs) == [
        ("T", ("a",)),
        ("D", ("1",)),
        ("C", "SELECT 1"),
        ("T", ("b", "c")),
        ("D", ("x", "2")),
        ("C", "SELECT 1"),
        ("C", "CREATE TABLE"),
        ("C", "INSERT 0 3"),
        ("C", "UPDATE 2"),
        ("C", "DELETE 1"),
        ("C", "DROP TABLE"),
        ("Z", "I"),
    ]
    if target.proxy is None:
        return
    events = _queries(target, app)
    got = [(e["statement"].strip().rstrip(";"), e["command_tag"], e["rows"]) for e in events]
    assert got == [
        ("select 1 as a", "SELECT 1", 1),
        ("select 'x' as b, 2 as c", "SELECT 1", 1),
        (f"create temp table {table}(x int)", "CREATE TABLE", None),
        (f"insert into {table} values (1), (2), (3)", "INSERT 0 3", 3),
        (f"update {table} set x = x + 1 where x > 1", "UPDATE 2", 2),
        (f"delete from {table} where x = 4", "DELETE 1", 1),
        (f"drop table {table}", "DROP TABLE", None),
    ], got
    for e in events:
        assert e["protocol"] == "simple" and e["sqlstate"] is None and e["error"] is None, e
        assert e["tx_status"] in ("I", "T"), e


def test_error_mid_string(target: Target) -> None:
    app = unique("midErr")
    table = unique("t_mid")
    with target.raw(extra={"application_name": app}) as conn:
        conn.simple(f"create table {table}(x int)")
        msgs = conn.simple(
            f"insert into {table} values (1); select 1/0; insert into {table} values (2); select 3"
        )
        summary = rawpg.summary(msgs)
        assert [s[0] for s in summary] == ["C", "E", "Z"], summary
        assert msgs[1].sqlstate == "22012" and msgs[2].status == "I"
        rows = [m.row() for m in conn.simple(f"select count(*) from {table}") if m.type == "D"]
        assert rows == [["0"]], "the implicit transaction must roll back the first insert"
        conn.simple(f"drop table {table}")
    if target.proxy is None:
        return
    events = _queries(target, app)
    mid = [
        e
        for e in events
        if table in e["statement"]
        and "count" not in e["statement"]
        and "create" not in e["statement"]
        and "drop" not in e["statement"]
    ]
    mid += [e for e in events if "1/0" in e["statement"] or "select 3" in e["statement"]]
    statements = [e["statement"].strip() for e in mid]
    assert statements == [f"insert into {table} values (1)", "select 1/0"], statements
    assert mid[0]["command_tag"] == "INSERT 0 1" and mid[0]["error"] is None
    assert mid[1]["sqlstate"] == "22012" and mid[1]["error"], mid[1]
    assert mid[1]["command_tag"] in (None, ""), mid[1]


@pytest.mark.parametrize(
    "sql",
    ["", ";", "-- just a comment", "  ;  ; ", "/* c */"],
    ids=["empty", "semicolon", "comment", "semicolons", "block-comment"],
)
def test_empty_query(target: Target, sql: str) -> None:
    with target.raw() as conn:
        msgs = conn.simple(sql)
        assert rawpg.types(msgs) == "IZ", rawpg.summary(msgs)
        assert rawpg.types(conn.simple("select 1")) == "TDCZ"


def test_transaction_status_and_25p02(target: Target) -> None:
    with target.raw() as conn:
        assert conn.simple("begin")[-1].status == "T"
        msgs = conn.simple("select nope")
        assert msgs[0].sqlstate == "42703" and msgs[-1].status == "E"
        msgs = conn.simple("select 1")
        assert msgs[0].sqlstate == "25P02" and msgs[-1].status == "E"
        msgs = conn.simple("commit")
        assert rawpg.summary(msgs) == [("C", "ROLLBACK"), ("Z", "I")]


def test_notice_and_parameter_status(target: Target) -> None:
    with target.raw() as conn:
        msgs = conn.simple("do $$ begin raise notice 'hello % world', 42; end $$; select 5")
        summary = rawpg.summary(msgs)
        assert summary[0][:3] == ("N", "NOTICE", "00000") and summary[0][3] == "hello 42 world"
        assert rawpg.types(msgs) == "NCTDCZ", summary
        msgs = conn.simple("set application_name = 'renamed_by_set'")
        status = [m.param_status() for m in msgs if m.type == "S"]
        assert status == [("application_name", "renamed_by_set")], rawpg.summary(msgs)
        assert rawpg.types(msgs) == "CSZ"


def test_large_result_and_large_query(target: Target) -> None:
    """A 5 MB result and a 2 MB query text go through unchanged."""
    with target.raw(timeout=20) as conn:
        msgs = conn.simple("select repeat('ab', 1000) from generate_series(1, 2500)")
        rows = [m for m in msgs if m.type == "D"]
        assert len(rows) == 2500 and rows[-1].row() == ["ab" * 1000]
        literal = "z" * 2_000_000
        msgs = conn.simple(f"select length('{literal}')")
        assert [m.row() for m in msgs if m.type == "D"] == [["2000000"]]


def test_differential_simple(pg: Any, proxy: Any) -> None:
    """Byte-level parity (ignoring pids, keys and source lines) for a battery of Queries."""
    scripts = [
        "select 1",
        "select null::int, ''::text, 'é'::text, 1.5::numeric, true",
        "select * from generate_series(1, 3) g",
        "select 1; select 2",
        "select 1/0",
        "begin; select 1; commit",
        "begin",
        "select nope",
        "rollback",
        "show server_version_num",
        "values (1, 'a'), (2, 'b')",
        "select pg_catalog.set_config('search_path', 'public', false)",
        "",
    ]
    out = {}
    for name, port in (("direct", pg.port), ("proxy", proxy.port)):
        with rawpg.RawConn(pg.host if name == "direct" else proxy.host, port) as conn:
            conn.login()
            out[name] = [rawpg.summary(conn.simple(sql)) for sql in scripts]
    for sql, direct, through in zip(scripts, out["direct"], out["proxy"], strict=True):
        assert through == direct, f"{sql!r}: proxy {through} != direct {direct}"
