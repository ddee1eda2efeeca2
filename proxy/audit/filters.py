"""Which audit events to show: one filter shared by ``logs``, ``report`` and ``policy replay``.

:func:`add_filter_arguments` adds the flags, :meth:`EventFilter.from_args` reads them back, so
the three commands accept exactly the same selection. Repeating a flag means "any of these";
different flags must all hold. ``matches`` runs a precompiled list of checks; ``prefilter``
is a cheap test on a raw JSONL line that rejects most non-matching lines before parsing.
"""

from __future__ import annotations

import argparse
import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import orjson

from proxy.audit.timeparse import iso_z, parse_time

EVENT_TYPES = (
    "session_start",
    "query",
    "identity_claim_ignored",
    "transaction",
    "session_end",
    "auth_failure",
    "cancel",
    "alert",
    "pruned",
    "admin",
    "review_requested",
    "review_decided",
    "review_expired",
    "review_withdrawn",
    "dispatch",
    "dispatch_closed",
    "dispatch_recovery",
)
# Shown only when asked for by --type: a dispatch (audit.write_ahead) is the first half of a
# statement whose query record follows, or closes it with an outcome.
HIDDEN_TYPES = frozenset({"dispatch", "dispatch_closed"})
# Canonical lines: quotes inside strings are escaped, so these are exact.
_HIDDEN_NEEDLES = (b'"type":"dispatch",', b'"type":"dispatch_closed",')
OUTCOMES = ("unknown", "skipped")
ACTIONS = ("allow", "flag", "review", "block")
_GLOB_CHARS = frozenset("*?[")

Check = Callable[[dict[str, Any]], bool]


def _is_glob(pattern: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in pattern)


def _matcher(patterns: Iterable[str], *, fold: bool = False) -> Callable[[str], bool]:
    """One predicate for "equals one of these (or matches one of these globs)"."""
    pats = [p.lower() if fold else p for p in patterns]
    exact = frozenset(p for p in pats if not _is_glob(p))
    globs = [p for p in pats if _is_glob(p)]
    regex = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None

    def match(value: str) -> bool:
        if fold:
            value = value.lower()
        return value in exact or (regex is not None and regex.match(value) is not None)

    return match


def _field_check(key: str, patterns: tuple[str, ...], *, fold: bool = False) -> Check:
    match = _matcher(patterns, fold=fold)

    def check(event: dict[str, Any]) -> bool:
        value = event.get(key)
        return isinstance(value, str) and match(value)

    return check


def _client_check(patterns: tuple[str, ...]) -> Check:
    networks = []
    globs = []
    for pattern in patterns:
        try:
            networks.append(ipaddress.ip_network(pattern, strict=False))
        except ValueError:
            globs.append(pattern)
    glob_match = _matcher(globs) if globs else None

    def check(event: dict[str, Any]) -> bool:
        addr = event.get("client_addr")
        if not isinstance(addr, str) or not addr:
            return False
        if glob_match is not None and glob_match(addr):
            return True
        if networks:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                return False
            return any(ip.version == net.version and ip in net for net in networks)
        return False

    return check


def _action_of(event: dict[str, Any]) -> str | None:
    decision = event.get("decision")
    if isinstance(decision, dict):
        action = decision.get("action")
        return action if isinstance(action, str) else None
    return "allow" if event.get("type") == "query" else None


def _table_check(patterns: tuple[str, ...]) -> Check:
    match = _matcher(patterns, fold=True)
    # "users" also matches "public.users": people rarely type the schema.
    bare = all("." not in p for p in patterns)

    def check(event: dict[str, Any]) -> bool:
        tables = event.get("tables")
        if not isinstance(tables, list):
            return False
        for table in tables:
            if isinstance(table, str) and (
                match(table) or (bare and match(table.rpartition(".")[2]))
            ):
                return True
        return False

    return check


def _rule_check(patterns: tuple[str, ...]) -> Check:
    match = _matcher(patterns)

    def check(event: dict[str, Any]) -> bool:
        # A statement of a multi-statement message carries the rules it matched itself;
        # ``decision`` is the message's (what was enforced).
        rules = event.get("statement_rules")
        if rules is None:
            decision = event.get("decision")
            rules = decision.get("rules") if isinstance(decision, dict) else None
        if not isinstance(rules, list):
            return False
        return any(
            isinstance(rule, dict) and isinstance(rule.get("id"), str) and match(rule["id"])
            for rule in rules
        )

    return check


def _json_safe(text: str) -> bool:
    """True when ``text`` appears byte-for-byte in orjson output (nothing to escape)."""
    return all(ch not in '"\\' and ch >= " " for ch in text)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """A selection of audit events. Tuples mean "any of"; empty means "no condition"."""

    since: datetime | None = None
    until: datetime | None = None
    user: tuple[str, ...] = ()
    database: tuple[str, ...] = ()
    application: tuple[str, ...] = ()
    identity: tuple[str, ...] = ()  # glob on the end identity (events without one never match)
    client: tuple[str, ...] = ()  # IP, CIDR or glob on client_addr
    session: tuple[str, ...] = ()
    command: tuple[str, ...] = ()  # glob on command or command_tag, case-insensitive
    table: tuple[str, ...] = ()  # glob on any of tables
    action: tuple[str, ...] = ()  # decision.action: allow / flag / block
    rule: tuple[str, ...] = ()  # glob on decision.rules[].id
    errors: bool = False  # only events with a sqlstate
    sqlstate: tuple[str, ...] = ()  # exact code or class prefix ("28")
    min_duration_ms: float | None = None
    grep: str | None = None  # case-insensitive substring of statement
    types: tuple[str, ...] = ()
    outcome: tuple[str, ...] = ()  # a statement closed without completion (write_ahead)
    _checks: tuple[Check, ...] = field(default=(), init=False, repr=False, compare=False)
    _needles: tuple[tuple[bytes, ...], ...] = field(
        default=(), init=False, repr=False, compare=False
    )
    _grep_needle: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks, needles = self._compile()
        object.__setattr__(self, "_checks", tuple(checks))
        object.__setattr__(self, "_needles", tuple(needles))
        if self.grep and self.grep.isascii() and _json_safe(self.grep):
            object.__setattr__(self, "_grep_needle", self.grep.lower().encode())

    @property
    def is_empty(self) -> bool:
        """No selection given (dispatch records are still left out)."""
        return len(self._checks) == (0 if self.types or self.outcome else 1)

    def matches(self, event: dict[str, Any]) -> bool:
        for check in self._checks:  # noqa: SIM110 -- a plain loop: no generator per event
            if not check(event):
                return False
        return True

    def prefilter(self, raw: bytes) -> bool:
        """False only when the JSONL line ``raw`` cannot match; True means "parse and see"."""
        for group in self._needles:
            for needle in group:
                if needle in raw:
                    break
            else:
                return False
        if not self.types and not self.outcome:
            for needle in _HIDDEN_NEEDLES:
                if needle in raw:
                    return False
        return self._grep_needle is None or self._grep_needle in raw.lower()

    def _compile(self) -> tuple[list[Check], list[tuple[bytes, ...]]]:
        checks: list[Check] = []
        needles: list[tuple[bytes, ...]] = []

        def exact_needles(key: str, values: Iterable[str]) -> None:
            values = tuple(values)
            if values and all(not _is_glob(v) and _json_safe(v) for v in values):
                needles.append(tuple(f'"{key}":'.encode() + orjson.dumps(v) for v in values))

        if self.types:
            wanted_types = frozenset(self.types)
            checks.append(lambda e: e.get("type") in wanted_types)
            exact_needles("type", self.types)
        elif not self.outcome:
            checks.append(lambda e: e.get("type") not in HIDDEN_TYPES)
        if self.outcome:
            wanted_outcomes = frozenset(self.outcome)
            checks.append(lambda e: e.get("outcome") in wanted_outcomes)
            exact_needles("outcome", self.outcome)
        if self.since is not None:
            since = iso_z(self.since)
            checks.append(lambda e: _ts(e) >= since)
        if self.until is not None:
            until = iso_z(self.until)
            checks.append(lambda e: _ts(e) <= until)
        for key, patterns in (
            ("user", self.user),
            ("database", self.database),
            ("application_name", self.application),
            ("identity", self.identity),
            ("session_id", self.session),
        ):
            if patterns:
                checks.append(_field_check(key, patterns))
                exact_needles(key, patterns)
        if self.client:
            checks.append(_client_check(self.client))
        if self.command:
            match = _matcher(self.command, fold=True)

            def command_check(event: dict[str, Any]) -> bool:
                for key in ("command", "command_tag"):
                    value = event.get(key)
                    if isinstance(value, str) and (match(value) or match(value.split(" ", 1)[0])):
                        return True
                return False

            checks.append(command_check)
        if self.table:
            checks.append(_table_check(self.table))
        if self.action:
            wanted_actions = frozenset(self.action)
            checks.append(lambda e: _action_of(e) in wanted_actions)
            if "allow" not in wanted_actions:
                exact_needles("action", self.action)
        if self.rule:
            checks.append(_rule_check(self.rule))
        if self.errors:
            checks.append(lambda e: bool(e.get("sqlstate")))
        if self.sqlstate:
            prefixes = tuple(s.upper() for s in self.sqlstate)

            def sqlstate_check(event: dict[str, Any]) -> bool:
                value = event.get("sqlstate")
                return isinstance(value, str) and value.upper().startswith(prefixes)

            checks.append(sqlstate_check)
        if self.min_duration_ms is not None:
            floor = self.min_duration_ms

            def duration_check(event: dict[str, Any]) -> bool:
                # Only a duration measured for the statement alone says it was slow (a
                # multi-statement message's or a pipeline's figure covers more).
                if event.get("duration_scope", "statement") != "statement":
                    return False
                value = event.get("duration_ms")
                return isinstance(value, int | float) and value >= floor

            checks.append(duration_check)
        if self.grep:
            folded = self.grep.casefold()

            def grep_check(event: dict[str, Any]) -> bool:
                value = event.get("statement")
                return isinstance(value, str) and folded in value.casefold()

            checks.append(grep_check)
        return checks, needles

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EventFilter:
        """The filter described by flags added with :func:`add_filter_arguments`."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.init:
                raw = getattr(args, "filter_" + f.name, None)
                if raw is not None:
                    values[f.name] = tuple(raw) if isinstance(raw, list) else raw
        return cls(**values)


def _ts(event: dict[str, Any]) -> str:
    ts = event.get("ts")
    if not isinstance(ts, str):
        return ""
    if len(ts) == 27:
        return ts
    try:  # not our exact format: normalize so string order is time order
        return iso_z(datetime.fromisoformat(ts))
    except ValueError:
        return ""


def _time_arg(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_ms_arg(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected milliseconds such as 50, 50ms or 1.5s: {text!r}"
        )
    scale = {None: 1.0, "ms": 1.0, "s": 1000.0, "m": 60000.0}[match.group(2)]
    return float(match.group(1)) * scale


def _client_arg(text: str) -> str:
    if "/" in text:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a CIDR network: {text!r}") from None
    return text


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the event-selection flags (shared by logs, report and policy replay)."""
    group = parser.add_argument_group("event selection (repeat a flag to mean 'any of')")
    add = group.add_argument
    add(
        "--since",
        dest="filter_since",
        type=_time_arg,
        metavar="TIME",
        help="from this time: ISO-8601 (2026-11-26T07:00Z) or relative (30m, 2h, 7d)",
    )
    add(
        "--until",
        dest="filter_until",
        type=_time_arg,
        metavar="TIME",
        help="up to this time (same forms as --since)",
    )
    add(
        "--user",
        "-U",
        dest="filter_user",
        action="append",
        metavar="NAME",
        help="database user (glob allowed)",
    )
    add(
        "--database",
        "-d",
        dest="filter_database",
        action="append",
        metavar="NAME",
        help="database name (glob allowed)",
    )
    add(
        "--application",
        "--app",
        dest="filter_application",
        action="append",
        metavar="NAME",
        help="application_name (glob allowed)",
    )
    add(
        "--identity",
        dest="filter_identity",
        action="append",
        metavar="NAME",
        help="end identity behind the role: certificate subject, proxy user or trusted "
        "header (glob allowed)",
    )
    add(
        "--client",
        dest="filter_client",
        action="append",
        type=_client_arg,
        metavar="ADDR",
        help="client address: IP, CIDR (10.0.0.0/8) or glob",
    )
    add(
        "--session",
        dest="filter_session",
        action="append",
        metavar="ID",
        help="session id (glob allowed, e.g. 'a1b2*')",
    )
    add(
        "--command",
        dest="filter_command",
        action="append",
        metavar="CMD",
        help="statement command or command tag, e.g. DELETE, 'ALTER*' (case-insensitive)",
    )
    add(
        "--table",
        dest="filter_table",
        action="append",
        metavar="TABLE",
        help="a table the statement touches (glob; 'users' also matches 'public.users')",
    )
    add("--action", dest="filter_action", action="append", choices=ACTIONS, help="policy decision")
    add(
        "--rule",
        dest="filter_rule",
        action="append",
        metavar="ID",
        help="policy rule id that fired (glob allowed)",
    )
    add(
        "--errors",
        dest="filter_errors",
        action="store_true",
        default=None,
        help="only events that ended with an error (any SQLSTATE)",
    )
    add(
        "--sqlstate",
        dest="filter_sqlstate",
        action="append",
        metavar="CODE",
        help="SQLSTATE code or class prefix (42501, 28)",
    )
    add(
        "--min-duration",
        dest="filter_min_duration_ms",
        type=_duration_ms_arg,
        metavar="MS",
        help="only statements that took at least this long (50, 50ms, 1.5s)",
    )
    add(
        "--grep",
        dest="filter_grep",
        metavar="TEXT",
        help="case-insensitive substring of the statement text",
    )
    add(
        "--type",
        dest="filter_types",
        action="append",
        choices=EVENT_TYPES,
        help="event type (default: all but dispatch records)",
    )
    add(
        "--outcome",
        dest="filter_outcome",
        action="append",
        choices=OUTCOMES,
        help="statements closed without a completion (audit.write_ahead): unknown, skipped",
    )
