"""Relations named by strings: ``'s.t'::regclass``, ``nextval('seq1')``, ``pg_relation_size('t')``.

The server resolves (and, for some calls or in a column DEFAULT, locks) such a relation while
running the statement, so it is a relation the statement touches as much as one in FROM. The
string is read the way ``regclassin`` reads it (``stringToQualifiedNameList``): parts split at
dots outside double quotes, unquoted parts folded to lower case, every part truncated to
NAMEDATALEN-1 bytes.
"""

from __future__ import annotations

from typing import Any

from proxy.sql.catalog import REGCLASS_ARGUMENTS

_NAMEDATALEN = 64
_REGCLASS_TYPES = frozenset({"regclass"})
# Calls that change what their regclass argument names (a sequence's state, an index's
# summary): listed as writes to it; the other regclass arguments are reads.
_WRITING_CALLS = frozenset(
    {
        "nextval",
        "setval",
        "brin_summarize_new_values",
        "brin_summarize_range",
        "brin_desummarize_range",
        "gin_clean_pending_list",
    }
)


def split_qualified_name(text: str) -> list[str] | None:
    """The identifier parts of ``text`` as ``regclassin`` splits them; None when the server
    would reject the string (an empty part, an unterminated quote, junk after a quote)."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j = i + 1
            buf: list[str] = []
            while True:
                end = text.find('"', j)
                if end < 0:
                    return None
                buf.append(text[j:end])
                if text[end + 1 : end + 2] == '"':
                    buf.append('"')
                    j = end + 2
                    continue
                i = end + 1
                break
            part = "".join(buf)
            if not part:
                return None
        else:
            j = i
            while j < n and text[j] != "." and not text[j].isspace():
                j += 1
            part = text[i:j].lower()
            if not part:
                return None
            i = j
        parts.append(_truncate(part))
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return parts
        if text[i] != ".":
            return None
        i += 1


def _truncate(part: str) -> str:
    data = part.encode("utf-8")
    if len(data) < _NAMEDATALEN:
        return part
    return data[: _NAMEDATALEN - 1].decode("utf-8", "ignore")


def string_constant(node: Any) -> str | None:
    """The value of a string constant, also one cast to a type (``'x'::regclass``)."""
    if not isinstance(node, dict) or len(node) != 1:
        return None
    ((kind, body),) = node.items()
    if kind == "TypeCast" and isinstance(body, dict):
        return string_constant(body.get("arg"))
    if kind == "A_Const" and isinstance(body, dict) and "sval" in body:
        return str(body["sval"].get("sval", ""))
    return None


def relation_of(text: str) -> tuple[str | None, str] | None:
    """(schema, name) named by a regclass string; None for an OID or a string the server
    rejects. A three-part name's first part must be the current database: dropped."""
    if text.strip().isdigit():
        return None
    parts = split_qualified_name(text)
    if parts is None or not 1 <= len(parts) <= 3:
        return None
    return (parts[-2] if len(parts) > 1 else None), parts[-1]


def is_regclass_cast(body: dict[str, Any]) -> bool:
    """A TypeCast node (its body) casting to regclass (``pg_catalog.regclass`` too)."""
    type_name = body.get("typeName")
    if not isinstance(type_name, dict) or type_name.get("arrayBounds"):
        return False
    names = type_name.get("names") or ()
    last = names[-1] if names else None
    sval = last.get("String", {}).get("sval") if isinstance(last, dict) else None
    return sval in _REGCLASS_TYPES


def call_arguments(base: str, args: list[Any]) -> list[tuple[Any, str]]:
    """The arguments of a call to ``base`` that have type regclass, with the access the call
    makes to what they name."""
    positions = REGCLASS_ARGUMENTS.get(base)
    if positions is None:
        return []
    access = "write" if base in _WRITING_CALLS else "read"
    out: list[tuple[Any, str]] = []
    for index, arg in enumerate(args):
        named = arg.get("NamedArgExpr") if isinstance(arg, dict) else None
        if isinstance(named, dict):
            if REGCLASS_ARGUMENTS.get(f"{base}:{named.get('name')}") is not None:
                out.append((named.get("arg"), access))
        elif index in positions:
            out.append((arg, access))
    return out
