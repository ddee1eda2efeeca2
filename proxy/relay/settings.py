"""The parser settings the server will apply to the next message (DESIGN.md rule 8).

PostgreSQL lexes a Query or Parse with the ``standard_conforming_strings`` and
``client_encoding`` in force when the message arrives. The server reports a change only in the
ParameterStatus just before its next ReadyForQuery, so a statement pipelined right behind a
``SET standard_conforming_strings = off`` is lexed under a setting the session has not been
told about yet. :class:`ParserSettingsTracker` follows what is in flight:

* ``confirmed`` — what the server last reported (exact at every ReadyForQuery);
* after forwarding a statement that may change a parser setting (SET/RESET/SET NAMES,
  ``set_config``, RESET ALL / DISCARD ALL, dynamic SQL that cannot be analysed, or a rollback
  that may revert such a change), the settings are *unsettled* until the next ReadyForQuery;
* :meth:`candidates` then lists every combination the server might use, so the caller judges
  the message under each and keeps the strictest decision (or waits for the ReadyForQuery).

Sans-IO and pure: statements in, ReadyForQuery in, candidates out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pglast import parser as pg_parser

from proxy.sql.facts import ParserSettings, QueryFacts, StatementFacts

_NAMES = frozenset({"standard_conforming_strings", "client_encoding"})
_TX_UNDO = frozenset({"ROLLBACK", "COMMIT", "PREPARE TRANSACTION", "ROLLBACK PREPARED"})
_IDLE = ord("I")
_ON = frozenset({"on", "true", "yes", "1", "t", "y"})
_OFF = frozenset({"off", "false", "no", "0", "f", "n"})


class Effect(Enum):
    """What a statement may do to the parser settings."""

    NONE = "none"
    KNOWN = "known"  # sets them to values read from the statement
    UNKNOWN = "unknown"  # may set them to anything (or revert them)


@dataclass(frozen=True, slots=True)
class SettingsChange:
    effect: Effect
    standard_conforming_strings: bool | None = None  # None: unchanged (KNOWN) / any (UNKNOWN)
    client_encoding: str | None = None


NO_CHANGE = SettingsChange(Effect.NONE)
ANY_CHANGE = SettingsChange(Effect.UNKNOWN)


def _may_touch(stmt: StatementFacts) -> bool:
    return (
        stmt.command in ("SET", "RESET", "DISCARD ALL")
        or "set_config" in stmt.functions
        or "pg_catalog.set_config" in stmt.functions
        or stmt.opaque
    )


def statement_change(stmt: StatementFacts) -> SettingsChange:
    """What ``stmt`` may do to ``standard_conforming_strings`` / ``client_encoding``."""
    if stmt.command in _TX_UNDO:
        # Reverting the transaction reverts its SETs; the caller adds the transaction's
        # history to the candidates.
        return SettingsChange(Effect.UNKNOWN) if stmt.command != "COMMIT" else NO_CHANGE
    if not _may_touch(stmt):
        return NO_CHANGE
    if stmt.opaque or stmt.command == "DISCARD ALL":
        return ANY_CHANGE
    try:
        tree = json.loads(pg_parser.parse_sql_json(stmt.text))
    except Exception:  # the facts layer parsed it; anything else here is unknown
        return ANY_CHANGE
    change = NO_CHANGE
    for raw in tree.get("stmts", ()):
        change = _merge(change, _node_change(raw.get("stmt", {})))
    return change


def _node_change(node: dict[str, Any]) -> SettingsChange:
    body = node.get("VariableSetStmt")
    if body is not None:
        kind = body.get("kind")
        if kind == "VAR_RESET_ALL":
            return ANY_CHANGE
        name = str(body.get("name", "")).lower()
        if name not in _NAMES:
            return NO_CHANGE
        args = body.get("args") or []
        value = _const(args[0]) if kind == "VAR_SET_VALUE" and len(args) == 1 else None
        return _named(name, value)
    calls = list(_set_config_calls(node))
    change = NO_CHANGE
    for args in calls:
        setting = _const(args[0]) if args else None
        if setting is None:
            return ANY_CHANGE
        if setting.lower() in _NAMES:
            value = _const(args[1]) if len(args) > 1 else None
            change = _merge(change, _named(setting.lower(), value))
    return change


def _named(name: str, value: str | None) -> SettingsChange:
    if value is None:
        return ANY_CHANGE
    if name == "standard_conforming_strings":
        lowered = value.lower()
        if lowered in _ON:
            return SettingsChange(Effect.KNOWN, standard_conforming_strings=True)
        if lowered in _OFF:
            return SettingsChange(Effect.KNOWN, standard_conforming_strings=False)
        return NO_CHANGE  # the server rejects the value
    return SettingsChange(Effect.KNOWN, client_encoding=value)


def _merge(a: SettingsChange, b: SettingsChange) -> SettingsChange:
    if a.effect is Effect.UNKNOWN or b.effect is Effect.NONE:
        return a
    if b.effect is Effect.UNKNOWN or a.effect is Effect.NONE:
        return b
    return SettingsChange(
        Effect.KNOWN,
        b.standard_conforming_strings
        if b.standard_conforming_strings is not None
        else a.standard_conforming_strings,
        b.client_encoding if b.client_encoding is not None else a.client_encoding,
    )


def _const(node: Any) -> str | None:
    if not isinstance(node, dict):
        return None
    const = node.get("A_Const")
    if const is None:
        cast = node.get("TypeCast")
        return _const(cast.get("arg")) if isinstance(cast, dict) else None
    for key in ("sval", "boolval", "ival"):
        if key in const:
            inner = const[key]
            if key == "sval":
                return str(inner.get("sval", ""))
            if key == "boolval":
                return "on" if inner.get("boolval") else "off"
            return str(inner.get("ival", 0))
    return None


def _set_config_calls(node: Any) -> Any:
    """Argument lists of every ``set_config(…)`` call in a parse tree."""
    if isinstance(node, dict):
        call = node.get("FuncCall")
        if isinstance(call, dict):
            names = [n.get("String", {}).get("sval", "") for n in call.get("funcname", [])]
            if names and names[-1].lower() == "set_config":
                yield call.get("args") or []
        for value in node.values():
            yield from _set_config_calls(value)
    elif isinstance(node, list):
        for item in node:
            yield from _set_config_calls(item)


class ParserSettingsTracker:
    """The session's view of the lexer settings, including what is still in flight."""

    __slots__ = ("_encodings", "_history", "_scs", "_unknown", "confirmed", "unsettled")

    def __init__(self) -> None:
        self.confirmed = ParserSettings()
        self.unsettled = False
        # Small tuples, not sets: an idle session then holds no container of its own here.
        self._scs: tuple[bool, ...] = ()
        self._encodings: tuple[str, ...] = ()
        self._unknown = False
        # Settings seen since the transaction began: a rollback may return to any of them.
        self._history: tuple[ParserSettings, ...] = ()

    def reported(self, name: str, value: str) -> None:
        """A ParameterStatus from the server."""
        if name == "standard_conforming_strings":
            self.confirmed = ParserSettings(value == "on", self.confirmed.client_encoding)
        elif name == "client_encoding":
            self.confirmed = ParserSettings(self.confirmed.standard_conforming_strings, value)

    def forwarded(self, facts: QueryFacts) -> None:
        """A Query or Execute running ``facts`` was sent to the server."""
        for stmt in facts.statements:
            change = statement_change(stmt)
            if change.effect is Effect.NONE:
                continue
            self.unsettled = True
            if change.effect is Effect.UNKNOWN:
                if stmt.command in _TX_UNDO:
                    for seen in self._history:
                        self._add_scs(seen.standard_conforming_strings)
                        self._add_encoding(seen.client_encoding)
                else:
                    self._unknown = True
                continue
            if change.standard_conforming_strings is not None:
                self._add_scs(change.standard_conforming_strings)
            if change.client_encoding is not None:
                self._add_encoding(change.client_encoding)

    def _add_scs(self, value: bool) -> None:
        if value not in self._scs:
            self._scs += (value,)

    def _add_encoding(self, value: str) -> None:
        if value not in self._encodings:
            self._encodings += (value,)

    def ready(self, tx_status: int) -> None:
        """ReadyForQuery: everything before it is settled and reported."""
        if self.unsettled:
            self.unsettled = False
            self._unknown = False
            self._scs = ()
            self._encodings = ()
        history = self._history
        if tx_status == _IDLE:
            # (by identity: an equal ParserSettings is compared by an interpreted __eq__,
            # and the login's ParameterStatus replaces the first one with an equal one)
            if len(history) != 1 or history[0] is not self.confirmed:
                self._history = (self.confirmed,)
        elif self.confirmed not in history:
            self._history = (*history, self.confirmed)

    def candidates(self) -> tuple[ParserSettings, ...]:
        """Every setting combination the server may lex the next message with; the first is
        the most likely (what the in-flight statements set if they all succeed)."""
        current = self.confirmed
        if not self.unsettled:
            return (current,)
        if self._unknown:
            # Anything is possible: the lexer-sensitive alternative that matters is
            # standard_conforming_strings off, which the facts layer refuses to read.
            scs = {True, False}
            encodings = {current.client_encoding, *self._encodings}
        else:
            scs = {current.standard_conforming_strings, *self._scs}
            encodings = {current.client_encoding, *self._encodings}
        likely = ParserSettings(
            (not current.standard_conforming_strings)
            if len(scs) > 1 and current.standard_conforming_strings in scs
            else current.standard_conforming_strings,
            next(iter(self._encodings), current.client_encoding),
        )
        out = [likely]
        for s in sorted(scs, reverse=True):
            for enc in sorted(encodings):
                option = ParserSettings(s, enc)
                if option not in out:
                    out.append(option)
        return tuple(out)
