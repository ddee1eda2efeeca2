"""Facts about SQL statements: the values the policy engine and the audit log consume.

Produced by :mod:`proxy.sql.extract` from pglast's AST (PostgreSQL's own grammar). Immutable and
hashable so they can be cached and shared between sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Access = Literal["read", "write"]
StatementClass = Literal["read", "write", "ddl", "role", "function", "misc"]
CopyKind = Literal["stdin", "stdout", "file", "program"]


@dataclass(frozen=True, slots=True)
class Relation:
    """A relation a statement touches. Names are as PostgreSQL resolves identifiers:
    unquoted parts folded to lower case, quoted parts kept exactly."""

    schema: str | None
    name: str
    access: Access

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True, slots=True)
class RecordedText:
    """A statement's text as its audit record keeps it (``audit.statement_text``, capped at
    ``audit.statement_max``), made where a long statement was analysed (proxy.sql.recordtext).
    ``mode`` and ``limit`` are the settings it was made under; ``length`` and ``sha256`` are
    those of the whole recorded text when ``text`` is only its start (None: not capped)."""

    text: str | None
    mode: str
    limit: int
    length: int | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class StatementFacts:
    """Facts about one SQL statement (one element of a possibly multi-statement string)."""

    text: str  # the source text of this one statement
    command: str  # PostgreSQL command tag vocabulary: "SELECT", "CREATE TABLE", "ALTER ROLE"…
    statement_class: StatementClass
    # Every command that actually executes, including hidden ones: data-modifying CTEs,
    # EXPLAIN ANALYZE targets, statements inside DO bodies, the body of an EXECUTEd PREPARE.
    effective_commands: frozenset[str]
    classes: frozenset[StatementClass]  # statement_class plus the classes of hidden commands
    relations: tuple[Relation, ...]
    functions: frozenset[str]  # called functions, lower-cased, schema-qualified when written so
    missing_where: bool  # a write (anywhere inside) without a condition that limits its rows
    copy: CopyKind | None
    role_change: bool  # SET ROLE, SET SESSION AUTHORIZATION, set_config('role', …), RESET ROLE
    opaque: bool  # dynamic SQL that cannot be analysed statically
    fingerprint: str  # pglast fingerprint (hex)
    prepare_name: str | None = None  # PREPARE name AS … (SQL level)
    execute_name: str | None = None  # EXECUTE name (SQL level)
    notes: tuple[str, ...] = field(default=())  # human-readable explanations for `policy test`
    # For a SQL-level PREPARE: the facts of the stored body (what EXECUTE will run).
    body: StatementFacts | None = None
    # Some fact depends on a $n parameter's value (WHERE $1, nextval($1), set_config($1, …)):
    # judged strictly without values; proxy.sql.params re-judges with the bound ones.
    param_sensitive: bool = False
    # Sets a setting pgwarden reserves for itself (pgwarden.identity: walker.IDENTITY_SETTINGS).
    identity_change: bool = False
    # The audit record's text of a long statement, made off the event loop; not a fact.
    record: RecordedText | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class QueryFacts:
    """Facts about one message's SQL text (a Query or a Parse)."""

    text: str
    statements: tuple[StatementFacts, ...]  # empty for an empty query
    parse_error: str | None = None  # set when pglast (PostgreSQL's grammar) rejects the text
    unparsable_reason: str | None = None  # e.g. "standard_conforming_strings is off"
    # Some fact was read from a literal's value (a folded WHERE, set_config's setting name, a DO
    # body...): texts differing only in literals may have different facts. See proxy.sql.cache.
    literal_sensitive: bool = False
    # The audit record's text of ``text`` when it is long and no statement's own (a parse
    # error), made off the event loop; not a fact.
    record: RecordedText | None = field(default=None, compare=False)
    # The secret values in ``text`` (proxy.sql.redact.secret_values) when it is long, found
    # off the event loop for redacting the errors it causes; not a fact.
    secrets: tuple[str, ...] | None = field(default=None, compare=False)

    @property
    def parsable(self) -> bool:
        return self.parse_error is None and self.unparsable_reason is None

    @property
    def param_sensitive(self) -> bool:
        """Facts of some statement (or PREPARE body) depend on parameter values."""
        return any(
            s.param_sensitive or (s.body is not None and s.body.param_sensitive)
            for s in self.statements
        )

    @property
    def multi_statement(self) -> bool:
        return len(self.statements) > 1


@dataclass(frozen=True, slots=True)
class ParserSettings:
    """Session settings that change how text parses; part of the facts cache key."""

    standard_conforming_strings: bool = True
    client_encoding: str = "UTF8"
