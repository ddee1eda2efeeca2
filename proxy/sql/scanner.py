"""PostgreSQL's own scanner, read without a Python object per token.

pglast's ``scan`` builds a ``Token`` per token (a namedtuple, a name decoded from C, an offset
translated): for a short statement that costs more than the shape cache saves. The scanner it
wraps returns a plain C array of records (:mod:`proxy.sql.libpg_scan` hands it over as one
``bytes`` object); we find the constant tokens with one compiled regular expression over the
token kinds: Python objects are made only for constants, never for the other tokens.

Because this is the very scanner pglast's ``scan`` uses, the constants found here are the ones
``pglast.parser.scan`` reports (tests/test_sql_scanner.py checks it on the corpus and under
hypothesis), and no second scanner has to be proven equal to PostgreSQL's.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

from proxy.sql.libpg_scan import scan_records, token_kinds

# Scanner tokens whose value the skeleton leaves out (named like gram.y).
CONSTANT_TOKENS: Final = frozenset({"SCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
# Tokens the raw parser rewrites from their values: texts holding them get no skeleton.
UNSHAPED_TOKENS: Final = frozenset({"USCONST", "UIDENT", "UESCAPE"})

_KIND: Final = token_kinds(CONSTANT_TOKENS | UNSHAPED_TOKENS | {"ASCII_45"})
_MINUS: Final = _KIND["ASCII_45"]


def _kind_pattern(names: frozenset[str]) -> re.Pattern[bytes]:
    # A kind is 4 native-endian bytes; every kind searched for is in 256..65535, so its two
    # low bytes are non-zero and its two high bytes zero: it cannot match across two records'
    # kinds at an unaligned offset (checked again on every match all the same).
    values = sorted(_KIND[n] for n in names)
    assert all(256 <= v < 65536 and v & 0xFF for v in values)
    return re.compile(b"|".join(re.escape(struct.pack("=i", v)) for v in values))


_CONSTANT_RE: Final = _kind_pattern(CONSTANT_TOKENS)
_UNSHAPED_RE: Final = _kind_pattern(UNSHAPED_TOKENS)
_MARKER: Final = {struct.pack("=i", _KIND[n]): f"\x00{n}\x00" for n in CONSTANT_TOKENS}


@dataclass(frozen=True, slots=True)
class Skeleton:
    """A text's constant tokens, in character offsets, and the text with each one replaced by
    ``\\0KIND\\0`` (NUL never occurs in a scanned text, so a marker cannot be forged).

    ``minus[i]``: where the token just before constant ``i`` starts when it is a lone ``-``
    (a negative number's constant node starts there), else -1."""

    key: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    minus: tuple[int, ...]


def skeleton(text: str) -> Skeleton | None:
    """The skeleton of ``text``; None when it has no constant, holds a token the parser
    rewrites from its value (``U&'…'``, ``U&"…"``, UESCAPE), a NUL, or fails to scan."""
    if "\x00" in text:
        return None  # the C scanner would stop at the NUL
    ascii_text = text.isascii()
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return None  # a lone surrogate: not text PostgreSQL could receive
    records = scan_records(data)
    if not records:
        return None
    kinds = memoryview(records).cast("i")[2::4].tobytes()
    if _UNSHAPED_RE.search(kinds) is not None:
        return None
    fields = memoryview(records).cast("i")
    starts: list[int] = []
    ends: list[int] = []
    minus: list[int] = []
    parts: list[str] = []
    pos = 0
    for match in _CONSTANT_RE.finditer(kinds):
        at = match.start()
        if at & 3:
            return None  # impossible for the kinds searched (see _kind_pattern)
        base = at  # index of this record's first field: (at // 4) * 4
        start = fields[base]
        end = fields[base + 1]
        before = fields[base - 2] if base else -1  # previous record's kind
        starts.append(start)
        ends.append(end)
        minus.append(fields[base - 4] if before == _MINUS else -1)
        if ascii_text:
            parts.append(text[pos:start])
        parts.append(_MARKER[match.group()])
        pos = end
    if not starts:
        return None  # nothing to vary: the exact-text level answers every repeat
    if not ascii_text:
        # libpg_query counts UTF-8 bytes; everything above counts characters
        chars = _CharOffsets(data)
        starts = [chars.at(o) for o in starts]
        ends = [chars.at(o) for o in ends]
        minus = [chars.at(o) if o >= 0 else -1 for o in minus]
        pos = 0
        for i, marker in enumerate(parts):
            parts[i] = text[pos : starts[i]] + marker
            pos = ends[i]
    parts.append(text[pos:])
    return Skeleton("".join(parts), tuple(starts), tuple(ends), tuple(minus))


class _CharOffsets:
    """Byte offsets to character offsets for ascending queries, decoding each byte once."""

    __slots__ = ("_byte", "_char", "_data")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._byte = 0
        self._char = 0

    def at(self, offset: int) -> int:
        if offset < self._byte:
            self._byte = 0
            self._char = 0
        self._char += len(self._data[self._byte : offset].decode("utf-8"))
        self._byte = offset
        return self._char
