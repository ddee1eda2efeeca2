"""Static SQL inside PL/pgSQL DO blocks: parse the block, re-parse each embedded query.

PL/pgSQL keeps embedded SQL as text (``PLpgSQL_expr.query``); its ``parseMode`` says how the
server will parse it: a whole statement, an expression (run as ``SELECT expr``) or an assignment
(``target := expr``). Dynamic ``EXECUTE`` cannot be analysed and marks the statement opaque.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from pglast import parser as pg_parser

from proxy.sql.walker import parse_json, unwrap

if TYPE_CHECKING:
    from proxy.sql.walker import Collector

# RawParseMode values in PostgreSQL's parser.h
_RAW_PARSE_DEFAULT = 0
_RAW_PARSE_PLPGSQL_EXPR = 2
_RAW_PARSE_PLPGSQL_ASSIGN = (3, 4, 5)

_DYNAMIC_NODES = {
    "PLpgSQL_stmt_dynexecute": "EXECUTE of a string",
    "PLpgSQL_stmt_dynfors": "FOR … IN EXECUTE",
}


def walk_do_block(collector: Collector, code: str) -> None:
    tag = "$pgw$"
    while tag in code:
        tag = tag[:-1] + "w$"
    try:
        functions = orjson.loads(pg_parser.parse_plpgsql_json(f"DO {tag}{code}{tag}"))
    except Exception as exc:
        # libpg_query compiles PL/pgSQL without a catalog, so it rejects blocks the server
        # runs (DECLARE x orders[]): what cannot be analysed follows on_unparsable.
        collector.unparsable = f"DO block cannot be compiled for analysis: {exc}"
        return
    _walk(collector, functions)


def _walk(collector: Collector, value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _walk(collector, item)
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if key == "PLpgSQL_expr" and isinstance(item, dict):
            _expression(collector, item)
            continue
        if key in _DYNAMIC_NODES:
            collector.mark_opaque(f"DO block runs dynamic SQL ({_DYNAMIC_NODES[key]})")
        elif isinstance(item, dict) and "dynquery" in item:
            collector.mark_opaque("DO block runs dynamic SQL (OPEN/RETURN QUERY … EXECUTE)")
        _walk(collector, item)


def _expression(collector: Collector, expr: dict[str, Any]) -> None:
    query = str(expr.get("query", ""))
    mode = int(expr.get("parseMode", _RAW_PARSE_DEFAULT))
    if mode == _RAW_PARSE_PLPGSQL_EXPR:
        sql = "SELECT " + query
    elif mode in _RAW_PARSE_PLPGSQL_ASSIGN:
        value = _assigned_value(query)
        if value is None:
            collector.unparsable = f"DO block assignment not understood: {query[:60]}"
            return
        sql = "SELECT " + value
    elif mode == _RAW_PARSE_DEFAULT:
        sql = query
    else:
        return  # type names carry no SQL that runs
    try:
        statements = parse_json(sql)
    except Exception:
        collector.unparsable = f"DO block statement not understood: {query[:60]}"
        return
    for raw in statements:
        found = unwrap(raw.get("stmt"))
        if found is None:
            continue
        if mode == _RAW_PARSE_DEFAULT:
            collector.statement(found[0], found[1], via="DO block runs")
        else:
            collector.walk(raw.get("stmt"))  # an expression: calls count, no new command


def _assigned_value(query: str) -> str | None:
    """The expression part of ``target := expr`` (or ``target = expr``)."""
    try:
        tokens = pg_parser.scan(query)
    except Exception:
        return None
    for token in tokens:
        if token.name == "COLON_EQUALS" or query[token.start : token.end + 1] == "=":
            return query[token.end + 1 :]
    return None
