"""Bounded LRU cache of :class:`QueryFacts`, keyed by the exact text (or wire bytes) + settings.

Never keyed by fingerprint: fingerprints erase the literals that tautology, set_config and
pg_read_file checks depend on. Facts are immutable, so one cached value is shared by sessions.
"""

from __future__ import annotations

import contextlib

from proxy.sql.extract import analyze, analyze_bytes
from proxy.sql.facts import ParserSettings, QueryFacts

DEFAULT_SIZE = 10_000
# Longer texts are analysed every time: caching them would let a few huge statements evict
# thousands of ordinary ones, and hashing them costs about as much as a cheap parse.
MAX_CACHED_LENGTH = 64 * 1024

_DEFAULT_SETTINGS = ParserSettings()


class FactsCache:
    """LRU over a plain dict: a hit re-inserts the key at the end (dicts keep insertion order)."""

    __slots__ = ("_entries", "hits", "max_entries", "misses")

    def __init__(self, max_entries: int = DEFAULT_SIZE) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._entries: dict[tuple[str | bytes, ParserSettings], QueryFacts] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.hits = 0
        self.misses = 0

    def analyze(self, text: str, settings: ParserSettings = _DEFAULT_SETTINGS) -> QueryFacts:
        key = (text, settings)
        entries = self._entries
        facts = entries.pop(key, None)
        if facts is not None:
            entries[key] = facts
            self.hits += 1
            return facts
        self.misses += 1
        facts = analyze(text, settings)
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
        facts = analyze_bytes(data, settings)
        self._store(key, facts, len(data))
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
