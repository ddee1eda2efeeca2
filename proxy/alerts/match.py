"""Alert-rule filters: the ``pgwarden logs`` vocabulary, compiled to one predicate per rule.

Every key narrows the match (AND); a key given a list matches any of its values (OR).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Event = Mapping[str, Any]
Predicate = Callable[[Event], bool]

# Keys whose value is one string or a list of strings.
STRING_KEYS = (
    "type",
    "user",
    "database",
    "application",
    "session",
    "client",
    "command",
    "table",
    "action",
    "rule",
    "sqlstate",
)
FILTER_KEYS = (*STRING_KEYS, "errors", "min_duration_ms")

# Event fields whose value is compared as is.
_PLAIN_FIELDS = {
    "type": "type",
    "user": "user",
    "database": "database",
    "application": "application_name",
    "session": "session_id",
}

# SQLSTATE classes that are not errors: success, warning, no data.
_NON_ERROR_CLASSES = frozenset({"00", "01", "02"})


def is_error(event: Event) -> bool:
    """A failed statement or login: an error message, or a SQLSTATE of an error class."""
    if event.get("error"):
        return True
    sqlstate = event.get("sqlstate")
    return bool(sqlstate) and str(sqlstate)[:2] not in _NON_ERROR_CLASSES


def _decision(event: Event) -> Mapping[str, Any]:
    decision = event.get("decision")
    return decision if isinstance(decision, Mapping) else {}


def _plain(field: str, values: frozenset[str]) -> Predicate:
    return lambda event: event.get(field) in values


def _client(values: tuple[str, ...]) -> Predicate:
    exact = frozenset(v for v in values if "/" not in v)
    networks = tuple(ipaddress.ip_network(v, strict=False) for v in values if "/" in v)

    def match(event: Event) -> bool:
        addr = event.get("client_addr")
        if not isinstance(addr, str):
            return False
        if addr in exact:
            return True
        if not networks:
            return False
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    return match


def _command(values: tuple[str, ...]) -> Predicate:
    wanted = frozenset(v.upper() for v in values)
    return lambda event: str(event.get("command") or "").upper() in wanted


def _table(values: tuple[str, ...]) -> Predicate:
    wanted = frozenset(values)

    def match(event: Event) -> bool:
        tables = event.get("tables")
        if not isinstance(tables, list):
            return False
        for table in tables:
            name = str(table)
            if name in wanted or name.rpartition(".")[2] in wanted:
                return True
        return False

    return match


def _action(values: frozenset[str]) -> Predicate:
    return lambda event: _decision(event).get("action") in values


def _rule(values: frozenset[str]) -> Predicate:
    def match(event: Event) -> bool:
        rules = _decision(event).get("rules")
        if not isinstance(rules, list):
            return False
        return any(isinstance(r, Mapping) and r.get("id") in values for r in rules)

    return match


def _sqlstate(values: tuple[str, ...]) -> Predicate:
    prefixes = tuple(v.upper() for v in values)

    def match(event: Event) -> bool:
        sqlstate = event.get("sqlstate")
        return bool(sqlstate) and str(sqlstate).upper().startswith(prefixes)

    return match


def _errors(wanted: bool) -> Predicate:
    return lambda event: is_error(event) is wanted


def _min_duration(limit: float) -> Predicate:
    def match(event: Event) -> bool:
        duration = event.get("duration_ms")
        return isinstance(duration, int | float) and duration >= limit

    return match


@dataclass(frozen=True, slots=True)
class Filter:
    """A validated filter: ``criteria`` keeps the normalized values (for display/push-down)."""

    criteria: tuple[tuple[str, Any], ...]
    predicates: tuple[Predicate, ...]

    def matches(self, event: Event) -> bool:
        return all(p(event) for p in self.predicates)


def compile_filter(criteria: Mapping[str, Any]) -> Filter:
    """Build a :class:`Filter` from normalized criteria (strings as tuples, see rules.py)."""
    predicates: list[Predicate] = []
    for key, value in criteria.items():
        if key in _PLAIN_FIELDS:
            predicates.append(_plain(_PLAIN_FIELDS[key], frozenset(value)))
        elif key == "client":
            predicates.append(_client(value))
        elif key == "command":
            predicates.append(_command(value))
        elif key == "table":
            predicates.append(_table(value))
        elif key == "action":
            predicates.append(_action(frozenset(value)))
        elif key == "rule":
            predicates.append(_rule(frozenset(value)))
        elif key == "sqlstate":
            predicates.append(_sqlstate(value))
        elif key == "errors":
            predicates.append(_errors(bool(value)))
        elif key == "min_duration_ms":
            predicates.append(_min_duration(float(value)))
        else:
            raise KeyError(key)
    return Filter(tuple(criteria.items()), tuple(predicates))
