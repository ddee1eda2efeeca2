"""Name patterns: globs for roles and databases, SQL-identifier globs for tables and functions.

Table and function patterns are written as in SQL and compared as PostgreSQL compares
identifiers: unquoted parts fold to lower case, double-quoted parts keep their case, and
``U&"…"`` parts decode their Unicode escapes. Each part is then a glob (``*`` and ``?``).
Role, database and application names are plain case-sensitive ``fnmatch`` globs.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass


class PatternError(ValueError):
    """A pattern is malformed; the message says how."""


@dataclass(frozen=True, slots=True)
class QualifiedPattern:
    """``name`` or ``schema.name``, each part a compiled glob on the folded identifier."""

    text: str
    schema: re.Pattern[str] | None
    name: re.Pattern[str]

    def __str__(self) -> str:
        return self.text


def compile_name_globs(patterns: Sequence[str]) -> re.Pattern[str]:
    """One regex matching any of the case-sensitive fnmatch ``patterns``."""
    for pattern in patterns:
        check_glob(pattern)
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def check_glob(pattern: str) -> None:
    if not pattern:
        raise PatternError("empty pattern")
    # fnmatch silently treats an unclosed "[" as a literal; in a policy that is a typo.
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                raise PatternError(f"bad glob {pattern!r}: '[' is never closed")
            i = end
        i += 1


def _glob_regex(part: str) -> re.Pattern[str]:
    out = []
    for ch in part:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def split_identifier(text: str) -> list[str]:
    """Split a possibly qualified SQL identifier into its folded parts.

    ``Public."Users"`` → ``["public", "Users"]``; ``U&"\\0075sers"`` → ``["users"]``.
    Glob characters ``*`` and ``?`` are kept as written, in quoted and unquoted parts alike.
    """
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            raise PatternError("empty name" if not parts else "name ends with '.'")
        if text[i] == '"' or text[i : i + 3].upper() == 'U&"':
            unicode = text[i] != '"'
            i += 3 if unicode else 1
            chunk: list[str] = []
            while True:
                if i >= n:
                    raise PatternError("unterminated quoted identifier")
                if text[i] == '"':
                    if text[i + 1 : i + 2] == '"':
                        chunk.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                chunk.append(text[i])
                i += 1
            raw = "".join(chunk)
            if not raw:
                raise PatternError("zero-length quoted identifier")
            parts.append(_decode_unicode_escapes(raw) if unicode else raw)
        else:
            start = i
            while i < n and text[i] not in '."' and not text[i].isspace():
                i += 1
            if start == i:
                raise PatternError(f"unexpected {text[i]!r}")
            # PostgreSQL folds only ASCII letters in multibyte encodings such as UTF8.
            parts.append(text[start:i].translate(_ASCII_LOWER))
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return parts
        if text[i] != ".":
            raise PatternError(f"unexpected {text[i]!r} after identifier")
        i += 1


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _decode_unicode_escapes(raw: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if raw[i + 1 : i + 2] == "\\":
            out.append("\\")
            i += 2
            continue
        if raw[i + 1 : i + 2] == "+":
            digits, i = raw[i + 2 : i + 8], i + 8
        else:
            digits, i = raw[i + 1 : i + 5], i + 5
        if not re.fullmatch(r"[0-9A-Fa-f]{4}|[0-9A-Fa-f]{6}", digits):
            raise PatternError('invalid Unicode escape in U&"…" identifier')
        code = int(digits, 16)
        if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise PatternError('invalid Unicode escape value in U&"…" identifier')
        out.append(chr(code))
    return "".join(out)


def compile_qualified(text: str) -> QualifiedPattern:
    """Compile a ``name`` / ``schema.name`` pattern (see module docstring)."""
    parts = split_identifier(text)
    if len(parts) > 2:
        raise PatternError(f"{text!r} has {len(parts)} parts; write name or schema.name")
    if len(parts) == 1:
        return QualifiedPattern(text, None, _glob_regex(parts[0]))
    return QualifiedPattern(text, _glob_regex(parts[0]), _glob_regex(parts[1]))


def split_function_name(name: str) -> tuple[str | None, str]:
    """``pg_catalog.pg_read_file`` → ``("pg_catalog", "pg_read_file")`` (facts spelling)."""
    schema, dot, base = name.rpartition(".")
    return (schema if dot else None), base


COMMAND_WORDS = re.compile(r"[A-Z*?][A-Z0-9_ *?]*")


def normalize_command(pattern: str) -> str:
    """Command tags are upper case with single spaces: ``drop  *`` → ``DROP *``."""
    return " ".join(pattern.upper().split())


# Words people write that are never a command tag, and the tag PostgreSQL reports instead. A
# rule naming one of them could never match, so it is refused with the right spelling.
NOT_A_TAG = {
    "TRUNCATE": "TRUNCATE TABLE",
    "LOCK": "LOCK TABLE",
    "DECLARE": "DECLARE CURSOR",
    "CLOSE": "CLOSE CURSOR",
    "REFRESH": "REFRESH MATERIALIZED VIEW",
    "IMPORT": "IMPORT FOREIGN SCHEMA",
    "REASSIGN": "REASSIGN OWNED",
    "SECURITY": "SECURITY LABEL",
    "CREATE": "CREATE *",
    "DROP": "DROP *",
    "ALTER": "ALTER *",
    "DISCARD": "DISCARD *",
    "SELECT INTO": "SELECT (with classes: [ddl])",
    "VALUES": "SELECT",
    "TABLE": "SELECT",
    "ROLLBACK TO": "ROLLBACK",
    "ROLLBACK TO SAVEPOINT": "ROLLBACK",
}


def compile_command_globs(patterns: Sequence[str]) -> re.Pattern[str]:
    compiled = []
    for raw in patterns:
        pattern = normalize_command(raw)
        if not pattern or not COMMAND_WORDS.fullmatch(pattern):
            raise PatternError(f"bad command pattern {raw!r}")
        if pattern in NOT_A_TAG:
            raise PatternError(
                f"no statement has the command tag {pattern!r}; PostgreSQL reports "
                f"{NOT_A_TAG[pattern]!r}"
            )
        compiled.append(_glob_regex(pattern).pattern)
    return re.compile("|".join(f"(?:{p})" for p in compiled))
