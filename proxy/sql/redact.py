"""Remove secrets from text before it reaches the audit log, the admin API or diagnostics.

This is pgwarden's one redaction: statement text in records (:func:`redact`,
:func:`redact_statement`), error messages (:func:`redact_error`), the admin API's current
statement, and through the records the store, ``logs``, reports and ``policy replay``.

Token positions come from PostgreSQL's own scanner (``pglast.parser.scan``), so quoting, dollar
quoting and nested comments cannot hide or fake a secret. Only when the scanner rejects the text
(it is lexically invalid, and the server will reject it too) a conservative text fallback redacts
every string after a secret-introducing word; that fallback is for display only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from pglast import parser as pg_parser

from proxy.audit.record import Event
from proxy.sql.facts import QueryFacts, StatementFacts

MASK = "'***'"

_STRING_TOKENS = frozenset({"SCONST", "USCONST"})
_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_OPEN, _CLOSE, _COMMA = "ASCII_40", "ASCII_41", "ASCII_44"
_SEMICOLON, _EQUALS = "ASCII_59", "ASCII_61"
# Keywords whose following string literal is itself a secret.
_SECRET_KEYWORDS = frozenset({"PASSWORD", "CONNECTION"})
# A setting, option or column whose name says it holds a secret (over-matching is harmless:
# a masked value too many, never one too few).
_SECRET_NAME = re.compile(r"(?i)pass|pwd|secret|token|credential|key")
# Built-in settings whose names match _SECRET_NAME but whose values are not secrets.
_PUBLIC_SETTINGS = frozenset(
    {
        "password_encryption",
        "ssl_key_file",
        "krb_server_keyfile",
        "ssl_passphrase_command_supports_reload",
    }
)
# Functions and the 1-based positions of their secret arguments ("last", "all").
_SECRET_ARGUMENTS: dict[str, tuple[int | str, ...]] = {
    "dblink_connect": ("last",),
    "dblink_connect_u": ("last",),
    "dblink": (1,),
    "dblink_exec": (1,),
    "dblink_send_query": (1,),
    "crypt": ("all",),
    "pgp_sym_encrypt": (2,),
    "pgp_sym_encrypt_bytea": (2,),
    "pgp_sym_decrypt": (2,),
    "pgp_sym_decrypt_bytea": (2,),
    "pgp_pub_encrypt": (2,),
    "pgp_pub_encrypt_bytea": (2,),
    "pgp_pub_decrypt": (2, 3),
    "pgp_pub_decrypt_bytea": (2, 3),
    "encrypt": (2,),
    "decrypt": (2,),
    "encrypt_iv": (2, 3),
    "decrypt_iv": (2, 3),
    "hmac": (2,),
}
# password=value inside a libpq keyword/value connection string, and user:secret@ in a URI.
_CONNINFO_PASSWORD = re.compile(
    r"""(?ix) (password \s* = \s*) ( ''(?:[^']|'''')*'' | '(?:[^'\\]|\\.)*'? | [^\s']+ )"""
)
# Both patterns below run on attacker-written text (comments, error messages) on the event
# loop, so each must take time linear in it. The scheme starts where a run of scheme
# characters starts (the lookbehind): tried from every position of a run, as
# "[a-z][a-z0-9+.-]*" was, a long word ("xxx…" of a 16 MB error message) cost quadratic time.
# The password is taken possessively and its "@" is optional (:func:`_mask_uri` masks only
# with it): a candidate whose password does not end at "@" is passed over whole, for every
# "://" inside it would end at the same place and fail the same way; retried one by one, each
# read to the end of the word ("a://u:" repeated over 48 kB took 13 s). A scheme not starting
# with a letter is masked too.
_URI_PASSWORD = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z0-9+.-]+://[^:/@\s'?]*:)([^@\s']*+)(@?)")
# In comments and messages: name=value / name: value for secret names, stopping before "*/".
# The name is matched from its secret word on: the part before it is kept as written anyway,
# and a leading "\b[\w.-]*" made every word start in a dotted run ("x.x.x…") read the rest of
# the run again (32 kB: 115 s).
_NAMED_SECRET = re.compile(
    r"(?i)((?:pass(?:word|wd)?|pwd|secret|token|api_?key)\s*[:=]\s*)((?:(?!\*/)\S)+)"
)
# Words one of which every _NAMED_SECRET match holds (lower-cased: api_key holds "key").
_NAMED_HINTS = ("pass", "pwd", "secret", "token", "key")
# SQL text that hands a secret to the server when a literal is spliced into it.
_SECRET_SQL = re.compile(r"(?i)\b(password|connection)\b|password\s*=")
# Cheap pre-check: text without any of these cannot hold a secret we know how to find.
_SECRET_HINTS = (
    "pass", "pwd", "secret", "token", "key", "crypt", "pgp_", "hmac", "connection", "dblink",
    "://", "credential",
)  # fmt: skip
_NESTING = 3  # SQL inside a string inside a string … is redacted this deep
_CACHE_TEXT_MAX = 4096
# A syntax error quoting a string literal: … at or near "'…" (the token may be cut short).
# Masked from the literal's start to the last '"' on its line followed by a space or the end
# (:func:`_mask_near_literals`; as one pattern, "[^\n]*\"(?=\s|$)", every quoted literal
# without such a quote read the rest of its line again: 112 kB of them took 8 s).
_NEAR_LITERAL = re.compile(r"""at or near "(?:[eEuUbBxXnN]?&?'|\$\w*\$)""")
# In a line read backwards: a '"' at its end (the original line's end) or after a space.
_LAST_CLOSING = re.compile(r'(?:^|(?<=\s))"')
# Messages that quote an input value: invalid input syntax for type integer: "…"
_ECHOED_VALUE = re.compile(r"""((?:invalid input (?:syntax|value) for [^:"]*):\s*)"[^\n]*\"""")


def _lowered(text: str) -> str:
    """``text`` lower-cased for the hint checks, so that they find every word the
    case-insensitive patterns match: Python's IGNORECASE also matches "s" with the long s
    (U+017F), which ``lower()`` keeps (the Kelvin sign it lowers to "k" itself)."""
    lowered = text.lower()
    return lowered.replace("\u017f", "s") if "\u017f" in lowered else lowered


def _has_hint(text: str) -> bool:
    lowered = _lowered(text)
    return any(hint in lowered for hint in _SECRET_HINTS)


def redact(text: str) -> str:
    """``text`` with every secret replaced by ``'***'``. Never raises.

    Secret positions: the literal after PASSWORD / CONNECTION; options, settings and columns
    whose names say password/secret/token/key (``OPTIONS (sslpassword …)``, ``SET app.token
    = …``, ``set_config('app.api_key', …)``); the key and password arguments of pgcrypto and
    the connection strings of dblink; password=… and user:password@ in any literal or comment;
    and all of these inside SQL held in a string (DO bodies, ``EXECUTE``, ``format``,
    ``dblink_exec``).
    """
    if not _has_hint(text):
        return text  # fast path: nothing that can introduce a secret
    if len(text) <= _CACHE_TEXT_MAX:
        return _redact_cached(text)
    return _redact(text, 0)


@functools.lru_cache(maxsize=4096)
def _redact_cached(text: str) -> str:
    return _redact(text, 0)


def _redact(text: str, depth: int) -> str:
    try:
        tokens = pg_parser.scan(text)
    except Exception:
        return _fallback_redact(text)
    try:
        return _apply(text, _secret_spans(text, tokens, depth))
    except Exception:
        return _fallback_redact(text)


def redact_statement(text: str, stmt: StatementFacts | None, *, unresolved: bool = False) -> str:
    """:func:`redact` plus what only the statement's (resolved) facts can tell: the arguments
    of ``EXECUTE name(…)`` are masked when the prepared body may take secrets (a PREPARE of
    ``set_config('app.token', $1, …)``, ``pgp_sym_encrypt(…, $2)``, ``dblink_connect($1)``).
    ``unresolved``: the body is not known (an analysis worker), so they are always masked."""
    out = redact(text)
    if stmt is None or not stmt.execute_name:
        return out
    if not unresolved and not statement_may_carry_secrets(stmt):
        return out
    try:
        tokens = pg_parser.scan(out)
    except Exception:
        return _fallback_normalize(out)
    spans: dict[int, tuple[int, str]] = {}
    for index, token in enumerate(tokens):
        if token.name == "EXECUTE" and index + 2 < len(tokens) and tokens[index + 2].name == _OPEN:
            for arg in _call_args(tokens, index + 2):
                for piece in arg:
                    if piece.name in _LITERAL_TOKENS:
                        spans[piece.start] = (piece.end + 1, MASK)
    return _apply(out, spans)


def redact_error(
    message: str,
    *,
    statement: str | None = None,
    params: Sequence[bytes | str | None] = (),
    extended: bool = False,
    secrets: Sequence[str] | None = None,
) -> str:
    """An error message (the server's or pgwarden's own) as the audit trail may keep it:

    * string-literal fragments quoted by a syntax error (``at or near "'…"``: an unterminated
      PASSWORD literal is the rest of the text) and secrets of ``statement`` it repeats
      (``secrets``: those, found earlier by :func:`secret_values`);
    * bind parameter values it echoes (``invalid input syntax for type integer: "…"``):
      ``params`` when known; with ``extended`` (the statement had parameters) every value a
      message of that form quotes;
    * user:password@ in URIs and secret-named name=value pairs.
    """
    out = _clean_text(message)
    out = _mask_near_literals(out)
    if secrets is None:
        secrets = secret_values(statement) if statement else ()
    if secrets:
        for secret in secrets:
            if len(secret) >= 3 or f'"{secret}"' in out:
                out = out.replace(secret, "***")
    for value in params:
        if value is None:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not text:
            continue
        quoted = f'"{text}"'
        if quoted in out:
            out = out.replace(quoted, '"***"')
        elif len(text) >= 4:
            out = out.replace(text, "***")
    if extended:
        out = _ECHOED_VALUE.sub(lambda m: m.group(1) + '"***"', out)
    if len(out) >= _REMEMBER_REDACTED:
        _redacted[0] = (out, extended)
    return out


def _mask_near_literals(text: str) -> str:
    """Each ``at or near "'…`` with the literal it quotes masked, through the last '"' on its
    line that a space or the end follows (what the server's syntax error closes it with)."""
    if 'at or near "' not in text:
        return text
    out: list[str] = []
    copied = searched = 0
    while (found := _NEAR_LITERAL.search(text, searched)) is not None:
        line_end = text.find("\n", found.end())
        if line_end < 0:
            line_end = len(text)
        # The quote must follow the literal's start on the same line: search that stretch
        # backwards, so the last one is found in one pass (the line ends in "\n" or the end).
        closing = _LAST_CLOSING.search(text[found.end() : line_end][::-1])
        if closing is None:
            searched = line_end  # no later quote on this line closes anything either
            continue
        out.append(text[copied : found.start()])
        out.append('at or near "' + MASK + '"')
        copied = searched = line_end - closing.start()  # just past the closing quote
    if not out:
        return text
    out.append(text[copied:])
    return "".join(out)


# The last long message redact_error produced, with its ``extended``: a statement's record
# carries it, and the trail's scrub_event (the sink boundary) is then handed that very string.
# Redacting it again would find nothing more, at the cost of a second pass over a message
# that may be megabytes long.
_REMEMBER_REDACTED = 4096
_redacted: list[tuple[str, bool] | None] = [None]


def scrub_event(event: Event) -> None:
    """Redact the error text of an audit event in place, as the trail writes it (the sink
    boundary): without the parameters, which the trail never sees, an extended-protocol
    statement's echoed input values are masked by their message form."""
    error = event.get("error")
    if isinstance(error, str) and error:
        extended = event.get("protocol") == "extended"
        done = _redacted[0]
        if done is not None and done[0] is error and done[1] == extended:
            _redacted[0] = None  # (once: not kept alive longer than its record)
            return
        event["error"] = redact_error(error, extended=extended)


def secret_values(statement: str) -> list[str]:
    """The secret texts :func:`redact` removes from ``statement`` (quotes stripped)."""
    if not _has_hint(statement):
        return []
    try:
        spans = _secret_spans(statement, pg_parser.scan(statement), 0)
    except Exception:
        spans = _fallback_spans(statement)
    out = []
    for start, (end, _replacement) in spans.items():
        piece = statement[start:end]
        if piece[:2].lower() in ("e'", "u&"):
            piece = piece.split("'", 1)[-1]
        piece = piece.strip("'$").strip()
        if piece:
            out.append(piece)
    return out


def _token_text(text: str, token: Any) -> str:
    return text[token.start : token.end + 1]


def _apply(text: str, spans: dict[int, tuple[int, str]]) -> str:
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


def _secret_spans(text: str, tokens: Sequence[Any], depth: int) -> dict[int, tuple[int, str]]:
    """start -> (end exclusive, replacement) for every secret in ``text``."""
    spans: dict[int, tuple[int, str]] = {}

    def mask(token: Any) -> None:
        spans[token.start] = (token.end + 1, MASK)

    previous: Any = None
    count = len(tokens)
    for index, token in enumerate(tokens):
        name = token.name
        if name in _COMMENT_TOKENS:
            piece = _token_text(text, token)
            cleaned = _clean_text(piece)
            if cleaned != piece:
                spans.setdefault(token.start, (token.end + 1, cleaned))
            continue
        if name in _STRING_TOKENS:
            if previous is not None and _is_secret_keyword(text, previous):
                mask(token)
            else:
                literal = _clean_literal(text, token, depth)
                if literal is not None:
                    spans.setdefault(token.start, (token.end + 1, literal))
        elif name == "SET":
            for value in _set_value_tokens(text, tokens, index):
                mask(value)
        elif (
            index + 1 < count
            and tokens[index + 1].name == _OPEN
            and (name == "IDENT" or token.kind != "NO_KEYWORD")
        ):
            function = _token_text(text, token).strip('"').lower()
            for arg in _secret_call_args(text, tokens, index + 1, function):
                mask(arg)
        previous = token
    return spans


def _is_secret_keyword(text: str, token: Any) -> bool:
    if token.name in _SECRET_KEYWORDS:
        return True
    if token.name == "IDENT":  # OPTIONS (sslpassword '…'), ("password" '…')
        return bool(_SECRET_NAME.search(_token_text(text, token).strip('"')))
    return False


def _set_value_tokens(text: str, tokens: Sequence[Any], set_index: int) -> list[Any]:
    """The value of ``SET name = value`` / ``SET name TO value`` (the statement, ALTER ROLE …
    SET, UPDATE … SET column = …) when the name says it is a secret."""
    index = set_index + 1
    count = len(tokens)
    while index < count and tokens[index].name in ("SESSION", "LOCAL"):
        index += 1
    parts: list[str] = []
    while index < count and tokens[index].name not in (_EQUALS, "TO"):
        if tokens[index].name in (_SEMICOLON, _COMMA, _OPEN) or len(parts) > 8:
            return []
        parts.append(_token_text(text, tokens[index]).strip('"'))
        index += 1
    setting = "".join(parts).lower()
    if not _SECRET_NAME.search(setting) or setting in _PUBLIC_SETTINGS:
        return []
    values = []
    depth = 0
    for token in tokens[index + 1 :]:
        name = token.name
        if name == _OPEN:
            depth += 1
        elif name == _CLOSE:
            depth -= 1
            if depth < 0:
                break
        elif depth == 0 and name in (_COMMA, _SEMICOLON, "WHERE", "FROM", "RETURNING"):
            break
        elif name in _LITERAL_TOKENS or name == "IDENT":
            values.append(token)
    return values


def _call_args(tokens: Sequence[Any], open_index: int) -> list[list[Any]]:
    """The tokens of each top-level argument of the call whose '(' is at ``open_index``."""
    depth = 0
    args: list[list[Any]] = [[]]
    for token in tokens[open_index:]:
        name = token.name
        if name == _OPEN:
            depth += 1
            if depth == 1:
                continue
        elif name == _CLOSE:
            depth -= 1
            if depth == 0:
                break
        elif name == _COMMA and depth == 1:
            args.append([])
            continue
        args[-1].append(token)
    return args


def _secret_call_args(
    text: str, tokens: Sequence[Any], open_index: int, function: str
) -> list[Any]:
    """Literal tokens in the secret arguments of a call of ``function``."""
    positions = _SECRET_ARGUMENTS.get(function)
    if positions is None and function not in ("set_config", "format"):
        return []
    args = _call_args(tokens, open_index)
    chosen: list[list[Any]] = []
    if function == "set_config":
        first = [t for t in args[0] if t.name not in _COMMENT_TOKENS]
        name = _string_value(text, first[0]) if len(first) == 1 else None
        if name is None or (_SECRET_NAME.search(name) and name.lower() not in _PUBLIC_SETTINGS):
            chosen = args[1:2]
    elif function == "format":
        template = " ".join(
            value
            for t in args[0]
            if t.name in _STRING_TOKENS and (value := _string_value(text, t)) is not None
        )
        if _SECRET_SQL.search(template):
            chosen = args[1:]
    elif positions is not None:
        for position in positions:
            if position == "all":
                chosen.extend(args)
            elif position == "last":
                chosen.append(args[-1])
            elif isinstance(position, int) and position <= len(args):
                chosen.append(args[position - 1])
    return [t for arg in chosen for t in arg if t.name in _LITERAL_TOKENS]


def _string_value(text: str, token: Any) -> str | None:
    """The value of a plain or dollar-quoted string literal token (None for E'', U&'')."""
    piece = _token_text(text, token)
    if len(piece) >= 2 and piece.startswith("'") and piece.endswith("'"):
        return piece[1:-1].replace("''", "'")
    if piece.startswith("$"):
        tag = piece[: piece.find("$", 1) + 1]
        if len(piece) >= 2 * len(tag) and piece.endswith(tag):
            return piece[len(tag) : -len(tag)]
    return None


def _clean_literal(text: str, token: Any, depth: int) -> str | None:
    """A string literal with the secrets inside it masked (None when it has none): a
    connection string's password, or secrets in SQL it holds (DO bodies, EXECUTE, dblink)."""
    piece = _token_text(text, token)
    cleaned = _clean_conninfo(piece)
    if cleaned is not None:
        return cleaned
    if depth >= _NESTING or not _has_hint(piece):
        return None
    value = _string_value(text, token)
    if value is None:
        # E'' / U&'' strings: their escapes make re-quoting unsafe; mask when in doubt.
        return MASK if _SECRET_SQL.search(piece) else None
    inner = _redact(value, depth + 1)
    if inner == value:
        return None
    if piece.startswith("$"):
        tag = piece[: piece.find("$", 1) + 1]
        if tag not in inner:
            return tag + inner + tag
    return "'" + inner.replace("'", "''") + "'"


def _clean_conninfo(literal: str) -> str | None:
    """The literal with password values inside a connection string masked, or None."""
    if "password" not in literal.lower() and "://" not in literal:
        return None
    cleaned = _CONNINFO_PASSWORD.sub(lambda m: m.group(1) + "***", literal)
    cleaned = _URI_PASSWORD.sub(_mask_uri, cleaned)
    if cleaned == literal:
        return None
    if not cleaned.endswith("'") and literal.endswith("'"):
        cleaned += "'"  # the masked value swallowed the closing quote
    return cleaned


def _mask_uri(match: re.Match[str]) -> str:
    """A URI password masked, when the candidate really is ``scheme://user:password@``."""
    return match.group(1) + "***@" if match.group(3) else match.group(0)


def _clean_text(text: str) -> str:
    """Free text (a comment, a message) with URI passwords and name=secret values masked.

    Each pattern runs only where its literal part occurs: both are case-insensitive, which
    Python's regex engine cannot search fast (a 16 MB error message took 3.5 s through them,
    on the event loop), while ``in`` on the text finds "://" or a secret word at memory speed.
    """
    if "://" in text:
        text = _URI_PASSWORD.sub(_mask_uri, text)
    lowered = _lowered(text)
    if any(word in lowered for word in _NAMED_HINTS):
        text = _NAMED_SECRET.sub(lambda m: m.group(1) + "***", text)
    return text


_FALLBACK_KEYWORD = re.compile(
    r"(?i)\b(password|connection|options|dblink\w*|set_config|format|crypt|encrypt\w*"
    r"|decrypt\w*|pgp_\w+|hmac|\w*(?:pass|pwd|secret|token|credential|key)\w*)\b"
)
_FALLBACK_STRING = re.compile(r"(?s)[eEuUbBxXnN]?&?'(?:[^']|'')*(?:'|$)|\$(\w*)\$.*?(?:\$\1\$|$)")


def _fallback_spans(text: str) -> dict[int, tuple[int, str]]:
    match = _FALLBACK_KEYWORD.search(text)
    if match is None:
        return {}
    return {m.start(): (m.end(), MASK) for m in _FALLBACK_STRING.finditer(text, match.end())}


def _fallback_redact(text: str) -> str:
    """Display-only redaction for text the scanner rejects: every string literal after the
    first secret-introducing word is masked, and so is every password=value."""
    text = _CONNINFO_PASSWORD.sub(lambda m: m.group(1) + "***", text)
    text = _clean_text(text)
    return _apply(text, _fallback_spans(text))


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
        elif token.name in _COMMENT_TOKENS:  # comments are kept, their secrets are not
            piece = _token_text(text, token)
            cleaned = _clean_text(piece)
            if cleaned != piece:
                out.append(text[pos : token.start])
                out.append(cleaned)
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
