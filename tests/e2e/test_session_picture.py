"""The session's picture is the server's (issue 8 §3, DESIGN.md rule 8).

Each of these was a bypass: a statement judged under one reading and executed under another.
With a policy that blocks unbounded writes and server-file reads, the server's own state
after each attempt shows whether it ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.kit import admin, policy_proxy, scratch_table, unique, wait_events
from tests.support import rawpg

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
defaults:
  action: allow
  on_unparsable: block
rules:
  - id: no-unbounded-writes
    when: {commands: [DELETE, UPDATE], missing_where: true}
    action: block
  - id: no-server-files
    when: {functions: [pg_read_file, pg_ls_dir]}
    action: block
"""


@pytest.fixture(scope="module")
def guarded(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with policy_proxy(pg, tmp_path_factory.mktemp("picture"), POLICY) as proxy:
        yield proxy


@pytest.fixture
def orders(pg: Any) -> Iterator[str]:
    with scratch_table(pg, "orders", 100) as name:
        yield name


def _count(pg: Any, table: str) -> int:
    with admin(pg) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
        assert row is not None
        return int(row[0])


def _crafted_delete(table: str) -> str:
    # Under standard_conforming_strings = on this has a WHERE that limits nothing dangerous;
    # under off, the backslash escapes the quote and the rest is "OR true --".
    return f"delete from {table} where concat('\\' , ') is not null or true --') is not null"


def test_two_queries_in_one_write_behind_set_scs_off(guarded: Any, pg: Any, orders: str) -> None:
    with rawpg.RawConn(guarded.host, guarded.port) as conn:
        conn.login()
        conn.send(
            rawpg.query("set standard_conforming_strings = off"),
            rawpg.query(_crafted_delete(orders)),
        )
        replies = conn.recv_n_ready(2)
    assert _count(pg, orders) == 100
    errors = [m.fields() for m in replies if m.type == "E"]
    assert [e["C"] for e in errors] == ["42501"]


def test_psycopg_pipeline_behind_set_scs_off(guarded: Any, pg: Any, orders: str) -> None:
    with (
        psycopg.connect(guarded.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        conn.pipeline(),
    ):
        conn.execute("set standard_conforming_strings = off")
        conn.execute(_crafted_delete(orders).replace("%", "%%"))
    assert _count(pg, orders) == 100


def test_server_file_read_behind_set_scs_off(guarded: Any) -> None:
    crafted = "select 1 where '\\' = ' or pg_read_file('/etc/hostname') is not null --'"
    with rawpg.RawConn(guarded.host, guarded.port) as conn:
        conn.login()
        conn.send(rawpg.query("set standard_conforming_strings = off"), rawpg.query(crafted))
        replies = conn.recv_n_ready(2)
    assert "D" not in [m.type for m in replies]
    assert [m.fields()["C"] for m in replies if m.type == "E"] == ["42501"]


def test_sql_prepare_then_protocol_execute(guarded: Any, pg: Any, orders: str) -> None:
    with rawpg.RawConn(guarded.host, guarded.port) as conn:
        conn.login()
        conn.simple(f"prepare p as delete from {orders}")
        conn.send(rawpg.bind(statement="p"), rawpg.execute(), rawpg.sync())
        replies = conn.recv_until("Z")
    assert _count(pg, orders) == 100
    assert [m.fields()["C"] for m in replies if m.type == "E"] == ["42501"]


def test_reused_name_is_judged_with_the_body_it_runs(guarded: Any, pg: Any, orders: str) -> None:
    app = unique("reuse")
    with rawpg.RawConn(guarded.host, guarded.port) as conn:
        conn.login(extra={"application_name": app})
        conn.send(rawpg.parse("select 1", "s1"), rawpg.sync())
        conn.recv_until("Z")
        conn.simple(f"deallocate s1; prepare s1 as delete from {orders}")
        conn.send(rawpg.bind(statement="s1"), rawpg.execute(), rawpg.sync())
        replies = conn.recv_until("Z")
    assert _count(pg, orders) == 100
    assert [m.fields()["C"] for m in replies if m.type == "E"] == ["42501"]
    refused = [
        e
        for e in wait_events(guarded, 1, "query", application_name=app, sqlstate="42501")
        if e["sqlstate"] == "42501"
    ]
    assert refused[-1]["statement"] == f"delete from {orders}"


def test_executed_body_is_recorded_after_rebinding_a_name(guarded: Any, orders: str) -> None:
    app = unique("rebind")
    with rawpg.RawConn(guarded.host, guarded.port) as conn:
        conn.login(extra={"application_name": app})
        conn.send(rawpg.parse("select 1", "s2"), rawpg.sync())
        conn.recv_until("Z")
        conn.simple(f"deallocate s2; prepare s2 as select count(*) from {orders}")
        conn.send(rawpg.bind(statement="s2"), rawpg.execute(), rawpg.sync())
        conn.recv_until("Z")
    ran = [
        e
        for e in wait_events(guarded, 3, "query", application_name=app)
        if e.get("command_tag") == "SELECT 1" and e["protocol"] == "extended"
    ]
    assert ran[-1]["statement"] == f"select count(*) from {orders}"


# The namespace model against the server's own: random PREPARE / DEALLOCATE / Parse / Close
# sequences, then every name is executed; the server's pg_prepared_statements says what each
# name holds, and a DELETE body must have been refused.
OPS = st.lists(
    st.tuples(
        st.sampled_from(["prepare", "deallocate", "parse", "close", "discard"]),
        st.sampled_from(["a", "b"]),
        st.booleans(),  # True: the body is the DELETE
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(OPS)
def test_namespace_matches_the_server(guarded: Any, pg: Any, orders: str, ops: Any) -> None:
    delete = f"delete from {orders}"
    select = "select 1"
    with rawpg.RawConn(guarded.host, guarded.port) as conn:
        conn.login()
        pipeline: list[bytes] = []
        for op, name, dangerous in ops:
            body = delete if dangerous else select
            if op == "prepare":
                pipeline.append(rawpg.query(f"prepare {name} as {body}"))
            elif op == "deallocate":
                pipeline.append(rawpg.query(f"deallocate {name}"))
            elif op == "discard":
                pipeline.append(rawpg.query("deallocate all"))
            elif op == "parse" and not dangerous:
                pipeline += [rawpg.parse(body, name), rawpg.sync()]
            elif op == "close":
                pipeline += [rawpg.close("S", name), rawpg.sync()]
        conn.send(*pipeline)  # all in one write: nothing is settled when the next arrives
        conn.recv_n_ready(len([p for p in pipeline if p[:1] in (b"Q", b"S")]))
        held = dict(
            m.row()  # type: ignore[misc]
            for m in conn.simple("select name, statement from pg_prepared_statements")
            if m.type == "D"
        )
        for name in ("a", "b"):
            conn.send(rawpg.bind(statement=name), rawpg.execute(), rawpg.sync())
            replies = conn.recv_until("Z")
            codes = [m.fields()["C"] for m in replies if m.type == "E"]
            body = held.get(name)
            if body is None:
                assert codes and codes[0] in ("26000", "42501")
            elif "delete" in body.lower():
                assert codes == ["42501"], (ops, held)
    assert _count(pg, orders) == 100


def test_bound_true_is_an_unbounded_delete(guarded: Any, pg: Any, orders: str) -> None:
    """Bind parameters are facts: ``WHERE $1`` with true bound limits nothing."""
    with psycopg.connect(guarded.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"delete from {orders} where %s", (True,))
        conn.execute(f"delete from {orders} where %s", (False,))
    assert _count(pg, orders) == 100


def test_asyncpg_bound_true_is_an_unbounded_delete(guarded: Any, pg: Any, orders: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(guarded.dsn())
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"delete from {orders} where $1", True)
            await conn.execute(f"delete from {orders} where $1", False)
        finally:
            await conn.close()

    asyncio.run(run())
    assert _count(pg, orders) == 100


def test_sql_execute_with_true_argument(guarded: Any, pg: Any, orders: str) -> None:
    with rawpg.RawConn(guarded.host, guarded.port) as conn:
        conn.login()
        conn.simple(f"prepare pb(bool) as delete from {orders} where $1")
        replies = conn.simple("execute pb(true)")
        assert [m.fields()["C"] for m in replies if m.type == "E"] == ["42501"]
        conn.send(rawpg.bind(statement="pb", params=["true"]), rawpg.execute(), rawpg.sync())
        replies = conn.recv_until("Z")
        assert [m.fields()["C"] for m in replies if m.type == "E"] == ["42501"]
    assert _count(pg, orders) == 100
