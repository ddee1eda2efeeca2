"""Audit statement text and command facts: splitting of multi-statement Queries, rows per tag."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.kit import Target, settle, unique
from tests.support import rawpg as r

pytestmark = pytest.mark.e2e


def _run(target: Target, sql: str) -> tuple[list[r.Msg], list[dict[str, Any]]]:
    app = unique("text")
    with target.raw(extra={"application_name": app}) as conn:
        msgs = conn.simple(sql)
    if target.proxy is None:
        return msgs, []
    return msgs, [e for e in settle(target.proxy, app) if e["type"] == "query"]


SPLITS = [
    ("select ';' as a; select 'x;y' as b", ["select ';' as a", "select 'x;y' as b"]),
    (
        "select 1 /* ; */; -- a ; comment\nselect 2",
        ["select 1 /* ; */", "-- a ; comment\nselect 2"],
    ),
    (
        "do $$ begin perform 1; perform 2; end $$; select 3",
        ["do $$ begin perform 1; perform 2; end $$", "select 3"],
    ),
    (
        "select 'héllo wörld ✓' as u; select 'next' as n",
        ["select 'héllo wörld ✓' as u", "select 'next' as n"],
    ),
    (
        "select 1 as \"we;ird\"; select E'\\';' as e",
        ['select 1 as "we;ird"', "select E'\\';' as e"],
    ),
]


@pytest.mark.parametrize(
    ("sql", "parts"), SPLITS, ids=["literals", "comments", "dollar-quotes", "multibyte", "idents"]
)
def test_multi_statement_split(target: Target, sql: str, parts: list[str]) -> None:
    msgs, events = _run(target, sql)
    assert r.types(msgs).count("C") == len(parts) and msgs[-1].type == "Z", r.summary(msgs)
    if target.proxy is None:
        return
    got = [e["statement"].strip().rstrip(";").strip() for e in events]
    want = [p.strip() for p in parts]
    # A leading comment may be kept or dropped, but the statement itself must be exact.
    assert len(got) == len(want), got
    for g, w in zip(got, want, strict=True):
        assert g == w or (w.startswith("--") and g == w.split("\n", 1)[1]), (g, w)


TAGS = [
    ("create temp table ctas as select g from generate_series(1, 3) g", "SELECT 3", 3),
    ("select * from generate_series(1, 4)", "SELECT 4", 4),
    ("values (1), (2)", "SELECT 2", 2),
    ("with x as (select 1) select * from x, generate_series(1, 5)", "SELECT 5", 5),
]


@pytest.mark.parametrize(("sql", "tag", "rows"), TAGS, ids=["ctas", "select", "values", "cte"])
def test_rows_from_tag(target: Target, sql: str, tag: str, rows: int) -> None:
    msgs, events = _run(target, sql)
    assert [m.tag for m in msgs if m.type == "C"] == [tag], r.summary(msgs)
    if target.proxy is None:
        return
    assert [(e["command_tag"], e["rows"]) for e in events] == [(tag, rows)], events


def test_cursor_prepare_execute_merge(target: Target) -> None:
    table = unique("t_merge")
    sql = (
        f"create temp table {table}(id int primary key, v int); "
        f"insert into {table} select g, 0 from generate_series(1, 4) g; "
        f"merge into {table} t using (select 2 as id union all select 9) s on t.id = s.id "
        "when matched then update set v = 1 when not matched then insert values (s.id, 2); "
        f"prepare pp as select * from {table} where v > $1; execute pp(0); "
        f"begin; declare cur cursor for select * from {table}; fetch 3 from cur; "
        "move 1 in cur; close cur; commit"
    )
    msgs, events = _run(target, sql)
    tags = [m.tag for m in msgs if m.type == "C"]
    assert tags == [
        "CREATE TABLE",
        "INSERT 0 4",
        "MERGE 2",
        "PREPARE",
        "SELECT 2",
        "BEGIN",
        "DECLARE CURSOR",
        "FETCH 3",
        "MOVE 1",
        "CLOSE CURSOR",
        "COMMIT",
    ], tags
    if target.proxy is None:
        return
    assert [e["command_tag"] for e in events] == tags
    rows = {e["command_tag"]: e["rows"] for e in events}
    assert rows["MERGE 2"] == 2 and rows["SELECT 2"] == 2 and rows["FETCH 3"] == 3, rows
    assert rows["INSERT 0 4"] == 4
