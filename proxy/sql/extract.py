"""SQL text -> :class:`QueryFacts`, using libpg_query (PostgreSQL's own grammar) through pglast.

``analyze`` is pure and never raises: a syntax error gives ``parse_error``; text the parser cannot
read the way the server would (standard_conforming_strings off, undecodable bytes) or a failure in
this layer gives ``unparsable_reason``. Callers fail closed on both.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pglast import parser as pg_parser

from proxy.sql.commands import command_tag, statement_class
from proxy.sql.facts import ParserSettings, QueryFacts, Relation, StatementFacts
from proxy.sql.redact import redact_error
from proxy.sql.walker import OPAQUE_MARK, Collector, load_statements, unwrap

_DEFAULT_SETTINGS = ParserSettings()

# PostgreSQL client_encoding names -> Python codecs. Names are compared case-insensitively
# with '_' and '-' removed, as PostgreSQL does.
_PG_ENCODINGS: dict[str, str] = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "SQLASCII": "utf-8",  # bytes pass through unchecked; we need text, so they must be UTF-8
    "LATIN1": "latin-1",
    "ISO88591": "latin-1",
    "LATIN2": "iso8859-2",
    "ISO88592": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO88595": "iso8859-5",
    "ISO88596": "iso8859-6",
    "ISO88597": "iso8859-7",
    "ISO88598": "iso8859-8",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUCJP": "euc-jp",
    "EUCJIS2004": "euc-jis-2004",
    "EUCKR": "euc-kr",
    "EUCCN": "gb2312",
    "SJIS": "shift_jis",
    "SHIFTJIS2004": "shift_jis_2004",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "BIG5": "big5",
    "UHC": "cp949",
    "JOHAB": "johab",
}


@functools.lru_cache(maxsize=64)  # bounded: the name may come from a client
def python_codec(client_encoding: str) -> str | None:
    """The Python codec for a PostgreSQL client_encoding name, or None if unsupported.
    (Cached: asked for every statement the facts cache has not seen.)"""
    key = client_encoding.upper().replace("_", "").replace("-", "")
    return _PG_ENCODINGS.get(key)


def analyze_bytes(data: bytes, settings: ParserSettings = _DEFAULT_SETTINGS) -> QueryFacts:
    """Decode wire bytes per the session's client_encoding, then :func:`analyze`."""
    text = decode(data, settings)
    return text if isinstance(text, QueryFacts) else analyze(text, settings)


def decode(data: bytes, settings: ParserSettings = _DEFAULT_SETTINGS) -> str | QueryFacts:
    """The text of wire bytes per the session's client_encoding, or the facts saying why it
    cannot be read."""
    codec = python_codec(settings.client_encoding)
    if codec is None:
        text = data.decode("utf-8", "replace")
        return QueryFacts(
            text, (), unparsable_reason=f"client_encoding {settings.client_encoding} unsupported"
        )
    try:
        text = data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return QueryFacts(
            data.decode("utf-8", "replace"),
            (),
            unparsable_reason=f"text is not valid {settings.client_encoding}",
        )
    return text


@dataclass(frozen=True, slots=True)
class ShapeEvidence:
    """What the literal-insensitive cache level needs from one analysis, in character offsets.

    ``spans``: each statement's (start, end) as the parser reported them (end None: to the end
    of the text), before :func:`_slice` strips them. ``constants``: where every ``A_Const``
    node of the parse trees starts (a negative number starts at its minus sign).
    """

    spans: tuple[tuple[int, int | None], ...]
    constants: frozenset[int]


def analyze(
    text: str,
    settings: ParserSettings = _DEFAULT_SETTINGS,
    params: Mapping[int, Any] | None = None,
) -> QueryFacts:
    """Facts about every statement in ``text``. Never raises.

    ``params`` maps ``$n`` to the value the server will use (see :mod:`proxy.sql.params`);
    without it parameter-dependent facts are judged strictly and marked ``param_sensitive``."""
    return _analyze(text, settings, None, params)


def analyze_with_evidence(
    text: str, settings: ParserSettings = _DEFAULT_SETTINGS
) -> tuple[QueryFacts, ShapeEvidence | None]:
    """:func:`analyze`, plus the statement spans and constant positions when the text parsed
    and no fact depends on a literal's value (otherwise None)."""
    out: list[ShapeEvidence] = []
    facts = _analyze(text, settings, out, None)
    return facts, (out[0] if out else None)


class _Run:
    """What one analysis learns beyond the statements' facts."""

    __slots__ = ("literal_sensitive", "params", "unparsable")

    def __init__(self, params: Mapping[int, Any] | None) -> None:
        self.params = params
        self.literal_sensitive = False
        self.unparsable: str | None = None

    def collector(self) -> Collector:
        return Collector(self.params)

    def absorb(self, collector: Collector) -> None:
        # parameter-dependent facts stay out of the shape level too (it would drop the flag)
        self.literal_sensitive |= collector.literal_sensitive or collector.param_sensitive
        if collector.unparsable is not None and self.unparsable is None:
            self.unparsable = collector.unparsable


def _analyze(
    text: str,
    settings: ParserSettings,
    evidence: list[ShapeEvidence] | None,
    params: Mapping[int, Any] | None,
) -> QueryFacts:
    if not settings.standard_conforming_strings:
        return QueryFacts(
            text,
            (),
            unparsable_reason=(
                "standard_conforming_strings is off: PostgreSQL's parser library reads "
                "backslashes in strings differently from the server"
            ),
        )
    if "\x00" in text:
        # the C parser would stop at the NUL and never see what follows it
        return QueryFacts(text, (), unparsable_reason="text contains a NUL character")
    try:
        data = pg_parser.parse_sql_json(text)
        raw_statements = load_statements(data)
    except pg_parser.ParseError as exc:
        # The message quotes the text near the error: an unterminated PASSWORD literal is
        # the secret itself, and the message reaches records, decisions and clients' logs.
        message = redact_error(_parse_error_message(exc), statement=text)
        return QueryFacts(text, (), parse_error=message)
    except Exception as exc:  # e.g. nesting too deep for the JSON decoder
        return QueryFacts(text, (), unparsable_reason=f"cannot analyse: {type(exc).__name__}")
    try:
        encoded = None if text.isascii() else text.encode("utf-8")
        run = _Run(params)
        statements = tuple(_statement(raw, text, encoded, run) for raw in raw_statements)
        literal_sensitive = run.literal_sensitive
        if run.unparsable is not None:
            return QueryFacts(text, (), unparsable_reason=run.unparsable)
        if evidence is not None and not literal_sensitive:
            evidence.append(_evidence(raw_statements, data, encoded))
    except RecursionError:
        return QueryFacts(text, (), unparsable_reason="statement nests too deeply to analyse")
    except Exception as exc:  # a bug here must not let the statement through unexamined
        return QueryFacts(
            text, (), unparsable_reason=f"facts layer failed: {type(exc).__name__}: {exc}"
        )
    return QueryFacts(text, statements, literal_sensitive=literal_sensitive)


# An A_Const in libpg_query's JSON: {"A_Const":{["isnull":true,]["ival":{"ival":5},]"location":N}}
# (fields at their zero value are omitted). '"A_Const":{' cannot occur inside a JSON string,
# where quotes are escaped; a form this does not match only loses a location, which keeps the
# text out of the shape level.
_A_CONST = re.compile(
    r'"A_Const":\{(?:"isnull":true,?)?'
    r'(?:"\w+":\{(?:"\w+":(?:"(?:[^"\\]|\\.)*"|[^{}",]*))?\},?)?'
    r'(?:"location":(\d+))?\}'
)


def _evidence(
    raw_statements: list[dict[str, Any]], data: str, encoded: bytes | None
) -> ShapeEvidence:
    def chars(offset: int) -> int:  # libpg_query offsets count UTF-8 bytes
        return offset if encoded is None else len(encoded[:offset].decode("utf-8", "replace"))

    spans: list[tuple[int, int | None]] = []
    for raw in raw_statements:
        start = int(raw.get("stmt_location", 0))
        length = int(raw.get("stmt_len", 0))
        spans.append((chars(start), chars(start + length) if length else None))
    # a location missing from the JSON is 0; no statement starts with a constant
    constants = frozenset(chars(int(m or 0)) for m in _A_CONST.findall(data))
    return ShapeEvidence(tuple(spans), constants)


def _parse_error_message(exc: Exception) -> str:
    args = exc.args
    message = str(args[0]) if args else str(exc)
    if len(args) > 1 and isinstance(args[1], int):
        # pglast gives a 0-based character offset; PostgreSQL reports positions 1-based
        return f"{message} (at character {args[1] + 1})"
    return message


def _slice(raw: dict[str, Any], text: str, encoded: bytes | None) -> str:
    start = int(raw.get("stmt_location", 0))
    length = int(raw.get("stmt_len", 0))
    if encoded is None:
        piece = text[start : start + length] if length else text[start:]
    else:  # libpg_query offsets count UTF-8 bytes
        chunk = encoded[start : start + length] if length else encoded[start:]
        piece = chunk.decode("utf-8", "replace")
    return piece.strip()


def _statement(raw: dict[str, Any], text: str, encoded: bytes | None, run: _Run) -> StatementFacts:
    stmt_text = _slice(raw, text, encoded)
    found = unwrap(raw.get("stmt"))
    if found is None:
        raise ValueError("statement without a node")
    kind, body = found
    collector = run.collector()
    command = collector.statement(kind, body)
    facts = _facts(collector, stmt_text, command, statement_class(kind, body))
    run.absorb(collector)
    if collector.prepared_kind is not None:
        facts = _with_prepared_body(facts, collector.prepared_kind, run)
    return facts


def _facts(
    collector: Collector,
    text: str,
    command: str,
    cls: Any,
    fingerprint: str | None = None,
) -> StatementFacts:
    if fingerprint is None:
        try:
            fingerprint = pg_parser.fingerprint(text)
        except Exception:
            fingerprint = ""
    return StatementFacts(
        text=text,
        command=command,
        statement_class=cls,
        effective_commands=frozenset(collector.effective),
        classes=frozenset(collector.classes | {cls}),
        relations=tuple(Relation(s, n, a) for s, n, a in collector.relations),  # type: ignore[arg-type]
        functions=frozenset(collector.functions),
        missing_where=collector.missing_where,
        copy=collector.copy,
        role_change=collector.role_change,
        opaque=collector.opaque,
        fingerprint=fingerprint,
        prepare_name=collector.prepare_name,
        execute_name=collector.execute_name,
        notes=tuple(collector.notes),
        param_sensitive=collector.param_sensitive,
        identity_change=collector.identity_change,
    )


def _with_prepared_body(
    facts: StatementFacts, prepared: tuple[str, dict[str, Any]], run: _Run
) -> StatementFacts:
    kind, body = prepared
    inner = run.collector()
    command = inner.statement(kind, body)
    run.absorb(inner)
    body_facts = _facts(inner, facts.text, command, statement_class(kind, body), facts.fingerprint)
    return _replace(facts, body=body_facts)


def _replace(facts: StatementFacts, **changes: Any) -> StatementFacts:
    import dataclasses

    return dataclasses.replace(facts, **changes)


def prepared_body(stmt: StatementFacts) -> StatementFacts | None:
    """Facts of the statement a SQL-level ``PREPARE name AS …`` stores (None otherwise)."""
    return stmt.body if stmt.prepare_name else None


def resolve_execute(stmt: StatementFacts, prepared: Mapping[str, StatementFacts]) -> StatementFacts:
    """Merge the facts of the prepared body into an ``EXECUTE name`` statement.

    ``prepared`` maps SQL-level prepared names to their body facts (see :func:`prepared_body`).
    An unknown name leaves the statement opaque, as it was.
    """
    name = stmt.execute_name
    if name is None:
        return stmt
    body = prepared.get(name)
    if body is None:
        return stmt
    if body.param_sensitive:  # EXECUTE's arguments are facts too (PREPARE p(bool) … WHERE $1)
        from proxy.sql.params import bind_prepared_body, execute_arguments

        body = bind_prepared_body(body, execute_arguments(stmt))
    relations = dict.fromkeys((*stmt.relations, *body.relations))
    own_notes = tuple(n for n in stmt.notes if not n.startswith(f"EXECUTE {name}:"))
    return _replace(
        stmt,
        effective_commands=stmt.effective_commands | body.effective_commands,
        classes=stmt.classes | body.classes,
        relations=tuple(relations),
        functions=stmt.functions | body.functions,
        missing_where=stmt.missing_where or body.missing_where,
        copy=stmt.copy or body.copy,
        role_change=stmt.role_change or body.role_change,
        identity_change=stmt.identity_change or body.identity_change,
        opaque=body.opaque or any(n.endswith(OPAQUE_MARK) for n in own_notes),
        notes=(*own_notes, f"EXECUTE {name} runs prepared {body.command}", *body.notes),
    )


__all__ = [
    "analyze",
    "analyze_bytes",
    "analyze_with_evidence",
    "command_tag",
    "decode",
    "prepared_body",
    "python_codec",
    "resolve_execute",
]
