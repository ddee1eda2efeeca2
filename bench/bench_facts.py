"""Microbenchmark of the SQL facts layer: µs per call for pglast entry points and our analyze().

Run: python bench/bench_facts.py [--repeat N]
Prints best-of-N timings for a typical ~200-character query and a ~20 KB ORM-style query with
many joins, for cache misses (full analysis), shape-level hits (same statement, new literals)
and cache hits (text and wire bytes).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from pglast import parser as pg_parser

from proxy.sql.cache import MAX_SHAPED_LENGTH, FactsCache
from proxy.sql.extract import analyze
from proxy.sql.facts import ParserSettings
from proxy.sql.redact import normalize, redact

TYPICAL = (
    "SELECT o.id, o.created_at, c.name, lower(c.email) AS email FROM orders o "
    "JOIN customers c ON c.id = o.customer_id WHERE o.status = 'open' AND o.total > 100 "
    "AND c.country = $1 AND o.created_at >= now() - interval '7 days' ORDER BY o.id LIMIT 50"
)


def orm_query(target_bytes: int = 20_000) -> str:
    """A Django/Hibernate-style SELECT: long column lists, many LEFT JOINs, an IN list."""
    tables = [f"app_table_{i}" for i in range(40)]
    columns = ", ".join(f'"{t}"."col_{j}" AS "{t}_col_{j}"' for t in tables for j in range(6))
    joins = " ".join(
        f'LEFT OUTER JOIN "{t}" ON ("{tables[i - 1]}"."id" = "{t}"."parent_id")'
        for i, t in enumerate(tables)
        if i
    )
    query = f'SELECT {columns} FROM "{tables[0]}" {joins} WHERE "{tables[0]}"."id" IN ('
    ids: list[str] = []
    while len(query) + sum(len(x) + 2 for x in ids) < target_bytes - 120:
        ids.append(str(100_000 + len(ids)))
    return query + ", ".join(ids) + f') AND "{tables[3]}"."flag" = true ORDER BY 1 LIMIT 21'


def _bump_integers(query: str, step: int) -> str:
    """The query with every integer literal token changed (a different value, same kind)."""
    out, pos = [], 0
    for token in pg_parser.scan(query):
        if token.name == "ICONST":
            out.append(query[pos : token.start])
            out.append(str(int(query[token.start : token.end + 1]) + step))
            pos = token.end + 1
    return "".join(out) + query[pos:]


def best_us(fn: Callable[[], object], repeat: int) -> float:
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, number // 4)
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    settings = ParserSettings()
    long_query = orm_query()
    cases = {"typical": TYPICAL, "orm-20KB": long_query}
    rows: list[tuple[str, dict[str, float]]] = []

    def row(label: str, make: Callable[[str], Callable[[], object]]) -> None:
        rows.append((label, {k: best_us(make(q), args.repeat) for k, q in cases.items()}))

    row("pglast.parse_sql (Python nodes)", lambda q: lambda: pg_parser.parse_sql(q))
    row("parse_sql_json (C, JSON string)", lambda q: lambda: pg_parser.parse_sql_json(q))
    row(
        "parse_sql_json + orjson.loads", lambda q: lambda: orjson.loads(pg_parser.parse_sql_json(q))
    )
    row("parse_sql_protobuf (bytes only)", lambda q: lambda: pg_parser.parse_sql_protobuf(q))
    row("fingerprint", lambda q: lambda: pg_parser.fingerprint(q))
    row("split (scanner)", lambda q: lambda: pg_parser.split(q, with_parser=False))
    row("scan", lambda q: lambda: pg_parser.scan(q))
    row("analyze (cache miss)", lambda q: lambda: analyze(q, settings))
    row("redact", lambda q: lambda: redact(q))
    row("normalize", lambda q: lambda: normalize(q))

    def hit_text(q: str) -> Callable[[], object]:
        cache = FactsCache()
        cache.analyze(q, settings)
        return lambda: cache.analyze(q, settings)

    def hit_bytes(q: str) -> Callable[[], object]:
        cache = FactsCache()
        data = q.encode()
        cache.analyze_bytes(data, settings)
        return lambda: cache.analyze_bytes(data, settings)

    def hit_fresh_bytes(q: str) -> Callable[[], object]:
        # the session gets a new bytes object per message: its hash is computed on every lookup
        cache = FactsCache()
        data = q.encode()
        cache.analyze_bytes(data, settings)
        return lambda: cache.analyze_bytes(bytes(bytearray(data)), settings)

    def hit_shape(q: str) -> Callable[[], object]:
        # a new text differing only in literals each call (simple protocol, literals inlined)
        cache = FactsCache()
        cache.analyze(q, settings)
        variants = [_bump_integers(q, i) for i in range(1, 2001)]
        assert all(v != q for v in variants)
        counter = iter(range(10**9))

        def call() -> object:
            # refresh the exact-text level so every call misses it and takes the shape path
            i = next(counter) % len(variants)
            if i == 0:
                cache._probation.clear()
            return cache.analyze(variants[i], settings)

        call()
        # texts over MAX_SHAPED_LENGTH skip the shape level: this row is then a full analysis
        assert cache.shape_hits == (1 if len(q) <= MAX_SHAPED_LENGTH else 0)
        return call

    row("new literals (shape hit if <= 1 KB)", hit_shape)
    row("cache hit (same str)", hit_text)
    row("cache hit (same bytes)", hit_bytes)
    row("cache hit (fresh bytes copy)", hit_fresh_bytes)

    print(
        f"typical: {len(TYPICAL)} chars; orm: {len(long_query)} chars, "
        f"{long_query.count('JOIN')} joins; best of {args.repeat}, µs per call"
    )
    print(f"{'operation':36} {'typical':>10} {'orm-20KB':>10}")
    for label, values in rows:
        print(f"{label:36} {values['typical']:10.1f} {values['orm-20KB']:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
