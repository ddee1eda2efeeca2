"""proxy.sql.scanner reads libpg_query's token array without pglast's Token objects: its
skeletons must be exactly the ones built from ``pglast.parser.scan`` (the reference below), on
the corpus and on generated texts full of the scanner's corner cases."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser

from proxy.sql import scanner
from proxy.sql.cache import FactsCache
from proxy.sql.facts import ParserSettings

CORPUS: list[str] = [
    case["sql"]
    for case in yaml.safe_load(
        (Path(__file__).parent / "data" / "sql_corpus.yaml").read_text(encoding="utf-8")
    )
]


def reference(text: str) -> scanner.Skeleton | None:
    """The skeleton as pglast's Token objects give it (the implementation before the fast
    path): constant tokens replaced by markers, None for U&/UESCAPE, NUL or a scanner error."""
    if "\x00" in text:
        return None
    try:
        tokens = pg_parser.scan(text)
    except Exception:
        return None
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    minus: list[int] = []
    pos = 0
    for i, token in enumerate(tokens):
        if token.name in scanner.UNSHAPED_TOKENS:
            return None
        if token.name in scanner.CONSTANT_TOKENS:
            parts.append(text[pos : token.start])
            parts.append(f"\x00{token.name}\x00")
            pos = token.end + 1
            starts.append(token.start)
            ends.append(token.end + 1)
            before = tokens[i - 1] if i else None
            minus.append(before.start if before is not None and before.name == "ASCII_45" else -1)
    if not starts:
        return None
    parts.append(text[pos:])
    return scanner.Skeleton("".join(parts), tuple(starts), tuple(ends), tuple(minus))


def test_corpus_skeletons_equal_the_reference() -> None:
    shaped = 0
    for text in CORPUS:
        got = scanner.skeleton(text)
        assert got == reference(text), text
        shaped += got is not None
    assert shaped >= 40  # the corpus exercises the constant path, not only the None path


def test_non_ascii_offsets_are_characters() -> None:
    text = "SELECT 'é€', -1, x'1F', \"ü\" FROM t -- ï\n WHERE a = 1.5e3 AND b = 'ø'"
    got = scanner.skeleton(text)
    assert got is not None and got == reference(text)
    assert [text[s:e] for s, e in zip(got.starts, got.ends, strict=True)] == [
        "'é€'",
        "1",
        "x'1F'",
        "1.5e3",
        "'ø'",
    ]
    assert got.minus[1] == text.index("-1")


def test_texts_without_a_skeleton() -> None:
    for text in (
        "SELECT a FROM t",  # no constant
        "SELECT U&'\\0041'",
        'SELECT U&"a" FROM t WHERE 1 = 1',
        "SELECT 'a' UESCAPE '!'",
        "SELECT 1\x00",
        "SELECT 'unterminated",
        "SELECT 1abc",
        "SELECT /* unterminated",
        "SELECT '\ud800'",  # a lone surrogate cannot be sent to PostgreSQL
    ):
        assert scanner.skeleton(text) is None, text


FRAGMENTS = [
    "SELECT ",
    " ",
    "\n",
    "\t",
    "\r\n",
    "\f",
    "\v",
    "-- c\n",
    "--",
    "/* c */",
    "/* /* nested */ */",
    "/*",
    "*/",
    "'s'",
    "''",
    "'it''s'",
    "'a'\n'b'",
    "'a' 'b'",
    "'a'\n-- x\n'b'",
    "E'\\''",
    "e'\\n'",
    "E'\\u0041'",
    "E'\\x'",
    "N'n'",
    "B'01'",
    "b'2'",
    "X'1F'",
    "x''",
    "U&'\\0041'",
    "u&'x' UESCAPE '!'",
    "$$d$$",
    "$t$ $ $t$",
    "$t$",
    "$1",
    "$12",
    "$1a",
    "a$1",
    "a$$",
    '"id"',
    '""',
    '"a""b"',
    '"é"',
    "1",
    "-1",
    "- 1",
    "-/**/1",
    "+1",
    "1.5",
    ".5",
    "1.",
    "1..2",
    "1e5",
    "1e",
    "1e+",
    "1.5e-3",
    "0x1F",
    "0o17",
    "0b101",
    "0x",
    "1_000",
    "1__0",
    "2147483647",
    "2147483648",
    "99999999999999999999",
    "abc",
    "é",
    "_x9$",
    "::",
    "::int",
    "=",
    "<>",
    "+-",
    "!-",
    "*",
    "/",
    "(",
    ")",
    ",",
    ";",
    "[1]",
    ".",
    "%",
    "^",
    "|",
    "?",
    "\\",
    "`",
    "@",
]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(FRAGMENTS),
            st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=3),
        ),
        max_size=14,
    )
)
def test_generated_texts_equal_the_reference(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert scanner.skeleton(text) == reference(text)


# --- level 1: one-off texts never evict repeated ones ---------------------------------------


def test_one_off_texts_never_evict_repeated_ones() -> None:
    cache = FactsCache(max_entries=100)
    repeated = [f"SELECT c{i} FROM t" for i in range(60)]
    for text in repeated * 2:
        cache.analyze(text)
    assert cache.repeated == 60
    for i in range(5000):  # a flood of texts seen once each
        cache.analyze(f"SELECT * FROM flood WHERE id = {i}")
    hits = cache.hits
    for text in repeated:
        cache.analyze(text)
    assert cache.hits == hits + len(repeated)
    assert len(cache) <= 100


def test_protected_segment_is_lru_and_bounded() -> None:
    cache = FactsCache(max_entries=10)  # 8 protected, probation >= 2
    texts = [f"SELECT c{i} FROM t" for i in range(9)]
    for text in texts[:8] * 2:
        cache.analyze(text)
    cache.analyze(texts[0])  # refresh the oldest
    cache.analyze(texts[8])
    cache.analyze(texts[8])  # promoted: evicts texts[1], now the least recently used
    assert cache.repeated == 8 and len(cache) <= 10
    misses = cache.misses
    cache.analyze(texts[0])
    assert cache.misses == misses
    cache.analyze(texts[1])
    assert cache.misses == misses + 1


def test_default_settings_and_explicit_settings_share_nothing_wrongly() -> None:
    cache = FactsCache()
    latin = ParserSettings(client_encoding="LATIN1")
    cache.analyze("SELECT 1")
    cache.analyze("SELECT 1", latin)
    assert cache.misses == 2
    cache.analyze("SELECT 1", ParserSettings())  # a new instance equal to the default
    assert cache.hits == 1
