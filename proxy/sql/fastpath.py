"""Facts for a FunctionCall ('F', fast-path) message: a call of one function known by OID.

The function is named from PostgreSQL's own catalog — the shipped built-in list for the server's
major version (:func:`proxy.sql.catalog.builtin_function_name`), else a
:class:`~proxy.sql.catalog.resolver.FunctionInfo` the session looked up on the server (extension
and user functions) — and then judged exactly like ``SELECT schema.name($1, …)`` with the
message's argument values bound: a function rule matches it, ``set_config`` is a role switch
only when its setting is ``role``/``session_authorization`` (or cannot be read), a function
that runs a query string is dynamic SQL. Only an OID nobody can name is opaque.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from proxy.sql import catalog
from proxy.sql.catalog.resolver import FunctionInfo
from proxy.sql.extract import analyze
from proxy.sql.facts import ParserSettings, QueryFacts, StatementFacts
from proxy.sql.params import decode_values

_DEFAULT_SETTINGS = ParserSettings()
_NOTE = "FunctionCall protocol message"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def function_call_facts(
    oid: int,
    args: Sequence[bytes | None] = (),
    formats: Sequence[int] = (),
    *,
    server_major: int | None = None,
    resolved: FunctionInfo | None = None,
    settings: ParserSettings = _DEFAULT_SETTINGS,
) -> QueryFacts:
    """Facts for calling function ``oid`` with a FunctionCall's arguments (raw values and
    format codes, as in the message). ``resolved``: what the server's catalog said about an
    OID that is not a shipped built-in."""
    info = resolved if resolved is not None and resolved.oid == oid else None
    if info is None:
        name = catalog.builtin_function_name(oid, server_major)
        if name is not None:
            info = FunctionInfo(oid, "pg_catalog", name, ())
    if info is None:
        return _opaque(oid)
    text = f"<function call oid={oid} {info.schema}.{info.name}>"
    placeholders = ", ".join(f"${i + 1}" for i in range(len(args)))
    sql = f"SELECT {_quote(info.schema)}.{_quote(info.name)}({placeholders})"
    values = decode_values(args, formats, info.arg_types, settings.client_encoding)
    facts = analyze(sql, settings, values)
    if not facts.parsable or len(facts.statements) != 1:
        return _opaque(oid)
    stmt = facts.statements[0]
    stmt = dataclasses.replace(
        stmt,
        text=text,
        statement_class="function",
        classes=(stmt.classes - {"read"}) | {"function"},
        functions=stmt.functions | {info.name},
        fingerprint="",
        notes=(_NOTE, *stmt.notes),
    )
    return QueryFacts(text, (stmt,))


def _opaque(oid: int) -> QueryFacts:
    text = f"<function call oid={oid}>"
    stmt = StatementFacts(
        text=text,
        command="SELECT",
        statement_class="function",
        effective_commands=frozenset({"SELECT"}),
        classes=frozenset({"function"}),
        relations=(),
        functions=frozenset(),
        missing_where=False,
        copy=None,
        role_change=False,
        opaque=True,
        fingerprint="",
        notes=(_NOTE, f"function OID {oid} is not a known built-in and was not resolved"),
    )
    return QueryFacts(text, (stmt,))
