"""Compiled rule conditions: each key of a ``when`` / ``unless`` block becomes one object.

A condition answers ``holds(ctx)`` on the hot path and, only when asked by ``policy test``,
``why(ctx)``: the facts that made it hold. Everything that can be prepared (regexes, networks,
time zones) is prepared at load time.
"""

from __future__ import annotations

import abc
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import ClassVar, Literal

from proxy.identity import Identity
from proxy.policy.hours import HoursWindow
from proxy.policy.names import QualifiedPattern, split_function_name
from proxy.sql.facts import QueryFacts, Relation, StatementFacts

Stage = Literal["identity", "shape", "statement"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# PostgreSQL searches pg_catalog first when search_path does not name it.
IMPLICIT_SCHEMAS = ("pg_catalog",)


@dataclass(slots=True)
class Ctx:
    """What one statement's evaluation looks at."""

    identity: Identity
    stmt: StatementFacts
    query: QueryFacts
    now: datetime


class Condition(abc.ABC):
    """One key of a ``when`` / ``unless`` block."""

    __slots__ = ("key",)
    # identity: depends only on who is connected; shape: only on the statement's scalar facts
    # (command tags, classes, flags: see engine.shape_key). Both are decided once per
    # (identity, shape) and cached by the engine; "statement" conditions run every time.
    stage: ClassVar[Stage] = "statement"

    def __init__(self, key: str) -> None:
        self.key = key

    @abc.abstractmethod
    def holds(self, ctx: Ctx) -> bool:
        """Whether this condition holds for the statement in ``ctx``."""

    @abc.abstractmethod
    def why(self, ctx: Ctx) -> str:
        """A human explanation of the outcome, for ``policy test``."""


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(repr(v) for v in values)


class NameGlobs(Condition):
    """users / databases / applications: case-sensitive globs on an identity field."""

    __slots__ = ("attr", "patterns", "regex")
    stage = "identity"

    def __init__(self, key: str, attr: str, patterns: tuple[str, ...], regex: re.Pattern[str]):
        super().__init__(key)
        self.attr = attr
        self.patterns = patterns
        self.regex = regex

    def holds(self, ctx: Ctx) -> bool:
        return self.regex.match(getattr(ctx.identity, self.attr)) is not None

    def why(self, ctx: Ctx) -> str:
        return f"{self.attr} {getattr(ctx.identity, self.attr)!r} matches {_quoted(self.patterns)}"


class EndIdentities(NameGlobs):
    """identities: globs on the end identity; a session without one matches none of them."""

    __slots__ = ()

    def holds(self, ctx: Ctx) -> bool:
        value = ctx.identity.end_identity
        return bool(value) and self.regex.match(value) is not None

    def why(self, ctx: Ctx) -> str:
        ident = ctx.identity
        if not ident.end_identity:
            return "the session has no end identity"
        source = ident.identity_source.value if ident.identity_source else "unknown"
        return f"identity {ident.end_identity!r} ({source}) matches {_quoted(self.patterns)}"


class IdentitySources(Condition):
    """identity_sources: where the end identity came from (``none``: there is none)."""

    __slots__ = ("sources",)
    stage = "identity"

    def __init__(self, key: str, sources: frozenset[str]) -> None:
        super().__init__(key)
        self.sources = sources

    def _source(self, ctx: Ctx) -> str:
        source = ctx.identity.identity_source
        return source.value if source is not None and ctx.identity.end_identity else "none"

    def holds(self, ctx: Ctx) -> bool:
        return self._source(ctx) in self.sources

    def why(self, ctx: Ctx) -> str:
        return f"identity source {self._source(ctx)} is in {_quoted(sorted(self.sources))}"


@lru_cache(maxsize=4096)
def parse_addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_networks(texts: Iterable[str]) -> tuple[list[IPNetwork], bool, list[tuple[int, str]]]:
    """CIDR networks and ``unix`` (Unix-socket clients): (networks, unix, [(index, why)])."""
    networks: list[IPNetwork] = []
    unix = False
    bad: list[tuple[int, str]] = []
    for index, text in enumerate(texts):
        if text == "unix":
            unix = True
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            bad.append((index, f"bad CIDR {text!r}: {exc}"))
    return networks, unix, bad


def addr_in(text: str, networks: tuple[IPNetwork, ...], unix: bool) -> bool:
    """Whether a client address (an IP, or ``unix``) is in ``networks`` / ``unix``."""
    if text == "unix":
        return unix
    addr = parse_addr(text)
    return addr is not None and any(addr in net for net in networks)


class ClientAddrs(Condition):
    """client_addrs: CIDR networks, plus ``unix`` for Unix-socket clients."""

    __slots__ = ("networks", "unix")
    stage = "identity"

    def __init__(self, key: str, networks: tuple[IPNetwork, ...], unix: bool) -> None:
        super().__init__(key)
        self.networks = networks
        self.unix = unix

    def holds(self, ctx: Ctx) -> bool:
        return addr_in(ctx.identity.client_addr, self.networks, self.unix)

    def why(self, ctx: Ctx) -> str:
        text = ctx.identity.client_addr
        if text == "unix":
            return "client connected over a Unix socket"
        addr = parse_addr(text)
        nets = [str(n) for n in self.networks if addr is not None and addr in n]
        return f"client address {text} is in {', '.join(nets)}"


class Commands(Condition):
    """commands: globs on every command that executes (hidden ones included)."""

    __slots__ = ("patterns", "regex")
    stage = "shape"

    def __init__(self, key: str, patterns: tuple[str, ...], regex: re.Pattern[str]) -> None:
        super().__init__(key)
        self.patterns = patterns
        self.regex = regex

    def holds(self, ctx: Ctx) -> bool:
        stmt = ctx.stmt
        if self.regex.fullmatch(stmt.command):
            return True
        return any(self.regex.fullmatch(c) for c in stmt.effective_commands)

    def why(self, ctx: Ctx) -> str:
        stmt = ctx.stmt
        hits = sorted(
            {c for c in (stmt.command, *stmt.effective_commands) if self.regex.fullmatch(c)}
        )
        hidden = [c for c in hits if c != stmt.command]
        text = f"command {', '.join(hits)} matches {_quoted(self.patterns)}"
        if hidden:
            text += f" (inside {stmt.command})"
        return text


class Classes(Condition):
    __slots__ = ("classes",)
    stage = "shape"

    def __init__(self, key: str, classes: frozenset[str]) -> None:
        super().__init__(key)
        self.classes = classes

    def holds(self, ctx: Ctx) -> bool:
        return not self.classes.isdisjoint(ctx.stmt.classes)

    def why(self, ctx: Ctx) -> str:
        hits = sorted(self.classes & ctx.stmt.classes)
        return f"statement class {', '.join(hits)} (statement is {ctx.stmt.statement_class})"


def _schema_may_be(
    pattern: QualifiedPattern,
    rel_schema: str | None,
    search_path: tuple[str, ...] | None,
    user: str,
) -> bool:
    assert pattern.schema is not None
    if rel_schema is not None:
        return pattern.schema.fullmatch(rel_schema) is not None
    if search_path is None:
        # Unknown resolution: an unqualified reference may be any schema's table.
        return True
    for schema in (*IMPLICIT_SCHEMAS, *search_path):
        if pattern.schema.fullmatch(user if schema == "$user" else schema):
            return True
    return False


def _names_regex(patterns: tuple[QualifiedPattern, ...]) -> re.Pattern[str]:
    """One regex matching any pattern's last part: rejects most names with a single call."""
    return re.compile("|".join(f"(?:{p.name.pattern})" for p in patterns), re.DOTALL)


class Tables(Condition):
    """tables (optionally with access): some relation matches a pattern (with that access)."""

    __slots__ = ("access", "any_name", "patterns", "search_path")

    def __init__(
        self,
        key: str,
        patterns: tuple[QualifiedPattern, ...],
        access: frozenset[str] | None,
        search_path: tuple[str, ...] | None,
    ) -> None:
        super().__init__(key)
        self.patterns = patterns
        self.access = access
        self.search_path = search_path
        self.any_name = _names_regex(patterns)

    def _match(self, rel: Relation, user: str) -> QualifiedPattern | None:
        if self.access is not None and rel.access not in self.access:
            return None
        if self.any_name.fullmatch(rel.name) is None:
            return None
        for p in self.patterns:
            if p.name.fullmatch(rel.name) and (
                p.schema is None or _schema_may_be(p, rel.schema, self.search_path, user)
            ):
                return p
        return None

    def holds(self, ctx: Ctx) -> bool:
        user = ctx.identity.user
        for rel in ctx.stmt.relations:  # noqa: SIM110 (a loop: no generator frame per call)
            if self._match(rel, user) is not None:
                return True
        return False

    def why(self, ctx: Ctx) -> str:
        parts = []
        for rel in ctx.stmt.relations:
            p = self._match(rel, ctx.identity.user)
            if p is not None:
                parts.append(f"{rel.access} {rel.qualified} matches {str(p)!r}")
        return "; ".join(parts)


class Access(Condition):
    """access without tables: some relation is read / written."""

    __slots__ = ("access",)

    def __init__(self, key: str, access: frozenset[str]) -> None:
        super().__init__(key)
        self.access = access

    def holds(self, ctx: Ctx) -> bool:
        return any(rel.access in self.access for rel in ctx.stmt.relations)

    def why(self, ctx: Ctx) -> str:
        rels = [f"{r.access} {r.qualified}" for r in ctx.stmt.relations if r.access in self.access]
        return ", ".join(rels)


class Functions(Condition):
    __slots__ = ("any_name", "patterns", "search_path")

    def __init__(
        self, key: str, patterns: tuple[QualifiedPattern, ...], search_path: tuple[str, ...] | None
    ) -> None:
        super().__init__(key)
        self.patterns = patterns
        self.search_path = search_path
        self.any_name = _names_regex(patterns)

    def _match(self, function: str, user: str) -> QualifiedPattern | None:
        schema, name = split_function_name(function)
        if self.any_name.fullmatch(name) is None:
            return None
        for p in self.patterns:
            if p.name.fullmatch(name) and (
                p.schema is None or _schema_may_be(p, schema, self.search_path, user)
            ):
                return p
        return None

    def holds(self, ctx: Ctx) -> bool:
        user = ctx.identity.user
        for function in ctx.stmt.functions:  # noqa: SIM110 (as above)
            if self._match(function, user) is not None:
                return True
        return False

    def why(self, ctx: Ctx) -> str:
        hits = []
        for f in sorted(ctx.stmt.functions):
            p = self._match(f, ctx.identity.user)
            if p is not None:
                hits.append(f"{f}() matches {str(p)!r}")
        return "; ".join(hits)


class StatementFlag(Condition):
    """missing_where / opaque / role_change: a boolean fact of the statement equals the value."""

    __slots__ = ("attr", "value")
    stage = "shape"

    def __init__(self, key: str, attr: str, value: bool) -> None:
        super().__init__(key)
        self.attr = attr
        self.value = value

    def holds(self, ctx: Ctx) -> bool:
        return bool(getattr(ctx.stmt, self.attr)) is self.value

    def why(self, ctx: Ctx) -> str:
        said = _FLAG_WORDS[self.attr]
        return said[0] if self.value else said[1]


_FLAG_WORDS = {
    "missing_where": (
        "a write has no condition that limits its rows",
        "every write has a condition that limits its rows",
    ),
    "opaque": ("contains dynamic SQL that cannot be analysed", "no dynamic SQL"),
    "role_change": ("changes the current role", "does not change the current role"),
}


class MultiStatement(Condition):
    __slots__ = ("value",)
    stage = "shape"

    def __init__(self, key: str, value: bool) -> None:
        super().__init__(key)
        self.value = value

    def holds(self, ctx: Ctx) -> bool:
        return ctx.query.multi_statement is self.value

    def why(self, ctx: Ctx) -> str:
        return f"the message has {len(ctx.query.statements)} statement(s)"


class Copy(Condition):
    """copy: the statement is a COPY of one of these kinds (``true``: any COPY)."""

    __slots__ = ("kinds",)
    stage = "shape"

    def __init__(self, key: str, kinds: frozenset[str] | None) -> None:
        super().__init__(key)
        self.kinds = kinds  # None: any kind

    def holds(self, ctx: Ctx) -> bool:
        kind = ctx.stmt.copy
        return kind is not None and (self.kinds is None or kind in self.kinds)

    def why(self, ctx: Ctx) -> str:
        return f"COPY with {ctx.stmt.copy}"


class NoCopy(Condition):
    """copy: false — the statement is not a COPY."""

    __slots__ = ()
    stage = "shape"

    def holds(self, ctx: Ctx) -> bool:
        return ctx.stmt.copy is None

    def why(self, ctx: Ctx) -> str:
        return "not a COPY"


class Hours(Condition):
    __slots__ = ("windows",)

    def __init__(self, key: str, windows: tuple[HoursWindow, ...]) -> None:
        super().__init__(key)
        self.windows = windows

    def holds(self, ctx: Ctx) -> bool:
        return any(w.contains(ctx.now) for w in self.windows)

    def why(self, ctx: Ctx) -> str:
        hits = [w for w in self.windows if w.contains(ctx.now)]
        local = ctx.now.astimezone(hits[0].tz) if hits else ctx.now
        return f"{local:%a %Y-%m-%d %H:%M %Z} is within {_quoted(w.text for w in hits)}"


class SqlRegex(Condition):
    """sql_regex: the escape hatch on raw statement text (documented as such)."""

    __slots__ = ("regexes",)

    def __init__(self, key: str, regexes: tuple[re.Pattern[str], ...]) -> None:
        super().__init__(key)
        self.regexes = regexes

    def holds(self, ctx: Ctx) -> bool:
        text = ctx.stmt.text
        return any(r.search(text) for r in self.regexes)

    def why(self, ctx: Ctx) -> str:
        hits = [r.pattern for r in self.regexes if r.search(ctx.stmt.text)]
        return f"statement text matches /{'/, /'.join(hits)}/"


@dataclass(frozen=True, slots=True)
class Clause:
    """All conditions of one ``when`` or ``unless`` block; it holds when every one holds."""

    conditions: tuple[Condition, ...]
    prefilter: tuple[Condition, ...] = field(init=False)  # identity and shape conditions
    rest: tuple[Condition, ...] = field(init=False)  # what must run for every statement

    def __post_init__(self) -> None:
        pre = tuple(c for c in self.conditions if c.stage != "statement")
        object.__setattr__(self, "prefilter", pre)
        object.__setattr__(self, "rest", tuple(c for c in self.conditions if c not in pre))
