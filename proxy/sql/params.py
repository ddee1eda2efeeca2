"""Bind parameters and EXECUTE arguments are facts: re-judge a statement with their values.

Facts computed without values judge ``$n`` strictly (``WHERE $1`` does not limit the rows,
``set_config($1, …)`` may change the role) and mark the statement ``param_sensitive``. Before
an Execute is forwarded, the session calls :func:`bind_message` with the Bind message's values
(or :func:`bind` with decoded ones) and decides on the facts it returns; SQL-level ``EXECUTE
p(args)`` is bound by :func:`proxy.sql.extract.resolve_execute` itself.

Values are decoded as the server will read them: text format per the statement's parameter
type (the OID from Parse, or from ParameterDescription where Parse said 0), binary format for
the types whose wire form is fixed (bool, integers, floats, text-like). A value that cannot be
read that way stays :data:`UNKNOWN` and is judged as strictly as without values.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from proxy.sql.facts import ParserSettings, QueryFacts, StatementFacts
from proxy.sql.folding import RI, parse_bool

UNKNOWN: Final = RI  # a parameter whose value cannot be read: judged as without a value

_BOOL = 16
_INTEGERS = {21: ">h", 23: ">i", 20: ">q", 26: ">I"}  # int2, int4, int8, oid
_FLOATS = {700: ">f", 701: ">d"}
_NUMERIC = 1700
# text, varchar, bpchar, name, unknown, regclass (text form: a name), unspecified
_TEXTUAL = frozenset({25, 1043, 1042, 19, 705, 2205, 0})
_BINARY_TEXT = frozenset({25, 1043, 1042, 19, 705})

_DEFAULT_SETTINGS = ParserSettings()


def decode_values(
    values: Sequence[bytes | None],
    formats: Sequence[int],
    type_oids: Sequence[int],
    client_encoding: str = "UTF8",
) -> dict[int, Any]:
    """``{n: value}`` for ``$1…$n`` of a Bind message: None for NULL, a bool, int, float or
    str where it can be read, else :data:`UNKNOWN`. ``formats`` as in Bind (none: all text,
    one: for all, else one per value); ``type_oids`` as the statement declares them (missing
    or 0: unspecified, resolved by the server from context, read like an untyped literal)."""
    from proxy.sql.extract import python_codec

    codec = python_codec(client_encoding)
    if len(formats) not in (0, 1, len(values)):
        return {i + 1: UNKNOWN for i in range(len(values))}  # the server refuses this Bind
    out: dict[int, Any] = {}
    for index, raw in enumerate(values):
        fmt = formats[0] if len(formats) == 1 else (formats[index] if formats else 0)
        oid = type_oids[index] if index < len(type_oids) else 0
        out[index + 1] = None if raw is None else _decode(raw, fmt, oid, codec)
    return out


def _decode(raw: bytes, fmt: int, oid: int, codec: str | None) -> Any:
    if fmt == 1:
        return _decode_binary(raw, oid, codec)
    if fmt != 0 or codec is None:
        return UNKNOWN
    try:
        text = codecs.decode(raw, codec)
    except (UnicodeDecodeError, LookupError):
        return UNKNOWN
    if oid == _BOOL:
        parsed = parse_bool(text)
        return UNKNOWN if parsed is None else parsed
    if oid in _INTEGERS:
        try:
            return int(text.strip())
        except ValueError:
            return UNKNOWN
    if oid in _FLOATS or oid == _NUMERIC:
        try:
            return float(text.strip())
        except ValueError:
            return UNKNOWN
    return text if oid in _TEXTUAL else UNKNOWN


def _decode_binary(raw: bytes, oid: int, codec: str | None) -> Any:
    try:
        if oid == _BOOL and len(raw) == 1:
            return raw != b"\x00"
        if oid in _INTEGERS:
            return int(struct.unpack(_INTEGERS[oid], raw)[0])
        if oid in _FLOATS:
            return float(struct.unpack(_FLOATS[oid], raw)[0])
        if oid in _BINARY_TEXT and codec is not None:
            return codecs.decode(raw, codec)
    except (struct.error, UnicodeDecodeError, LookupError):
        return UNKNOWN
    return UNKNOWN  # unspecified type (0) in binary: the server's inferred type decides


def bind(
    facts: QueryFacts,
    values: Mapping[int, Any],
    settings: ParserSettings = _DEFAULT_SETTINGS,
) -> QueryFacts:
    """``facts`` judged with the parameter values the server will use. Returns ``facts``
    itself when nothing in them depends on a parameter."""
    if not facts.param_sensitive or not facts.parsable:
        return facts
    from proxy.sql.extract import analyze

    known = {n: v for n, v in values.items() if v is not UNKNOWN}
    return analyze(facts.text, settings, known)


def bind_message(
    facts: QueryFacts,
    values: Sequence[bytes | None],
    formats: Sequence[int],
    type_oids: Sequence[int],
    settings: ParserSettings = _DEFAULT_SETTINGS,
) -> QueryFacts:
    """:func:`bind` with a Bind message's raw values (see :func:`decode_values`)."""
    if not facts.param_sensitive:
        return facts
    decoded = decode_values(values, formats, type_oids, settings.client_encoding)
    return bind(facts, decoded, settings)


def execute_arguments(stmt: StatementFacts) -> dict[int, Any]:
    """The values of an ``EXECUTE name(args)`` statement's arguments that are constants
    (``EXECUTE p(true, 'x', 5)``); computed ones are left out (judged without a value)."""
    from proxy.sql.folding import constant_value
    from proxy.sql.walker import parse_json, unwrap

    try:
        raw = parse_json(stmt.text)
    except Exception:
        return {}
    found = unwrap(raw[0].get("stmt")) if len(raw) == 1 else None
    if found is None or found[0] != "ExecuteStmt":
        return {}
    out: dict[int, Any] = {}
    for index, arg in enumerate(found[1].get("params") or ()):
        value = constant_value(arg)
        if value is not UNKNOWN:
            out[index + 1] = value
    return out


def bind_prepared_body(body: StatementFacts, arguments: Mapping[int, Any]) -> StatementFacts:
    """The facts of a SQL-level PREPARE's body (``body.text`` is the PREPARE statement)
    judged with EXECUTE's argument values."""
    if not body.param_sensitive:
        return body
    from proxy.sql.extract import analyze

    facts = analyze(body.text, _DEFAULT_SETTINGS, dict(arguments))
    if len(facts.statements) != 1 or facts.statements[0].body is None:
        return body
    return facts.statements[0].body
