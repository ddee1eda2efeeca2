"""Bounded caches of :class:`QueryFacts`: by exact text (or wire bytes), then by shape.

Level 1 is keyed by the exact text (or wire bytes) + parser settings. It is a segmented LRU:
a text seen once waits in a small *probation* segment; only a second sighting moves it to the
*protected* segment, so a stream of one-off texts (a new literal in every statement) churns
probation and never evicts the texts that do repeat. Both segments are ``OrderedDict``s: a
refresh is ``move_to_end`` and an eviction ``popitem(last=False)``, O(1) whatever the history
(a plain dict's ``next(iter(...))`` walks the holes its deletions leave at the front).

Level 2 serves texts that differ only in their literals (``... WHERE aid = 12345`` with a new
number each time), keyed by the text's *skeleton* (:mod:`proxy.sql.scanner`): the text with
every constant token (string, integer, float, bit-string) replaced by a marker naming its
token kind, everything else kept byte for byte, + settings. The skeleton comes from
PostgreSQL's own scanner (libpg_query's, read without a Python object per token). It is never
keyed by fingerprint and not by libpg_query's ``normalize``: normalize numbers its
placeholders after the highest ``$n`` already in the text (``SELECT $2, 5`` and
``SELECT $2, $3`` normalize alike: a constant and a parameter share a key), and it replaces
keyword constants (TRUE, NULL, ``SET x TO on``, ``extract(year …)``).

Why sharing facts between two texts with one skeleton is safe:

1. Equal skeletons mean equal texts outside the constant tokens, and constant tokens of the
   same kinds at the same places, as PostgreSQL's scanner reads both texts (it is the scanner
   that produced the skeletons). The scanner is deterministic and back in its initial state
   after each constant, so both texts scan to the same tokens outside the constants.
   ``U&'…'``/``U&"…"``/UESCAPE (whose escapes the parser decodes, and may reject) and
   scanner errors keep a text out of level 2.
2. The grammar decides only on token kinds, so both texts parse through the same rules. A
   constant's value changes the tree only where a rule copies it. When the entry is made, every
   constant token must start an ``A_Const`` node (or follow the minus sign one starts at);
   otherwise (a file name, a DO body, a typmod read by the grammar...) the text stays out. No
   rule that makes an ``A_Const`` rejects a text for the constant's value (values are checked
   by parse analysis, after the raw parse libpg_query runs).
3. The walker marks the facts ``literal_sensitive`` when any fact was read from an ``A_Const``
   value (WHERE folding, unless it is forced whatever the literals are; set_config's setting
   name) or from a string parsed as code (DO, function bodies), COPY, EXPLAIN option values.
   Such facts stay out of level 2.
4. So a hit needs no re-parse: each statement's text is cut from the new text at the offsets
   the entry recorded relative to the constants around them (the text between constants is
   the same), and the stored facts are reused with those texts. tests/test_sql_shape_cache.py
   checks every answer against a fresh analysis.

Facts are immutable, so one cached value is shared by sessions.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from typing import Final, TypeVar

from proxy.sql.extract import ShapeEvidence, analyze, analyze_with_evidence, decode
from proxy.sql.facts import ParserSettings, QueryFacts, StatementFacts
from proxy.sql.scanner import CONSTANT_TOKENS, Skeleton, skeleton

__all__ = [
    "CONSTANT_TOKENS",
    "DEFAULT_SIZE",
    "MAX_CACHED_LENGTH",
    "MAX_SHAPED_LENGTH",
    "FactsCache",
    "analyze_bytes_cached",
    "analyze_cached",
    "configure",
    "default_cache",
]

DEFAULT_SIZE = 10_000
# Longer texts are analysed every time: caching them would let a few huge statements evict
# thousands of ordinary ones, and hashing them costs about as much as a cheap parse.
MAX_CACHED_LENGTH = 64 * 1024

# Beyond this the skeleton (a few Python objects per constant) costs about what the analysis
# it saves does: an ORM query with a long IN list has thousands of constants.
MAX_SHAPED_LENGTH = 8 * 1024

# Level 1's probation segment (texts seen once) keeps at least a fifth of the capacity, and
# whatever the protected segment does not use: with the default size a text that repeats
# within 2,000 one-off texts reaches the protected segment.
PROBATION_SHARE = 5

_DEFAULT_SETTINGS = ParserSettings()

# A text offset relative to the constants: (constants wholly before it, distance past the
# last of them, or from the start of the text when there is none).
_Anchor = tuple[int, int]
_Key = str | bytes | tuple[str | bytes, ParserSettings]
_V = TypeVar("_V")


def _key(text: str | bytes, settings: ParserSettings) -> _Key:
    """The text alone under the default settings (hashing a dataclass costs more than the
    lookup it keys), else the text and the settings. The two never compare equal."""
    if settings.standard_conforming_strings and settings.client_encoding == "UTF8":
        return text
    return (text, settings)


class _Shape:
    """A level-2 entry: facts of the text that made it, and where its statements start/end."""

    __slots__ = ("anchors", "facts")

    def __init__(
        self, facts: QueryFacts, anchors: tuple[tuple[_Anchor, _Anchor | None], ...]
    ) -> None:
        self.facts = facts
        self.anchors = anchors

    @classmethod
    def make(cls, facts: QueryFacts, evidence: ShapeEvidence, shape: Skeleton) -> _Shape | None:
        if not facts.statements or len(evidence.spans) != len(facts.statements):
            return None
        constants = evidence.constants
        for start, minus in zip(shape.starts, shape.minus, strict=True):
            if start not in constants and (minus < 0 or minus not in constants):
                return None  # this literal's value went somewhere other than a constant
        anchors: list[tuple[_Anchor, _Anchor | None]] = []
        for start, end in evidence.spans:
            first = _anchor(shape, start)
            last = None if end is None else _anchor(shape, end)
            if first is None or (end is not None and last is None):
                return None
            anchors.append((first, last))
        return cls(facts, tuple(anchors))

    def facts_for(self, text: str, shape: Skeleton) -> QueryFacts:
        """This entry's facts with ``text``'s own statement texts."""
        rebuilt: list[StatementFacts] = []
        ends = shape.ends
        for (first, last), stmt in zip(self.anchors, self.facts.statements, strict=True):
            start = _offset(ends, first)
            piece = (text[start : _offset(ends, last)] if last else text[start:]).strip()
            rebuilt.append(stmt if piece == stmt.text else _with_text(stmt, piece))
        return _facts_with(text, tuple(rebuilt))


def _anchor(shape: Skeleton, offset: int) -> _Anchor | None:
    """``offset`` relative to the constants; None when it falls inside one."""
    before = bisect_right(shape.ends, offset)
    if before < len(shape.starts) and shape.starts[before] < offset:
        return None
    return before, offset - (shape.ends[before - 1] if before else 0)


def _offset(ends: tuple[int, ...], anchor: _Anchor) -> int:
    before, distance = anchor
    return (ends[before - 1] if before else 0) + distance


# Every field of StatementFacts but ``text`` and ``record`` (made from the old text), copied one
# by one by _with_text: the dataclass's own (interpreted) __init__ costs ~30 % more.
_COPIED_FIELDS: Final = tuple(
    name for name in StatementFacts.__slots__ if name not in ("text", "record")
)
_new_object: Final = object.__new__
_set_field: Final = object.__setattr__


def _with_text(stmt: StatementFacts, text: str) -> StatementFacts:
    """``dataclasses.replace(stmt, text=text, record=None)``, the same for a PREPARE's body."""
    copy = _new_object(StatementFacts)
    for name in _COPIED_FIELDS:
        _set_field(copy, name, getattr(stmt, name))
    _set_field(copy, "text", text)
    _set_field(copy, "record", None)
    body = stmt.body
    if body is not None:
        _set_field(copy, "body", _with_text(body, text))
    return copy


# The fields _facts_with sets: a field added to QueryFacts must be decided on there.
_QUERY_FIELDS: Final = (
    "text",
    "statements",
    "parse_error",
    "unparsable_reason",
    "literal_sensitive",
    "record",
    "secrets",
)
if QueryFacts.__slots__ != _QUERY_FIELDS:
    raise ImportError(f"QueryFacts has fields {QueryFacts.__slots__}; update _facts_with")


def _facts_with(text: str, statements: tuple[StatementFacts, ...]) -> QueryFacts:
    """``QueryFacts(text, statements)`` (parsable, not literal-sensitive, nothing made from a
    long text), without the dataclass's interpreted __init__ (see _with_text)."""
    facts = _new_object(QueryFacts)
    _set_field(facts, "text", text)
    _set_field(facts, "statements", statements)
    _set_field(facts, "parse_error", None)
    _set_field(facts, "unparsable_reason", None)
    _set_field(facts, "literal_sensitive", False)
    _set_field(facts, "record", None)
    _set_field(facts, "secrets", None)
    return facts


def _touch(entries: OrderedDict[_Key, _V], key: _Key) -> _V | None:
    """The entry for ``key``, made the most recently used; None when absent."""
    value = entries.get(key)
    if value is not None:
        try:  # noqa: SIM105 (suppress() builds a context manager on every hit)
            entries.move_to_end(key)
        except KeyError:  # evicted meanwhile by a caller in an executor thread
            pass
    return value


def _bounded_put(entries: OrderedDict[_Key, _V], key: _Key, value: _V, cap: int) -> None:
    entries[key] = value
    if len(entries) > cap:
        # callers in executor threads share the cache and may evict concurrently
        try:  # noqa: SIM105 (suppress() builds a context manager on every insert)
            entries.popitem(last=False)
        except KeyError:
            pass


class FactsCache:
    """Level 1 (probation + protected) and level 2 (shapes), each an O(1) LRU.

    ``hits``/``misses`` count level 1; ``shape_hits`` counts level-1 misses answered by level 2
    (so full analyses = misses - shape_hits)."""

    __slots__ = (
        "_probation",
        "_probation_min",
        "_protected",
        "_protected_cap",
        "_shapes",
        "hits",
        "max_entries",
        "misses",
        "shape_hits",
    )

    def __init__(self, max_entries: int = DEFAULT_SIZE) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._probation_min = max(1, max_entries // PROBATION_SHARE) if max_entries else 0
        self._protected_cap = max_entries - self._probation_min
        self._probation: OrderedDict[_Key, QueryFacts] = OrderedDict()
        self._protected: OrderedDict[_Key, QueryFacts] = OrderedDict()
        self._shapes: OrderedDict[_Key, _Shape] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.shape_hits = 0

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    @property
    def shapes(self) -> int:
        return len(self._shapes)

    @property
    def repeated(self) -> int:
        """Texts in the protected segment (seen at least twice)."""
        return len(self._protected)

    def clear(self) -> None:
        self._probation.clear()
        self._protected.clear()
        self._shapes.clear()
        self.hits = 0
        self.misses = 0
        self.shape_hits = 0

    def analyze(self, text: str, settings: ParserSettings = _DEFAULT_SETTINGS) -> QueryFacts:
        # _key() inline: this is the path of every cache hit
        plain = settings.standard_conforming_strings and settings.client_encoding == "UTF8"
        key: _Key = text if plain else (text, settings)
        facts = self._lookup(key)
        if facts is not None:
            return facts
        facts = self._analyze_miss(text, settings)
        self._store(key, facts, len(text))
        return facts

    def analyze_bytes(
        self, data: bytes, settings: ParserSettings = _DEFAULT_SETTINGS
    ) -> QueryFacts:
        """Keyed on the wire bytes, so a hit skips decoding as well as parsing."""
        plain = settings.standard_conforming_strings and settings.client_encoding == "UTF8"
        key: _Key = data if plain else (data, settings)
        facts = self._lookup(key)
        if facts is not None:
            return facts
        text = decode(data, settings)
        facts = text if isinstance(text, QueryFacts) else self._analyze_miss(text, settings)
        self._store(key, facts, len(data))
        return facts

    def _lookup(self, key: _Key) -> QueryFacts | None:
        facts = _touch(self._protected, key)
        if facts is not None:
            self.hits += 1
            return facts
        facts = self._probation.pop(key, None)
        if facts is not None:
            # seen twice: it repeats, so it may now evict the least recently used repeat
            _bounded_put(self._protected, key, facts, self._protected_cap)
            self.hits += 1
            return facts
        self.misses += 1
        return None

    def _analyze_miss(self, text: str, settings: ParserSettings) -> QueryFacts:
        if (
            len(text) > MAX_SHAPED_LENGTH
            or self.max_entries == 0
            or not settings.standard_conforming_strings
        ):
            return analyze(text, settings)
        shape = skeleton(text)
        if shape is None:
            return analyze(text, settings)
        shape_key = _key(shape.key, settings)
        shapes = self._shapes
        entry = _touch(shapes, shape_key)
        if entry is not None:
            self.shape_hits += 1
            return entry.facts_for(text, shape)
        facts, evidence = analyze_with_evidence(text, settings)
        if evidence is not None and facts.parsable:
            made = _Shape.make(facts, evidence, shape)
            if made is not None:
                _bounded_put(shapes, shape_key, made, self.max_entries)
        return facts

    def _store(self, key: _Key, facts: QueryFacts, length: int) -> None:
        if length > MAX_CACHED_LENGTH or self.max_entries == 0:
            return
        cap = max(self._probation_min, self.max_entries - len(self._protected))
        _bounded_put(self._probation, key, facts, cap)


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
