"""The runtime row guard (issue 10 §2): a rule's ``max_rows: N`` runs the statement inside a
savepoint pgwarden creates, and rolls it back and refuses it when its command tag reports more
than N rows.

Differential: each scenario runs directly against PostgreSQL too. Within the limit, the client
and the server must end up exactly as without pgwarden (tags, row counts, RETURNING rows,
table contents, transaction status). Over the limit, the direct run computes what the statement
would have done, and through pgwarden the outcome must be that of a blocked statement: the
server's effect of a statement that fails in its place (same table contents, same transaction
status), with the policy error and the attempted count in the audit record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.e2e.kit import admin, policy_proxy, scratch_table, unique, wait_until
from tests.support import rawpg

pytestmark = pytest.mark.e2e

LIMIT = 3
POLICY = f"""\
version: 1
defaults: {{action: allow, on_unparsable: block}}
rules:
  - id: few-rows
    when: {{commands: [UPDATE, DELETE, MERGE, INSERT]}}
    action: allow
    max_rows: {LIMIT}
    message: Change at most {LIMIT} rows at a time.
"""

# Rows 1..10; "few" statements touch at most LIMIT of them, "many" more.
FEW = "update {t} set q = q + 100 where id <= 2"
MANY = "update {t} set q = q + 100 where id > 0"
FAILS_ITSELF = "update {t} set q = 1 / (id - id) where id > 0"
# What a blocked statement leaves behind, run directly: it fails in the same place.
STAND_IN = "select 1 / 0"


@pytest.fixture(scope="module")
def guarded(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with policy_proxy(pg, tmp_path_factory.mktemp("rowguard"), POLICY) as proxy:
        yield proxy


@pytest.fixture
def table(pg: Any) -> Iterator[str]:
    with scratch_table(pg, "guarded", 10) as name:
        yield name


def _contents(pg: Any, table: str) -> list[tuple[int, int]]:
    with admin(pg) as conn:
        return [tuple(r) for r in conn.execute(f"select id, q from {table} order by id")]


def _reset(pg: Any, table: str) -> None:
    """Back to what scratch_table made: rows 1..10 with q = id."""
    with admin(pg) as conn:
        conn.execute(f"delete from {table}")
        conn.execute(f"insert into {table} select g, g from generate_series(1, 10) g")


def _direct(pg: Any) -> str:
    return str(pg.dsn())


def _guard_events(proxy: Any, app: str) -> list[dict[str, Any]]:
    return [
        e
        for e in proxy.events("query")
        if e.get("application_name") == app and e.get("row_guard") is not None
    ]


def _simple_script(dsn: str, table: str, steps: list[str], app: str) -> list[Any]:
    """Run ``steps`` with psycopg (simple protocol inside explicit transactions too): what
    the client saw of each, and its transaction status at the end."""
    seen: list[Any] = []
    with psycopg.connect(dsn, autocommit=True, application_name=app) as conn:
        for step in steps:
            sql = step.format(t=table)
            try:
                cur = conn.execute(sql.encode(), prepare=False)  # bytes: simple Query
                rows = cur.fetchall() if cur.description else None
                seen.append((cur.statusmessage, cur.rowcount, rows))
            except psycopg.Error as exc:
                seen.append(("error", exc.sqlstate))
        seen.append(("status", conn.info.transaction_status.name))
    return seen


def _alike(direct: list[Any], proxied: list[Any], refused: set[int]) -> None:
    """The proxy's view equals the direct one, except that a refused step is a 42501 where
    the direct stand-in failed with its own error."""
    assert len(direct) == len(proxied)
    for index, (d, p) in enumerate(zip(direct, proxied, strict=True)):
        if index in refused:
            assert d[0] == "error" and p == ("error", "42501"), (index, d, p)
        else:
            assert d == p, (index, d, p)


@pytest.mark.parametrize(
    ("steps", "refused"),
    [
        ([FEW], set()),
        ([FEW + " returning id, q"], set()),
        ([MANY], {0}),
        ([MANY + " returning id"], {0}),
        (["begin", FEW, "select count(*) from {t} where q > 100", "commit"], set()),
        (["begin", "update {t} set q = 0 where id = 10", MANY, "select 1", "commit"], {2}),
        (["begin", "savepoint mine", MANY, "rollback to savepoint mine", "commit"], {2}),
        ([FAILS_ITSELF], set()),
        (["begin", FAILS_ITSELF, "select 1", "rollback"], set()),
        (["begin", "select 1 / 0", MANY, "rollback"], set()),
        (["delete from {t} where id in (select id from {t} where id > 7)"], set()),
        (["delete from {t} where id in (select id from {t} where id > 5)"], {0}),
        (["insert into {t} select g, g from generate_series(11, 12) g"], set()),
        (
            [
                "insert into {t} select g, g from generate_series(1, 10) g "
                "on conflict (id) do update set q = excluded.q + 1"
            ],
            {0},
        ),
        (
            [
                "merge into {t} d using (select id from {t}) s on d.id = s.id "
                "when matched then update set q = 0"
            ],
            {0},
        ),
    ],
)
def test_simple_protocol_is_what_postgres_does_or_what_a_block_does(
    guarded: Any, pg: Any, table: str, steps: list[str], refused: set[int]
) -> None:
    direct_steps = [STAND_IN if i in refused else s for i, s in enumerate(steps)]
    direct = _simple_script(_direct(pg), table, direct_steps, unique("direct"))
    direct_table = _contents(pg, table)
    _reset(pg, table)
    app = unique("guarded")
    proxied = _simple_script(guarded.dsn(), table, steps, app)
    assert _contents(pg, table) == direct_table
    _alike(direct, proxied, refused)
    if refused:
        events = wait_until(lambda: _guard_events(guarded, app) or None, 10, "guard records")
        refusals = [e for e in events if e["row_guard"]["outcome"] in ("exceeded", "uncounted")]
        assert refusals and all(e["sqlstate"] == "42501" for e in refusals)
        assert all(e["row_guard"]["rows"] > LIMIT for e in refusals)


def test_the_attempted_count_is_recorded(guarded: Any, pg: Any, table: str) -> None:
    app = unique("count")
    _simple_script(guarded.dsn(), table, [MANY, FEW], app)
    events = wait_until(
        lambda: (lambda e: e if len(e) >= 2 else None)(_guard_events(guarded, app)), 10
    )
    assert [e["row_guard"] for e in events] == [
        {"max_rows": LIMIT, "rule": "few-rows", "outcome": "exceeded", "rows": 10},
        {"max_rows": LIMIT, "rule": "few-rows", "outcome": "within", "rows": 2},
    ]
    assert [e["rows"] for e in events] == [None, 2]
    assert events[0]["decision"]["action"] == "block"


def test_a_guarded_statement_among_others_in_one_query_is_refused(
    guarded: Any, pg: Any, table: str
) -> None:
    before = _contents(pg, table)
    seen = _simple_script(guarded.dsn(), table, [f"select 1; {FEW}"], unique("multi"))
    assert seen == [("error", "42501"), ("status", "IDLE")]
    assert _contents(pg, table) == before


def _pipeline(dsn: str, table: str, steps: list[str], begin: bool) -> list[Any]:
    """psycopg pipeline mode (extended protocol, one Sync at the end)."""
    seen: list[Any] = []
    with psycopg.connect(dsn, autocommit=not begin) as conn:
        try:
            with conn.pipeline():
                cursors = [conn.execute(s.format(t=table)) for s in steps]
            for cur in cursors:
                seen.append((cur.statusmessage, cur.rowcount))
        except psycopg.Error as exc:
            seen.append(("error", exc.sqlstate))
        seen.append(("status", conn.info.transaction_status.name))
        if begin:
            conn.rollback() if conn.info.transaction_status.name == "INERROR" else conn.commit()
    return seen


@pytest.mark.parametrize("begin", [False, True])
@pytest.mark.parametrize(
    ("steps", "refused"),
    [
        (["update {t} set q = 0 where id = 10", FEW, "select 1"], False),
        (["update {t} set q = 0 where id = 10", MANY, "select 1"], True),
        ([FEW, FAILS_ITSELF, "select 1"], False),
        ([FEW, "update {t} set q = 0 where id = 9", FEW, "select 1"], False),
        ([FEW, MANY, "select 1"], True),
    ],
)
def test_psycopg_pipeline(
    guarded: Any, pg: Any, table: str, steps: list[str], refused: bool, begin: bool
) -> None:
    direct_steps = [STAND_IN if s == MANY else s for s in steps]
    direct = _pipeline(_direct(pg), table, direct_steps, begin)
    direct_table = _contents(pg, table)
    _reset(pg, table)
    proxied = _pipeline(guarded.dsn(), table, steps, begin)
    assert _contents(pg, table) == direct_table
    if refused:
        assert direct[-2][0] == "error" and proxied[-2] == ("error", "42501")
        assert direct[-1] == proxied[-1]
    else:
        assert proxied == direct


async def _asyncpg(dsn: str, table: str, prepared: bool, many: str) -> list[Any]:
    """asyncpg (extended protocol; ``prepared``: named statements): outside a transaction,
    then inside one; ``many`` is the statement over the limit (directly: its stand-in)."""
    seen: list[Any] = []
    conn = await asyncpg.connect(dsn)
    try:
        for sql in (FEW, many, FEW + " returning id"):
            text = sql.format(t=table)
            try:
                if prepared:
                    stmt = await conn.prepare(text)
                    rows = await stmt.fetch()
                    seen.append((stmt.get_statusmsg(), [tuple(r) for r in rows]))
                else:
                    seen.append(await conn.execute(text))
            except asyncpg.PostgresError as exc:
                seen.append(("error", exc.sqlstate))
        try:
            async with conn.transaction():
                seen.append(await conn.execute(FEW.format(t=table)))
                try:
                    await conn.execute(many.format(t=table))
                except asyncpg.PostgresError as exc:
                    seen.append(("error", exc.sqlstate))
                seen.append(conn.is_in_transaction())
        except asyncpg.PostgresError as exc:  # its COMMIT of a failed transaction
            seen.append(("tx", exc.sqlstate))
        seen.append(conn.is_in_transaction())
    finally:
        await conn.close()
    return seen


@pytest.mark.parametrize("prepared", [False, True])
def test_asyncpg(guarded: Any, pg: Any, table: str, prepared: bool) -> None:
    proxied = asyncio.run(_asyncpg(guarded.dsn(), table, prepared, MANY))
    after = _contents(pg, table)
    _reset(pg, table)
    direct = asyncio.run(_asyncpg(_direct(pg), table, prepared, STAND_IN))
    assert _contents(pg, table) == after
    assert len(proxied) == len(direct)
    assert ("error", "42501") in proxied
    for p, d in zip(proxied, direct, strict=True):
        if isinstance(d, tuple) and d[0] == "error":
            assert p == ("error", "42501"), (p, d)
        else:
            assert p == d, (p, d)


def _raw_pipeline(host: str, port: int, table: str, middle: str) -> list[Any]:
    with rawpg.RawConn(host, port, timeout=20) as conn:
        conn.login()
        conn.send(
            rawpg.parse(f"update {table} set q = 0 where id = 10"), rawpg.bind(), rawpg.execute(),
            rawpg.parse(middle.format(t=table)), rawpg.bind(), rawpg.execute(),
            rawpg.parse(f"insert into {table} values (77, 77)"), rawpg.bind(), rawpg.execute(),
            rawpg.sync(),
            rawpg.parse("select 1"), rawpg.bind(), rawpg.execute(), rawpg.sync(),
        )  # fmt: skip
        replies = conn.recv_until("Z") + conn.recv_until("Z")
        return [
            (r.type, r.sqlstate if r.type == "E" else r.tag if r.type == "C" else r.status)
            for r in replies
            if r.type in "ECZ"
        ]


@pytest.mark.parametrize("middle", [FEW, MANY, FAILS_ITSELF])
def test_raw_pipeline(guarded: Any, pg: Any, table: str, middle: str) -> None:
    direct = _raw_pipeline(pg.host, pg.port, table, STAND_IN if middle == MANY else middle)
    direct_table = _contents(pg, table)
    _reset(pg, table)
    proxied = _raw_pipeline(guarded.host, guarded.port, table, middle)
    assert _contents(pg, table) == direct_table
    if middle == MANY:
        assert [p if p[0] != "E" else ("E", "22012") for p in proxied] == direct
        assert ("E", "42501") in proxied
    else:
        assert proxied == direct


def _raw_query_inside_the_batch(host: str, port: int, table: str) -> list[Any]:
    """A simple Query sent inside an unfinished extended-protocol batch (no Sync before it):
    PostgreSQL ends the batch's implicit transaction with it."""
    with rawpg.RawConn(host, port, timeout=20) as conn:
        conn.login()
        conn.send(
            rawpg.parse(FEW.format(t=table)), rawpg.bind(), rawpg.execute(),
            rawpg.query("select 1"),
        )  # fmt: skip
        replies = conn.recv_until("Z")
        seen = [(r.type, r.tag if r.type == "C" else r.status) for r in replies if r.type in "CZ"]
    return seen


def test_a_query_inside_the_batch_commits_as_postgres_does(
    guarded: Any, pg: Any, table: str
) -> None:
    direct = _raw_query_inside_the_batch(pg.host, pg.port, table)
    direct_table = _contents(pg, table)
    _reset(pg, table)
    assert _raw_query_inside_the_batch(guarded.host, guarded.port, table) == direct
    assert _contents(pg, table) == direct_table  # committed, after the connection closed
    assert direct[-1] == ("Z", "I")


def test_a_protocol_parse_of_sql_execute_is_guarded(guarded: Any, pg: Any, table: str) -> None:
    before = _contents(pg, table)
    with rawpg.RawConn(guarded.host, guarded.port, timeout=20) as conn:
        conn.login()
        conn.send(rawpg.query(f"prepare q as {MANY.format(t=table)}"))
        conn.recv_until("Z")
        conn.send(rawpg.parse("execute q"), rawpg.bind(), rawpg.execute(), rawpg.sync())
        replies = conn.recv_until("Z")
    assert [r.sqlstate for r in replies if r.type == "E"] == ["42501"]
    assert replies[-1].status == "I"
    assert _contents(pg, table) == before
