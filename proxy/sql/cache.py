"""Bounded LRU caches of :class:`QueryFacts`: by exact text (or wire bytes), then by shape.

Level 1 is keyed by the exact text (or wire bytes) + parser settings.

Level 2 serves texts that differ only in their literals (``... WHERE aid = 12345`` with a new
number each time), keyed by the text's *skeleton*: the text with every constant token (string,
integer, float, bit-string) replaced by a marker naming its token kind, everything else kept
byte for byte, + settings. It is never keyed by fingerprint and not by libpg_query's
``normalize``: normalize numbers its placeholders after the highest ``$n`` already in the text
(``SELECT $2, 5`` and ``SELECT $2, $3`` normalize alike: a constant and a parameter share a
key), and it replaces keyword constants (TRUE, NULL, ``SET x TO on``, ``extract(year …)``).

Why sharing facts between two texts with one skeleton is safe:

1. Equal skeletons mean equal texts outside the constant tokens, and constant tokens of the
   same kinds at the same places. PostgreSQL's scanner is deterministic and is back in its
   initial state after each constant, so both texts scan to the same tokens outside the
   constants. ``U&'…'``/``U&"…"``/UESCAPE (whose escapes the parser decodes, and may reject)
   and scanner errors keep a text out of level 2.
2. The grammar decides only on token kinds, so both texts parse through the same rules. A
   constant's value changes the tree only where a rule copies it. When the entry is made, every
   constant token must start an ``A_Const`` node (or follow the minus sign one starts at);
   otherwise (a file name, a DO body, a typmod read by the grammar...) the text stays out.
3. The walker marks the facts ``literal_sensitive`` when any fact was read from an ``A_Const``
   value (WHERE folding, unless it is forced whatever the literals are; set_config's setting
   name) or from a string parsed as code (DO, function bodies), COPY, EXPLAIN option values.
   Such facts stay out of level 2.
4. On a hit, each statement's text is cut from the new text at the same token boundaries, and
   its fingerprint is computed from that text and must equal the stored one (the fingerprint
   skips constants): this re-parses with PostgreSQL's grammar, so a value the grammar rejects,
   or one that reached a node other than a constant, falls back to a full analysis.

Facts are immutable, so one cached value is shared by sessions.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pglast import parser as pg_parser

from proxy.sql.extract import ShapeEvidence, analyze, analyze_with_evidence, decode
from proxy.sql.facts import ParserSettings, QueryFacts, StatementFacts

DEFAULT_SIZE = 10_000
# Longer texts are analysed every time: caching them would let a few huge statements evict
# thousands of ordinary ones, and hashing them costs about as much as a cheap parse.
MAX_CACHED_LENGTH = 64 * 1024

# The shape level scans the text with pglast's scanner, which builds a Python object per token:
# for long texts that costs about as much as a full analysis (a 20 KB ORM query: scan 1.4 ms,
# analyze 1.6 ms), so they go straight to analysis.
MAX_SHAPED_LENGTH = 1024

_DEFAULT_SETTINGS = ParserSettings()

# Scanner tokens whose value the skeleton leaves out (pglast names them like gram.y).
CONSTANT_TOKENS = frozenset({"SCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
# Tokens the raw parser rewrites from their values: texts holding them skip level 2.
_UNSHAPED_TOKENS = frozenset({"USCONST", "UIDENT", "UESCAPE"})
_MINUS = "ASCII_45"

# A statement boundary as (token index, after): the start of that token, or just past its end.
_Anchor = tuple[int, bool]


def skeleton(text: str) -> tuple[str, list[Any]] | None:
    """The level-2 key text and the scanner tokens, or None when the text has no constant
    or cannot be handled by level 2. NUL never occurs in a skeleton's text parts, so the
    ``\\0KIND\\0`` markers cannot be confused with them."""
    if "\x00" in text:
        return None  # the C scanner would stop at the NUL
    try:
        tokens = pg_parser.scan(text)
    except Exception:
        return None
    parts: list[str] = []
    pos = 0
    for token in tokens:
        name = token.name
        if name in CONSTANT_TOKENS:
            parts.append(text[pos : token.start])
            parts.append(f"\x00{name}\x00")
            pos = token.end + 1
        elif name in _UNSHAPED_TOKENS:
            return None
    if not parts:
        return None  # nothing to vary: level 1 already answers every repeat of this text
    parts.append(text[pos:])
    return "".join(parts), tokens


class _Shape:
    """A level-2 entry: facts of the text that made it, and where its statements start/end."""

    __slots__ = ("anchors", "facts", "token_count")

    def __init__(
        self, facts: QueryFacts, anchors: tuple[tuple[_Anchor, _Anchor | None], ...], count: int
    ) -> None:
        self.facts = facts
        self.anchors = anchors
        self.token_count = count

    @classmethod
    def make(cls, facts: QueryFacts, evidence: ShapeEvidence, tokens: list[Any]) -> _Shape | None:
        if not facts.statements or len(evidence.spans) != len(facts.statements):
            return None
        if any(not s.fingerprint for s in facts.statements):
            return None  # the hit path verifies fingerprints: an empty one would verify nothing
        constants = evidence.constants
        for i, token in enumerate(tokens):
            if token.name in CONSTANT_TOKENS and token.start not in constants:
                before = tokens[i - 1] if i else None
                if before is None or before.name != _MINUS or before.start not in constants:
                    return None  # this literal's value went somewhere other than a constant
        starts = {token.start: i for i, token in enumerate(tokens)}
        afters = {token.end + 1: i for i, token in enumerate(tokens)}

        def anchor(offset: int) -> _Anchor | None:
            if offset in starts:
                return starts[offset], False
            if offset in afters:
                return afters[offset], True
            return None

        anchors: list[tuple[_Anchor, _Anchor | None]] = []
        for start, end in evidence.spans:
            first = anchor(start)
            last = None if end is None else anchor(end)
            if first is None or (end is not None and last is None):
                return None
            anchors.append((first, last))
        return cls(facts, tuple(anchors), len(tokens))

    def facts_for(self, text: str, tokens: list[Any]) -> QueryFacts | None:
        """This entry's facts with ``text``'s own statement texts; None if verification fails."""
        if len(tokens) != self.token_count:
            return None
        rebuilt: list[StatementFacts] = []
        for (first, last), stmt in zip(self.anchors, self.facts.statements, strict=True):
            start = _offset(tokens, first)
            piece = (text[start : _offset(tokens, last)] if last else text[start:]).strip()
            try:
                fingerprint = pg_parser.fingerprint(piece)
            except Exception:
                return None
            if fingerprint != stmt.fingerprint:
                return None
            rebuilt.append(_with_text(stmt, piece))
        return QueryFacts(text, tuple(rebuilt), literal_sensitive=False)


def _offset(tokens: list[Any], anchor: _Anchor) -> int:
    index, after = anchor
    token = tokens[index]
    return int(token.end) + 1 if after else int(token.start)


def _with_text(stmt: StatementFacts, text: str) -> StatementFacts:
    body = stmt.body
    return StatementFacts(
        text,
        stmt.command,
        stmt.statement_class,
        stmt.effective_commands,
        stmt.classes,
        stmt.relations,
        stmt.functions,
        stmt.missing_where,
        stmt.copy,
        stmt.role_change,
        stmt.opaque,
        stmt.fingerprint,
        stmt.prepare_name,
        stmt.execute_name,
        stmt.notes,
        None if body is None else _with_text(body, text),
    )


class FactsCache:
    """Two LRUs over plain dicts: a hit re-inserts the key at the end (dicts keep insertion
    order). ``hits``/``misses`` count level 1; ``shape_hits`` counts level-1 misses answered by
    level 2 (so full analyses = misses - shape_hits); ``shape_rejects`` counts level-2 entries
    whose verification failed for a text."""

    __slots__ = (
        "_entries",
        "_shapes",
        "hits",
        "max_entries",
        "misses",
        "shape_hits",
        "shape_rejects",
    )

    def __init__(self, max_entries: int = DEFAULT_SIZE) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._entries: dict[tuple[str | bytes, ParserSettings], QueryFacts] = {}
        self._shapes: dict[tuple[str, ParserSettings], _Shape] = {}
        self.hits = 0
        self.misses = 0
        self.shape_hits = 0
        self.shape_rejects = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def shapes(self) -> int:
        return len(self._shapes)

    def clear(self) -> None:
        self._entries.clear()
        self._shapes.clear()
        self.hits = 0
        self.misses = 0
        self.shape_hits = 0
        self.shape_rejects = 0

    def analyze(self, text: str, settings: ParserSettings = _DEFAULT_SETTINGS) -> QueryFacts:
        key = (text, settings)
        entries = self._entries
        facts = entries.pop(key, None)
        if facts is not None:
            entries[key] = facts
            self.hits += 1
            return facts
        self.misses += 1
        facts = self._analyze_miss(text, settings)
        self._store(key, facts, len(text))
        return facts

    def analyze_bytes(
        self, data: bytes, settings: ParserSettings = _DEFAULT_SETTINGS
    ) -> QueryFacts:
        """Keyed on the wire bytes, so a hit skips decoding as well as parsing."""
        key = (data, settings)
        entries = self._entries
        facts = entries.pop(key, None)
        if facts is not None:
            entries[key] = facts
            self.hits += 1
            return facts
        self.misses += 1
        text = decode(data, settings)
        facts = text if isinstance(text, QueryFacts) else self._analyze_miss(text, settings)
        self._store(key, facts, len(data))
        return facts

    def _analyze_miss(self, text: str, settings: ParserSettings) -> QueryFacts:
        if (
            len(text) > MAX_SHAPED_LENGTH
            or self.max_entries == 0
            or not settings.standard_conforming_strings
        ):
            return analyze(text, settings)
        found = skeleton(text)
        if found is None:
            return analyze(text, settings)
        shape_key = (found[0], settings)
        shapes = self._shapes
        shape = shapes.pop(shape_key, None)
        if shape is not None:
            shapes[shape_key] = shape
            facts = shape.facts_for(text, found[1])
            if facts is not None:
                self.shape_hits += 1
                return facts
            self.shape_rejects += 1
        facts, evidence = analyze_with_evidence(text, settings)
        if evidence is not None and shape is None and facts.parsable:
            made = _Shape.make(facts, evidence, found[1])
            if made is not None:
                shapes[shape_key] = made
                if len(shapes) > self.max_entries:
                    with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                        del shapes[next(iter(shapes))]
        return facts

    def _store(
        self, key: tuple[str | bytes, ParserSettings], facts: QueryFacts, length: int
    ) -> None:
        if length > MAX_CACHED_LENGTH or self.max_entries == 0:
            return
        entries = self._entries
        entries[key] = facts
        if len(entries) > self.max_entries:
            # another thread may evict concurrently (large texts are analysed in a pool)
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del entries[next(iter(entries))]


_cache = FactsCache()


def default_cache() -> FactsCache:
    return _cache


def configure(max_entries: int) -> FactsCache:
    """Replace the process-wide cache with an empty one of the given size."""
    global _cache
    _cache = FactsCache(max_entries)
    return _cache


def analyze_cached(text: str, settings: ParserSettings = _DEFAULT_SETTINGS) -> QueryFacts:
    return _cache.analyze(text, settings)


def analyze_bytes_cached(data: bytes, settings: ParserSettings = _DEFAULT_SETTINGS) -> QueryFacts:
    return _cache.analyze_bytes(data, settings)
