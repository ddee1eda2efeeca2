"""A generated corpus of mutations of statements the default policy blocks.

Each seed is a statement ``policies/default.yaml`` blocks, with the rule that blocks it. The
mutators rewrite its text without changing what it does (spelling, comments, quoting,
qualification, nesting in a CTE / EXPLAIN ANALYZE / DO block / PREPARE, a prefix statement) or,
for unbounded writes, add a condition that does not limit the rows (docs/policies.md). Every
mutation must still be blocked by the same rule. Deterministic: the same list on every run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

WRITE_RULE = "no-unbounded-writes"
FILE_RULE = "no-server-file-functions"


@dataclass(frozen=True, slots=True)
class Seed:
    sql: str
    rule: str
    kind: str  # "write" (an UPDATE/DELETE/MERGE on orders), "call" (a SELECT of a function), "copy"


@dataclass(frozen=True, slots=True)
class Mutation:
    sql: str
    rule: str
    seed: Seed
    how: str


SEEDS: tuple[Seed, ...] = (
    Seed("DELETE FROM orders", WRITE_RULE, "write"),
    Seed("UPDATE orders SET status = 'x'", WRITE_RULE, "write"),
    Seed("DELETE FROM orders WHERE true", WRITE_RULE, "write"),
    Seed("MERGE INTO orders USING t2 ON true WHEN MATCHED THEN DELETE", WRITE_RULE, "write"),
    Seed(
        "INSERT INTO orders SELECT * FROM orders ON CONFLICT (id) DO UPDATE SET status = 'x'",
        WRITE_RULE,
        "write",
    ),
    Seed("SELECT pg_read_file('/etc/passwd')", FILE_RULE, "call"),
    Seed("SELECT * FROM pg_ls_dir('.')", FILE_RULE, "call"),
    Seed("SELECT * FROM pg_file_settings", FILE_RULE, "call"),
    Seed("COPY orders TO PROGRAM 'id'", "no-copy-program", "copy"),
    Seed("COPY orders FROM '/tmp/orders.csv'", "no-copy-server-file", "copy"),
)

# Conditions that do not limit the rows of orders (each is its own docs/policies.md case).
NOT_LIMITING = (
    "true",
    "1 = 1",
    "(SELECT true)",
    "EXISTS (SELECT 1)",
    "coalesce(null, true)",
    "CASE WHEN true THEN true END",
    "1 BETWEEN 0 AND 2",
    "'a' LIKE '%'",
    "1 = ANY('{1}')",
    "ROW(1) = ROW(1)",
    "current_user = current_user",
    "'a' = 'a' COLLATE \"C\"",
    "now() > '2000-01-01'",
    "random() < 2",
    "int4eq(1, 1)",
    "id = orders.id",
    "orders.id = id",
    "status = status",
    "id IS NULL OR id IS NOT NULL",
    "id > 0 OR id <= 0 OR id IS NULL",
    "NOT NOT true",
    "(true) IS TRUE",
    "'yes'::boolean",
    "1 < 2 AND 2 >= 2",
    "NULL IS NULL",
    "EXISTS (SELECT 1 FROM t2)",
    "(SELECT count(*) FROM t2) >= 0",
    "1 IN (1, 2)",
    "1 IS NOT DISTINCT FROM 1",
    "lower(status) = lower(status)",
    "id IS NOT NULL",
    "id > 0 OR id <= 0",
    "orders IS NOT NULL",
    "status IS DISTINCT FROM NULL",
    "id IN (SELECT id FROM orders)",
    "id IN (SELECT o.id FROM public.orders o)",
)

_KEYWORDS = re.compile(
    r"\b(DELETE|FROM|UPDATE|SET|WHERE|MERGE|INTO|USING|ON|WHEN|MATCHED|THEN|INSERT|SELECT|"
    r"CONFLICT|DO|COPY|TO|PROGRAM|TRUE)\b"
)


def _case(sql: str, style: str) -> str:
    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        if style == "lower":
            return word.lower()
        return "".join(c.lower() if i % 2 else c for i, c in enumerate(word))

    return _KEYWORDS.sub(fix, sql)


def _outside_strings(sql: str, pattern: str, replacement: str) -> str:
    """Replace ``pattern`` only outside single-quoted strings."""
    parts = sql.split("'")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(pattern, lambda _m: replacement, parts[i])
    return "'".join(parts)


def _spelling(seed: Seed) -> Iterator[tuple[str, str]]:
    sql = seed.sql
    yield "lower case", _case(sql, "lower")
    yield "mixed case", _case(sql, "mixed")
    yield "comments", _outside_strings(sql, r" ", " /* x */ ")
    yield "newlines", _outside_strings(sql, r" ", "\n\t")
    yield "line comment", sql + " -- trailing"
    yield "quoted table", _outside_strings(sql, r"\borders\b", '"orders"')
    yield "qualified table", _outside_strings(sql, r"\borders\b(?!\.)", "public.orders")
    for name in ("pg_read_file", "pg_ls_dir", "pg_file_settings"):
        if name in sql:
            yield "quoted call", _outside_strings(sql, rf"\b{name}\b", f'"{name}"')
            yield "qualified call", _outside_strings(sql, rf"\b{name}\b", f"pg_catalog.{name}")
            escaped = name.replace("_", "\\005f")
            yield "unicode escape", _outside_strings(sql, rf"\b{name}\b", f'U&"{escaped}"')
            yield (
                "upper-case qualified",
                _outside_strings(sql, rf"\b{name}\b", f"PG_CATALOG.{name.upper()}"),
            )


def _nesting(seed: Seed) -> Iterator[tuple[str, str]]:
    sql = seed.sql
    yield "after another statement", f"SELECT 1; {sql}"
    yield "before another statement", f"{sql}; SELECT 1"
    if seed.kind == "write":
        if not sql.startswith(("MERGE", "INSERT")):
            yield "data-modifying CTE", f"WITH d AS ({sql} RETURNING 1) SELECT count(*) FROM d"
        yield "EXPLAIN ANALYZE", f"EXPLAIN ANALYZE {sql}"
        yield "EXPLAIN (ANALYZE)", f"EXPLAIN (ANALYZE, COSTS off) {sql}"
        yield "DO block", f"DO $$ BEGIN {sql}; END $$"
        yield "DO block with language", f"DO LANGUAGE plpgsql $x$ BEGIN {sql}; END $x$"
        yield "PREPARE and EXECUTE", f"PREPARE m1 AS {sql}; EXECUTE m1"
    elif seed.kind == "call":
        expr = sql.removeprefix("SELECT ")
        if not expr.startswith("*"):
            yield "scalar subquery", f"SELECT (SELECT {expr})"
            yield "in WHERE", f"SELECT 1 WHERE {expr} IS NOT NULL"
            yield "in CTE", f"WITH c AS (SELECT {expr} AS v) SELECT v FROM c"
            yield "DO block PERFORM", f"DO $$ BEGIN PERFORM {expr}; END $$"
            yield "in a VALUES list", f"VALUES ({expr})"
            yield "EXPLAIN ANALYZE", f"EXPLAIN ANALYZE SELECT {expr}"
        else:
            yield "in a subquery", f"SELECT count(*) FROM ({sql}) s"
            yield "in a CTE", f"WITH c AS ({sql}) SELECT count(*) FROM c"
            yield "lateral", f"SELECT 1 FROM t2, LATERAL ({sql}) s"
        yield "PREPARE and EXECUTE", f"PREPARE m2 AS {sql}; EXECUTE m2"
    elif seed.kind == "copy":
        yield "lower case PROGRAM", sql.replace("TO PROGRAM", "to program")
        yield "column list", sql.replace("orders", "orders (id, status)", 1)
        if " TO " in sql:
            yield "query form", sql.replace("COPY orders", "COPY (SELECT * FROM orders)", 1)


def _conditions(seed: Seed) -> Iterator[tuple[str, str]]:
    if seed.kind != "write" or seed.sql.startswith(("INSERT", "MERGE")):
        return
    base = seed.sql.removesuffix(" WHERE true")
    for cond in NOT_LIMITING:
        yield f"WHERE {cond}", f"{base} WHERE {cond}"
        yield f"WHERE ({cond}) OR id = 1", f"{base} WHERE ({cond}) OR id = 1"


def _merge_joins(seed: Seed) -> Iterator[tuple[str, str]]:
    if not seed.sql.startswith("MERGE"):
        return
    for cond in ("t2.id = 1", "1 = 1", "EXISTS (SELECT 1)", "orders.id = orders.id"):
        yield f"MERGE ON {cond}", seed.sql.replace("ON true", f"ON {cond}")


_MUTATORS: tuple[Callable[[Seed], Iterator[tuple[str, str]]], ...] = (
    _spelling,
    _nesting,
    _conditions,
    _merge_joins,
)


def mutations() -> list[Mutation]:
    """Every mutation of every seed: each single mutator, and spelling after the others."""
    out: dict[str, Mutation] = {}
    for seed in SEEDS:
        for mutator in _MUTATORS:
            for how, sql in mutator(seed):
                out.setdefault(sql, Mutation(sql, seed.rule, seed, how))
                if mutator is not _spelling:
                    for how2, sql2 in _spelling(Seed(sql, seed.rule, seed.kind)):
                        out.setdefault(sql2, Mutation(sql2, seed.rule, seed, f"{how}, {how2}"))
    out.pop("", None)
    return list(out.values())
