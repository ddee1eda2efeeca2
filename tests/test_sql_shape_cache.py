"""The literal-insensitive level of the facts cache (proxy/sql/cache.py) gives exactly the facts
a fresh analysis gives.

The property: prime a cache with a text, then ask it for a variant with literals changed; the
answer must equal ``analyze(variant)`` field by field, text included, whether the cache served
it from the shape level or analysed it. Variants rewrite the scanner's constant tokens with
values chosen to flip folded WHERE clauses (other constants of the same text), setting names
(role, search_path...), booleans, empty strings, numbers at the int4 limit, and DO bodies
with other statements in them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser

from proxy.sql import cache as facts_cache
from proxy.sql.extract import analyze
from proxy.sql.facts import ParserSettings, QueryFacts

CORPUS: list[str] = [
    case["sql"]
    for case in yaml.safe_load(
        (Path(__file__).parent / "data" / "sql_corpus.yaml").read_text(encoding="utf-8")
    )
]
# Texts where a literal's value matters, so the shape level must step aside.
SENSITIVE = [
    "DELETE FROM t WHERE 1 = 2",
    "UPDATE t SET a = 1 WHERE 'x' = 'y' OR id = 5",
    "UPDATE t SET a = 1 WHERE id IN (3, 4) OR 2 IN (1, 2 + 0)",
    "DELETE FROM t WHERE 5 IS NULL",
    "DELETE FROM t WHERE 'no'::boolean",
    "MERGE INTO t USING t2 ON 1 = 0 WHEN MATCHED THEN DELETE",
    "SELECT set_config('search_path', 'public', false)",
    "SELECT set_config('search_path'::text, 'x', true)",
    "DO $$BEGIN PERFORM 1; END$$",
    "DO 'BEGIN PERFORM 1; END'",
    "COPY t FROM 'x.csv'",
    "COPY t TO 'x.csv'",
    "EXPLAIN (ANALYZE 0) DELETE FROM t",
    "EXPLAIN (ANALYZE 'off') DELETE FROM t",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "SELECT 1::float(10), CAST('a' AS varchar(5))",
    "PREPARE p AS DELETE FROM t WHERE 1 = 0",
    "SELECT 1; DELETE FROM t WHERE 2 = 3; SELECT 'a'",
    "SET search_path = 'public'",
    "SELECT 'é' FROM t WHERE 1 = 1 AND id = 7",
    "SELECT U&'\\0041' FROM t WHERE id = 1",
]
STRINGS = [
    "''",
    "'role'",
    "'ROLE'",
    "'session_authorization'",
    "'search_path'",
    "'on'",
    "'off'",
    "'t'",
    "'no'",
    "'1'",
    "'0'",
    "' 1 '",
    "'x'",
    "'it''s'",
    "E'\\x41'",
    "'é€'",
    "$$BEGIN DELETE FROM t; END$$",
    "$$BEGIN EXECUTE 'DROP TABLE t'; END$$",
    "$q$BEGIN PERFORM set_config('role', 'x', false); END$q$",
    "$$BEGIN UPDATE t SET a = 1 WHERE 1 = 1; END$$",
    "'SELECT 2'",
    "'plpgsql'",
    "'sql'",
    "'/etc/passwd'",
]
NUMBERS = ["0", "1", "2", "3", "42", "2147483647", "2147483648", "1_000", "0x1F", "1.5", "0.0"]
BITS = ["B'0'", "B'1'", "B''", "X'1F'", "X''"]


def constant_tokens(text: str) -> list[Any]:
    try:
        return [t for t in pg_parser.scan(text) if t.name in facts_cache.CONSTANT_TOKENS]
    except Exception:
        return []


def candidates(text: str, token: Any) -> list[str]:
    """Replacement texts for one constant: the other constants of the text first (they flip
    comparisons like 1 = 2), then values of the same token kind, then other kinds."""
    own = [text[t.start : t.end + 1] for t in constant_tokens(text)]
    if token.name == "SCONST":
        same = STRINGS
    elif token.name in ("BCONST", "XCONST"):
        same = BITS
    else:
        same = NUMBERS
    rest = [v for group in (STRINGS, NUMBERS, BITS) if group is not same for v in group]
    return own + same + rest


def substitute(text: str, choices: dict[int, str]) -> str:
    """Replace the constant tokens at the given indexes (in constant_tokens order)."""
    tokens = constant_tokens(text)
    out, pos = [], 0
    for i, token in enumerate(tokens):
        if i in choices:
            out.append(text[pos : token.start])
            out.append(choices[i])
            pos = token.end + 1
    out.append(text[pos:])
    return "".join(out)


def fresh_cache() -> facts_cache.FactsCache:
    return facts_cache.FactsCache(max_entries=1000)


def assert_same_facts(got: QueryFacts, want: QueryFacts) -> None:
    assert got.text == want.text
    assert got.parse_error == want.parse_error
    assert got.unparsable_reason == want.unparsable_reason
    assert got.literal_sensitive == want.literal_sensitive
    assert len(got.statements) == len(want.statements)
    for mine, theirs in zip(got.statements, want.statements, strict=True):
        assert mine == theirs, (got.text, mine, theirs)
    assert got == want


def check_variant(original: str, variant: str, cfg: ParserSettings | None = None) -> bool:
    """Prime with ``original``, ask for ``variant``; True when the shape level answered."""
    cfg = cfg or ParserSettings()
    cache = fresh_cache()
    cache.analyze(original, cfg)
    before = cache.shape_hits
    got = cache.analyze(variant, cfg)
    assert_same_facts(got, analyze(variant, cfg))
    assert cache.analyze(variant, cfg) is got  # now cached by exact text as well
    return cache.shape_hits > before


def systematic_variants(text: str) -> list[str]:
    """Each constant alone changed to each of a few candidates, and all of them at once."""
    tokens = constant_tokens(text)
    rng = random.Random(text)
    variants: list[str] = []
    for i, token in enumerate(tokens):
        options = candidates(text, token)
        picks = options[: len(tokens)] + rng.sample(options[len(tokens) :], 6)
        variants.extend(substitute(text, {i: value}) for value in picks)
    if tokens:
        for _ in range(4):
            variants.append(
                substitute(text, {i: rng.choice(candidates(text, t)) for i, t in enumerate(tokens)})
            )
    return variants


@pytest.mark.parametrize("text", CORPUS + SENSITIVE)
def test_variants_get_the_facts_of_a_fresh_analysis(text: str) -> None:
    for variant in systematic_variants(text):
        check_variant(text, variant)


def same_kind_variants(text: str) -> list[str]:
    """Variants whose constants keep their token kinds, so the skeleton stays the same."""
    tokens = constant_tokens(text)
    rng = random.Random(text)
    variants: list[str] = []
    for _ in range(6):
        choices = {}
        for i, token in enumerate(tokens):
            options = [v for v in candidates(text, token) if _kind(v) == token.name]
            choices[i] = rng.choice(options)
        variants.append(substitute(text, choices))
    return variants


def _kind(value: str) -> str | None:
    tokens = pg_parser.scan(value)
    return tokens[0].name if len(tokens) == 1 else None


def test_the_property_is_exercised_by_shape_hits() -> None:
    """Guard against a vacuous property: same-kind variants of every corpus text that made a
    shape entry are served by the shape level (and still equal a fresh analysis)."""
    hits = total = shaped = 0
    for text in CORPUS:
        probe = fresh_cache()
        probe.analyze(text)
        if not probe.shapes:
            continue
        shaped += 1
        for variant in same_kind_variants(text):
            if variant == text:
                continue  # served by the exact-text level
            total += 1
            hits += check_variant(text, variant)
    assert shaped >= 40 and total >= 4 * shaped
    assert hits == total, (hits, total)


@st.composite
def text_and_variant(draw: st.DrawFn) -> tuple[str, str]:
    text = draw(st.sampled_from(CORPUS + SENSITIVE))
    tokens = constant_tokens(text)
    choices: dict[int, str] = {}
    for i, token in enumerate(tokens):
        if draw(st.booleans()):
            options = candidates(text, token)
            choices[i] = draw(
                st.one_of(
                    st.sampled_from(options),
                    st.integers(-(2**40), 2**40).map(str),
                    st.text(
                        st.characters(codec="utf-8", exclude_characters="\x00"),
                        max_size=8,
                    ).map(lambda s: "'" + s.replace("'", "''") + "'"),
                )
            )
    return text, substitute(text, choices)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_and_variant())
def test_hypothesis_variants(pair: tuple[str, str]) -> None:
    check_variant(*pair)


# --- behaviour of the two levels -------------------------------------------------------------


def test_tautology_flip_is_never_served_from_the_shape_level() -> None:
    cache = fresh_cache()
    assert not cache.analyze("DELETE FROM t WHERE 1 = 2").statements[0].missing_where
    flipped = cache.analyze("DELETE FROM t WHERE 1 = 1")
    assert flipped.statements[0].missing_where and flipped.literal_sensitive
    assert cache.shape_hits == 0 and cache.shapes == 0
    assert (
        not cache.analyze("SELECT set_config('search_path', 'x', false)").statements[0].role_change
    )
    assert cache.analyze("SELECT set_config('role', 'x', false)").statements[0].role_change
    assert cache.shape_hits == 0


def test_literals_in_positions_facts_ignore_are_shared() -> None:
    cache = fresh_cache()
    cache.analyze("UPDATE t SET a = 'x' WHERE id = 1 AND b > 2.5")
    facts = cache.analyze("UPDATE t SET a = 'yy' WHERE id = 1000 AND b > 7.25")
    assert cache.shape_hits == 1
    assert facts.statements[0].text == "UPDATE t SET a = 'yy' WHERE id = 1000 AND b > 7.25"
    assert facts == analyze(facts.text)


def test_hit_and_miss_counters() -> None:
    cache = fresh_cache()
    q = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
    cache.analyze(q.format(1))  # full analysis, makes a shape entry
    assert (cache.hits, cache.misses, cache.shape_hits, cache.shapes, len(cache)) == (0, 1, 0, 1, 1)
    cache.analyze(q.format(2))  # level 1 miss, level 2 hit
    assert (cache.hits, cache.misses, cache.shape_hits, cache.shapes, len(cache)) == (0, 2, 1, 1, 2)
    cache.analyze(q.format(2))  # level 1 hit
    assert (cache.hits, cache.misses, cache.shape_hits) == (1, 2, 1)
    cache.analyze_bytes(q.format(3).encode())  # bytes share the shape entry of the text
    assert (cache.hits, cache.misses, cache.shape_hits, len(cache)) == (1, 3, 2, 3)
    cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 'x';")  # another shape
    assert (cache.shape_hits, cache.shapes) == (2, 2)
    cache.analyze("SELECT a FROM t")  # no constant to vary: level 1 only
    cache.analyze("SELECT a FROM t WHERE id = $1")
    assert cache.shapes == 2
    cache.clear()
    assert (cache.hits, cache.misses, cache.shape_hits, cache.shapes, len(cache)) == (0, 0, 0, 0, 0)


def test_shape_level_is_bounded_lru() -> None:
    cache = facts_cache.FactsCache(max_entries=2)
    for table in ("a", "b", "c"):
        cache.analyze(f"SELECT * FROM {table} WHERE id = 1")
    assert cache.shapes == 2
    cache.analyze("SELECT * FROM a WHERE id = 2")  # its shape was evicted
    assert cache.shape_hits == 0
    cache.analyze("SELECT * FROM c WHERE id = 2")
    assert cache.shape_hits == 1
    disabled = facts_cache.FactsCache(max_entries=0)
    disabled.analyze("SELECT * FROM a WHERE id = 1")
    assert disabled.shapes == 0


def test_multi_statement_texts_get_their_own_statement_texts() -> None:
    cache = fresh_cache()
    first = (
        "/* lead */ SELECT 1; /* c */ UPDATE t SET a = 'x' WHERE id = 3 -- hi\n;"
        " PREPARE p AS SELECT * FROM t2 WHERE id = 5;;SELECT 'é'"
    )
    second = (
        "/* lead */ SELECT 99; /* c */ UPDATE t SET a = 'a;b' WHERE id = 4444 -- hi\n;"
        " PREPARE p AS SELECT * FROM t2 WHERE id = 77;;SELECT 'ascii'"
    )
    cache.analyze(first)
    facts = cache.analyze(second)
    assert cache.shape_hits == 1
    assert [s.text for s in facts.statements] == [
        "SELECT 99",
        "UPDATE t SET a = 'a;b' WHERE id = 4444 -- hi",  # PostgreSQL 18 starts at the token
        "PREPARE p AS SELECT * FROM t2 WHERE id = 77",
        "SELECT 'ascii'",
    ]
    assert facts.statements[2].body is not None
    assert facts.statements[2].body.text == facts.statements[2].text
    assert_same_facts(facts, analyze(second))
    # a different number of statements is a different shape
    third = "SELECT 99; UPDATE t SET a = 'x' WHERE id = 3"
    assert_same_facts(cache.analyze(third), analyze(third))
    assert cache.shape_hits == 1


def test_settings_are_part_of_the_key() -> None:
    cache = fresh_cache()
    utf8, latin1 = ParserSettings(), ParserSettings(client_encoding="LATIN1")
    cache.analyze("SELECT name FROM users WHERE id = 1", utf8)
    cache.analyze("SELECT name FROM users WHERE id = 2", latin1)
    assert cache.shape_hits == 0
    cache.analyze("SELECT name FROM users WHERE id = 3", latin1)
    assert cache.shape_hits == 1
    data = "SELECT name FROM users WHERE name = 'é' AND id = 4".encode("latin-1")
    got = cache.analyze_bytes(data, latin1)
    assert got.text == "SELECT name FROM users WHERE name = 'é' AND id = 4"
    assert_same_facts(got, analyze(got.text, latin1))
    off = ParserSettings(standard_conforming_strings=False)
    assert cache.analyze("SELECT name FROM users WHERE id = 5", off).unparsable_reason
    assert cache.analyze("SELECT name FROM users WHERE id = 6", off).unparsable_reason


def test_texts_the_shape_level_must_not_touch() -> None:
    cache = fresh_cache()
    cache.analyze("SELECT 1 FROM t WHERE id = 1")
    for text in (
        "SELECT 1 FROM t WHERE id = 2\x00; DROP TABLE t",  # NUL: analysed, refused
        "SELECT 1 FROM t WHERE id = U&'2'",  # Unicode escapes are decoded by the parser
        "SELECT 1 FROM t WHERE id = 2 +",  # parse error
        "SELECT 1 FROM t WHERE id = 2abc",  # scanner error: trailing junk
    ):
        assert_same_facts(cache.analyze(text), analyze(text))
    assert cache.shape_hits == 0
