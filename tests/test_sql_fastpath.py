"""FunctionCall (fast-path) facts named from the catalog (proxy/sql/fastpath.py) and the
server-catalog resolver for other OIDs (proxy/sql/catalog/resolver.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.identity import Identity
from proxy.policy.loader import load_policy
from proxy.sql.catalog.resolver import (
    AsyncpgFetch,
    CatalogKey,
    FunctionInfo,
    FunctionResolver,
    invalidates_functions,
)
from proxy.sql.extract import analyze
from proxy.sql.facts import QueryFacts
from proxy.sql.fastpath import function_call_facts
from tests.test_policy_shipped import SHIPPED

POLICY = load_policy([SHIPPED["default"]])
APP = Identity(user="app", database="app")
LARGE_OBJECT_OIDS = (952, 953, 954, 955, 957, 715, 956, 958, 1004, 3170, 3171, 3172, 964)


def decide(facts: QueryFacts) -> tuple[str, list[str]]:
    decision = POLICY.evaluate(APP, facts)
    return decision.action, [r.id for r in decision.rules]


@pytest.mark.parametrize("major", [None, 15, 18])
@pytest.mark.parametrize("oid", LARGE_OBJECT_OIDS)
def test_large_object_calls_are_named_and_allowed(oid: int, major: int | None) -> None:
    """pg_dump of a database with a large object, psql \\lo_*, psycopg2 lobject."""
    facts = function_call_facts(oid, [b"1", b"2"], [0], server_major=major)
    stmt = facts.statements[0]
    assert not stmt.opaque and any(f.startswith("lo") for f in stmt.functions), stmt.functions
    assert facts.text.startswith(f"<function call oid={oid} pg_catalog.lo")
    assert decide(facts) == ("allow", [])


def test_server_file_functions_by_oid_are_blocked() -> None:
    for oid in (764, 767, 765, 2624, 2625, 2623):  # lo_import x2, lo_export, read, ls, stat
        assert decide(function_call_facts(oid, [b"/etc/passwd"], [])) == (
            "block",
            ["no-server-file-functions"],
        )


def test_oids_are_read_per_server_version() -> None:
    # 4100 is pg_read_file_old in 15 and pg_get_shmem_allocations_numa in 18
    assert decide(function_call_facts(4100, [b"x"], [], server_major=15))[0] == "block"
    assert decide(function_call_facts(4100, [], [], server_major=18)) == ("allow", [])
    assert function_call_facts(4100, [], []).statements[0].opaque  # version unknown: unnamed


def test_set_config_by_oid_is_judged_by_its_setting() -> None:
    pg_dump = function_call_facts(2078, [b"restrict_nonsystem_relation_kind", b"view", b"f"], [])
    assert decide(pg_dump) == ("allow", [])
    role = function_call_facts(2078, [b"role", b"postgres", b"f"], [])
    assert decide(role) == ("flag", ["flag-role-switch"])
    binary = function_call_facts(2078, [b"role", b"postgres", b"\x00"], [1])
    assert binary.statements[0].role_change  # unreadable without types: strict


def test_unknown_and_dynamic_sql_oids() -> None:
    assert decide(function_call_facts(987_654, [], [])) == ("flag", ["flag-dynamic-sql"])
    assert decide(function_call_facts(2924, [b"DELETE FROM t"], [])) == (
        "flag",
        ["flag-dynamic-sql"],
    )


def test_resolved_extension_function_is_judged_by_name() -> None:
    info = FunctionInfo(17_001, "public", "pg_file_write", (25, 25, 16))
    facts = function_call_facts(17_001, [b"/tmp/x", b"data", b"f"], [], resolved=info)
    assert facts.statements[0].functions >= {"pg_file_write"}
    assert decide(facts) == ("block", ["no-server-file-functions"])
    assert facts.text == "<function call oid=17001 public.pg_file_write>"
    # a resolution for another OID is ignored
    assert function_call_facts(17_002, [], [], resolved=info).statements[0].opaque


def test_invalidates_functions() -> None:
    for sql in (
        "CREATE EXTENSION adminpack",
        "DROP FUNCTION f()",
        "ALTER FUNCTION f() RENAME TO g",
        "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'",
        "DROP SCHEMA s CASCADE",
        "DO $$ BEGIN EXECUTE 'DROP FUNCTION f()'; END $$",
    ):
        assert invalidates_functions(analyze(sql)), sql
    for sql in ("SELECT 1", "CREATE TABLE t (id int)", "DELETE FROM t WHERE id = 1"):
        assert not invalidates_functions(analyze(sql)), sql


class FakeCatalog:
    def __init__(self) -> None:
        self.functions: dict[int, FunctionInfo] = {16_500: FunctionInfo(16_500, "s", "f", ())}
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def __call__(self, key: CatalogKey, oids: tuple[int, ...]) -> dict[int, FunctionInfo]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OSError("server unreachable")
        return {o: self.functions[o] for o in oids if o in self.functions}


def test_resolver_caches_per_database_dedupes_and_invalidates() -> None:
    async def main() -> None:
        fake = FakeCatalog()
        resolver = FunctionResolver(fake)
        a, b = CatalogKey("h:5432", "a"), CatalogKey("h:5432", "b")
        assert (await resolver.resolve(a, 16_500)) == fake.functions[16_500]
        assert (await resolver.resolve(a, 16_500)) is not None and fake.calls == 1
        assert (await resolver.resolve(a, 99)) is None and fake.calls == 2
        assert (await resolver.resolve(a, 99)) is None and fake.calls == 2  # negative cached
        await resolver.resolve(b, 16_500)
        assert fake.calls == 3  # another database, another catalog
        fake.functions[16_500] = FunctionInfo(16_500, "s", "renamed", ())
        resolver.invalidate(a)
        assert (await resolver.resolve(a, 16_500)).name == "renamed"  # type: ignore[union-attr]
        assert (await resolver.resolve(b, 16_500)).name == "f"  # type: ignore[union-attr]
        # concurrent lookups of one OID share one fetch
        fake.gate = asyncio.Event()
        resolver.invalidate()
        calls = fake.calls
        tasks = [asyncio.create_task(resolver.resolve(a, 16_500)) for _ in range(5)]
        await asyncio.sleep(0)
        fake.gate.set()
        assert {t.name for t in await asyncio.gather(*tasks) if t} == {"renamed"}
        assert fake.calls == calls + 1

    asyncio.run(main())


def test_resolver_failures_and_timeouts_are_not_cached() -> None:
    async def main() -> None:
        fake = FakeCatalog()
        resolver = FunctionResolver(fake, timeout=0.05)
        key = CatalogKey("h:1", "db")
        fake.fail = True
        assert await resolver.resolve(key, 16_500) is None
        fake.fail = False
        assert await resolver.resolve(key, 16_500) is not None
        resolver.invalidate(key)
        fake.gate = asyncio.Event()  # never set: the lookup times out
        assert await resolver.resolve(key, 16_500) is None
        assert resolver.failures == 2 and resolver.cached(key) == 0

    asyncio.run(main())


def test_resolver_against_the_server_catalog(pg: Any) -> None:
    import psycopg

    db = "fastpath_catalog"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db}")
        conn.execute(f"CREATE DATABASE {db}")
    with psycopg.connect(pg.dsn(database=db), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA files")
        conn.execute(
            "CREATE FUNCTION files.pg_file_write(text, text, bool) RETURNS bigint"
            " LANGUAGE sql AS 'SELECT 0::bigint'"
        )
        row = conn.execute("SELECT 'files.pg_file_write'::regproc::oid::int").fetchone()
        assert row is not None
        oid = int(row[0])

    async def main() -> None:
        resolver = FunctionResolver(AsyncpgFetch(lambda key: pg.dsn(database=key.database)))
        key = CatalogKey(f"{pg.host}:{pg.port}", db)
        info = await resolver.resolve(key, oid)
        assert info == FunctionInfo(oid, "files", "pg_file_write", (25, 25, 16))
        facts = function_call_facts(oid, [b"/tmp/x", b"y", b"t"], [], resolved=info)
        assert decide(facts) == ("block", ["no-server-file-functions"])
        assert await resolver.resolve(CatalogKey(f"{pg.host}:{pg.port}", "postgres"), oid) is None

    asyncio.run(main())
