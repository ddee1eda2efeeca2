"""Remove secrets from statement text before it reaches the audit log or diagnostics.

Token positions come from PostgreSQL's own scanner (``pglast.parser.scan``), so quoting, dollar
quoting and nested comments cannot hide or fake a secret. Only when the scanner rejects the text
(it is lexically invalid, and the server will reject it too) a conservative text fallback redacts
every string after a secret-introducing keyword; that fallback is for display only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pglast import parser as pg_parser

from proxy.sql.facts import QueryFacts, StatementFacts

MASK = "'***'"

_STRING_TOKENS = frozenset({"SCONST", "USCONST"})
_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
# Keywords whose following string literal is itself a secret.
_SECRET_KEYWORDS = frozenset({"PASSWORD", "CONNECTION"})
# dblink functions and the positions of their connection-string argument ("last" = final one).
_CONNECTION_ARGUMENT: dict[str, str] = {
    "dblink_connect": "last",
    "dblink_connect_u": "last",
    "dblink": "first",
    "dblink_exec": "first",
    "dblink_send_query": "first",
}
# password=value inside a libpq keyword/value connection string, and user:secret@ in a URI.
_CONNINFO_PASSWORD = re.compile(
    r"""(?ix) (password \s* = \s*) ( ''(?:[^']|'''')*'' | '(?:[^'\\]|\\.)*'? | [^\s']+ )"""
)
_URI_PASSWORD = re.compile(r"(?i)(postgres(?:ql)?://[^:/@\s'?]*:)([^@\s']*)(@)")
# Cheap pre-check: text without any of these words cannot hold a secret we know how to find.
_SECRET_HINTS = ("password", "connection", "dblink", "postgres")


def redact(text: str) -> str:
    """``text`` with every secret literal replaced by ``'***'``. Never raises."""
    lowered = text.lower()
    if not any(hint in lowered for hint in _SECRET_HINTS):
        return text  # fast path: nothing that can introduce a secret
    try:
        tokens = pg_parser.scan(text)
    except Exception:
        return _fallback_redact(text)
    try:
        return _redact_tokens(text, tokens)
    except Exception:
        return _fallback_redact(text)


def _token_text(text: str, token: Any) -> str:
    return text[token.start : token.end + 1]


def _redact_tokens(text: str, tokens: Sequence[Any]) -> str:
    spans: dict[int, tuple[int, str]] = {}  # start -> (end exclusive, replacement)
    previous: Any = None
    for index, token in enumerate(tokens):
        name = token.name
        if name in _STRING_TOKENS:
            end = token.end + 1
            if previous is not None and _is_secret_keyword(text, previous):
                spans[token.start] = (end, MASK)
            else:
                cleaned = _clean_conninfo(_token_text(text, token))
                if cleaned is not None:
                    spans.setdefault(token.start, (end, cleaned))
        elif name == "IDENT":
            function = _token_text(text, token).strip('"').lower()
            rule = _CONNECTION_ARGUMENT.get(function)
            if rule is not None and index + 1 < len(tokens):
                nxt = tokens[index + 1]
                if _token_text(text, nxt) == "(":
                    for arg in _connection_args(text, tokens, index + 1, rule):
                        spans[arg.start] = (arg.end + 1, MASK)
        if name not in ("SQL_COMMENT", "C_COMMENT"):
            previous = token
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start in sorted(spans):
        end, replacement = spans[start]
        if start < pos:
            continue
        out.append(text[pos:start])
        out.append(replacement)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _is_secret_keyword(text: str, token: Any) -> bool:
    if token.name in _SECRET_KEYWORDS:
        return True
    if token.name == "IDENT":  # OPTIONS ("password" '…') with a quoted option name
        return _token_text(text, token).strip('"').lower() == "password"
    return False


def _connection_args(text: str, tokens: Sequence[Any], open_index: int, rule: str) -> list[Any]:
    """String-literal arguments of the call whose '(' is at ``open_index`` that hold the
    connection string (top-level arguments only)."""
    depth = 0
    args: list[list[Any]] = [[]]
    for token in tokens[open_index:]:
        piece = _token_text(text, token)
        if piece == "(":
            depth += 1
            if depth == 1:
                continue
        elif piece == ")":
            depth -= 1
            if depth == 0:
                break
        elif piece == "," and depth == 1:
            args.append([])
            continue
        args[-1].append(token)
    chosen = args[0] if rule == "first" else args[-1]
    return [t for t in chosen if t.name in _STRING_TOKENS]


def _clean_conninfo(literal: str) -> str | None:
    """The literal with password values inside a connection string masked, or None."""
    if "password" not in literal.lower() and "://" not in literal:
        return None
    cleaned = _CONNINFO_PASSWORD.sub(lambda m: m.group(1) + "***", literal)
    cleaned = _URI_PASSWORD.sub(lambda m: m.group(1) + "***" + m.group(3), cleaned)
    if cleaned == literal:
        return None
    if not cleaned.endswith("'") and literal.endswith("'"):
        cleaned += "'"  # the masked value swallowed the closing quote
    return cleaned


_FALLBACK_KEYWORD = re.compile(r"(?i)\b(password|connection|options|dblink\w*)\b")
_FALLBACK_STRING = re.compile(r"(?s)[eEuUbBxXnN]?&?'(?:[^']|'')*(?:'|$)|\$(\w*)\$.*?(?:\$\1\$|$)")


def _fallback_redact(text: str) -> str:
    """Display-only redaction for text the scanner rejects: every string literal after the
    first secret-introducing keyword is masked, and so is every password=value."""
    text = _CONNINFO_PASSWORD.sub(lambda m: m.group(1) + "***", text)
    text = _URI_PASSWORD.sub(lambda m: m.group(1) + "***" + m.group(3), text)
    match = _FALLBACK_KEYWORD.search(text)
    if match is None:
        return text
    head, tail = text[: match.end()], text[match.end() :]
    return head + _FALLBACK_STRING.sub(MASK, tail)


def normalize(text: str) -> str:
    """``text`` with every literal replaced by ``$n`` (numbered after any existing ``$n``).

    Uses PostgreSQL's scanner, so it also covers PREPARE bodies, EXECUTE arguments, COPY
    PROGRAM strings and DO bodies, which libpg_query's own normalize leaves as written.
    """
    try:
        tokens = pg_parser.scan(text)
    except Exception:
        return _fallback_normalize(redact(text))
    highest = 0
    for token in tokens:
        if token.name == "PARAM":
            digits = _token_text(text, token)[1:]
            if digits.isdigit():
                highest = max(highest, int(digits))
    out: list[str] = []
    pos = 0
    for token in tokens:
        if token.name in _LITERAL_TOKENS:
            highest += 1
            out.append(text[pos : token.start])
            out.append(f"${highest}")
            pos = token.end + 1
    out.append(text[pos:])
    return "".join(out)


def _fallback_normalize(text: str) -> str:
    counter = iter(range(1, 1 << 30))
    return _FALLBACK_STRING.sub(lambda _m: f"${next(counter)}", text)


# Statements whose text or parameters can carry credentials.
_SECRET_COMMANDS = frozenset(
    {
        "CREATE ROLE",
        "ALTER ROLE",
        "CREATE USER MAPPING",
        "ALTER USER MAPPING",
        "CREATE SUBSCRIPTION",
        "ALTER SUBSCRIPTION",
        "CREATE SERVER",
        "ALTER SERVER",
        "CREATE FOREIGN DATA WRAPPER",
        "ALTER FOREIGN DATA WRAPPER",
    }
)
_SECRET_FUNCTION_PREFIXES = ("dblink", "pgp_", "crypt", "encrypt", "decrypt", "hmac", "set_config")


def statement_may_carry_secrets(facts: StatementFacts | QueryFacts | None) -> bool:
    """True when the statement (or its Bind parameters) may hold credentials, so the session
    should redact parameters too. Unknown or unanalysable statements count as secret-bearing."""
    if facts is None:
        return True
    if isinstance(facts, QueryFacts):
        if not facts.parsable:
            return True
        return any(statement_may_carry_secrets(s) for s in facts.statements)
    if facts.command in _SECRET_COMMANDS or facts.opaque:
        return True
    if facts.body is not None and statement_may_carry_secrets(facts.body):
        return True
    for function in facts.functions:
        base = function.rsplit(".", 1)[-1]
        if base.startswith(_SECRET_FUNCTION_PREFIXES) or "password" in base:
            return True
    return False
