"""A sample of the generated mutation corpus (tests/support/mutations.py) through the proxy with
the shipped default policy, against a real server: each is refused with the seed's rule, and the
server shows no effect (the rows of ``orders`` are exactly as before). The same statements run
directly against PostgreSQL do change the rows (or run), so the check is not vacuous. Also the
issue-10 cases whose effect matters (bound parameters, uncompilable DO blocks) and the
issue-9 policy-noise cases (pg_dump's set_config, CALL), through the proxy."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.mutations import WRITE_RULE, Mutation, mutations
from tests.test_policy_shipped import SHIPPED

pytestmark = pytest.mark.e2e

_DB = "mutations"
_FIXTURE = """
CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric);
CREATE TABLE t2 (id int, a int);
INSERT INTO orders SELECT g, 'new', g * 10 FROM generate_series(1, 5) g;
INSERT INTO t2 VALUES (1, 1), (2, 2);
"""


def _sample() -> list[Mutation]:
    everything = mutations()
    rng = random.Random(20261201)  # fixed: the same sample on every run
    writes = [m for m in everything if m.rule == WRITE_RULE]
    others = [m for m in everything if m.rule != WRITE_RULE]
    return rng.sample(writes, 24) + rng.sample(others, 8)


SAMPLE = _sample()


@pytest.fixture(scope="module")
def setup(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    from tests.support.proxyproc import ProxyFactory

    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_DB}")
        conn.execute(f"CREATE DATABASE {_DB} OWNER dave")
    with psycopg.connect(pg.dsn(user="dave", database=_DB), autocommit=True) as conn:
        conn.execute(_FIXTURE)
    factory = ProxyFactory(pg, tmp_path_factory.mktemp("mutations"))
    try:
        yield factory(policies=[SHIPPED["default"]]), pg.dsn(user="dave", database=_DB)
    finally:
        factory.close()


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT id, status, total FROM orders ORDER BY id").fetchall()


@pytest.mark.parametrize("mutation", SAMPLE, ids=lambda m: f"{m.how}: {m.sql[:40]}")
def test_sampled_mutation_is_refused_and_changes_nothing(
    mutation: Mutation, setup: tuple[Any, str]
) -> None:
    proxy, direct = setup
    before = _rows(direct)
    with psycopg.connect(proxy.dsn(user="dave", database=_DB), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            conn.execute(mutation.sql)
        assert err.value.diag.message_detail == f"pgwarden rule: {mutation.rule}", mutation.sql
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session keeps working
    assert _rows(direct) == before


def test_the_sampled_writes_do_change_rows_directly(setup: tuple[Any, str]) -> None:
    """Run directly (no proxy), the sampled writes touch every row: what the proxy refused."""
    _proxy, direct = setup
    changed = 0
    for mutation in SAMPLE:
        if mutation.rule != WRITE_RULE or "PREPARE" in mutation.sql:
            continue
        with psycopg.connect(direct) as conn:  # one transaction, rolled back
            before = conn.execute("SELECT count(*) FROM orders").fetchone()
            try:
                cur = psycopg.ClientCursor(conn)
                cur.execute(mutation.sql)
                after = conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'new') FROM orders"
                ).fetchone()
                changed += after != before
            except psycopg.Error:
                pass  # e.g. ON CONFLICT needs the unique index it has; errors are not effects
            conn.rollback()
    assert changed >= 10, changed


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("DO $$ DECLARE x orders[]; BEGIN DELETE FROM orders; END $$", "unparsable"),
        ("DELETE FROM orders WHERE id = orders.id", WRITE_RULE),
        (
            "INSERT INTO orders SELECT * FROM orders ON CONFLICT (id) DO UPDATE SET status = 'x'",
            WRITE_RULE,
        ),
        ("MERGE INTO orders USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE", WRITE_RULE),
    ],
)
def test_issue_cases_are_refused_and_change_nothing(
    sql: str, rule: str, setup: tuple[Any, str]
) -> None:
    proxy, direct = setup
    before = _rows(direct)
    with psycopg.connect(direct) as conn:  # directly, each of these changes every row
        psycopg.ClientCursor(conn).execute(sql)
        assert _changed(conn, before)
        conn.rollback()
    with psycopg.connect(proxy.dsn(user="dave", database=_DB), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            conn.execute(sql)
        assert err.value.diag.message_detail == f"pgwarden rule: {rule}"
    assert _rows(direct) == before


def _changed(conn: psycopg.Connection[Any], before: list[tuple[Any, ...]]) -> bool:
    rows = conn.execute("SELECT id, status, total FROM orders ORDER BY id").fetchall()
    return rows != before


def test_where_parameter_bound_true_is_refused_by_every_route(setup: tuple[Any, str]) -> None:
    """Issue 10: ``WHERE $1`` with true bound ran unbounded (psycopg, asyncpg, SQL EXECUTE)."""
    import asyncio

    import asyncpg

    proxy, direct = setup
    before = _rows(direct)
    dsn = proxy.dsn(user="dave", database=_DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM orders WHERE %s", (True,))
        conn.execute("PREPARE wipe(bool) AS DELETE FROM orders WHERE $1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            conn.execute("EXECUTE wipe(true)")
        assert err.value.diag.message_detail == f"pgwarden rule: {WRITE_RULE}"
        assert conn.execute("EXECUTE wipe(false)").rowcount == 0  # bound false: touches nothing

    async def via_asyncpg() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE orders SET status = 'x' WHERE $1", True)
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(via_asyncpg(), 30))
    assert _rows(direct) == before


def test_real_tools_are_judged_by_what_they_do(setup: tuple[Any, str]) -> None:
    """Issue 9 §4: pg_dump's set_config of restrict_nonsystem_relation_kind is no role switch,
    and CALL of a PL/pgSQL procedure is judged like SELECT of a PL/pgSQL function."""
    from tests.e2e.kit import wait_until

    proxy, direct = setup
    with psycopg.connect(direct, autocommit=True) as conn:
        body = "LANGUAGE plpgsql AS $$ BEGIN PERFORM 1; END $$"
        conn.execute(f"CREATE OR REPLACE PROCEDURE tidy() {body}")
        conn.execute(f"CREATE OR REPLACE FUNCTION tidy_fn() RETURNS void {body}")
    pg_dump = (
        "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings"
        " WHERE name = 'restrict_nonsystem_relation_kind'"
    )
    statements = [pg_dump, "CALL tidy()", "SELECT tidy_fn()"]
    with psycopg.connect(proxy.dsn(user="dave", database=_DB), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)

    def decisions() -> dict[str, Any] | None:
        found = {e["statement"]: e["decision"] for e in proxy.events("query")}
        return found if all(s in found for s in statements) else None

    found = wait_until(decisions, 10, "audit events")
    for sql in statements:
        assert (found[sql]["action"], found[sql]["rules"]) == ("allow", []), sql
