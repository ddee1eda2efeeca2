"""Validate and compile one policy file's ``defaults`` and ``rules`` into engine values.

Every problem is collected (never just the first) as a :class:`SourceProblem` at the exact
key or list item, labelled by rule id, so ``pgwarden policy check`` shows them all at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

from proxy import yamlsrc
from proxy.policy.conditions import (
    Access,
    Classes,
    Clause,
    ClientAddrs,
    Commands,
    Condition,
    Copy,
    EndIdentities,
    Functions,
    Hours,
    IdentitySources,
    MultiStatement,
    NameGlobs,
    NoCopy,
    SqlRegex,
    StatementFlag,
    Tables,
    parse_networks,
)
from proxy.policy.decision import ACTIONS, Action, Mode, RowLimit, RuleMatch, Severity
from proxy.policy.engine import Defaults, Rule
from proxy.policy.hours import HoursError, HoursWindow, parse_hours
from proxy.policy.names import (
    PatternError,
    QualifiedPattern,
    compile_command_globs,
    compile_name_globs,
    compile_qualified,
)
from proxy.policy.review import ReviewCompiler, ReviewSpec
from proxy.policy.validate import Problems, check_keys
from proxy.policy.validate import bool_value as _bool
from proxy.policy.validate import one_of as _one_of
from proxy.policy.validate import string_list as _string_list

DEFAULT_ACTIONS = ("allow", "flag", "block")  # defaults.action: a review needs approvers
SEVERITIES = ("low", "medium", "high", "critical")
MODES = ("enforce", "monitor")
CLASSES = ("read", "write", "ddl", "role", "function", "misc")
COPY_KINDS = ("program", "file", "stdin", "stdout")
ACCESS = ("read", "write")
RESERVED_IDS = ("unparsable", "default", "identity-guard")
IDENTITY_SOURCES = ("certificate", "proxy_user", "client_supplied", "none")

TOP_KEYS = ("version", "defaults", "include", "groups", "rules")
DEFAULT_KEYS = ("action", "on_unparsable", "mode", "search_path", "message", "break_glass")
RULE_KEYS = (
    "id",
    "description",
    "when",
    "unless",
    "action",
    "severity",
    "message",
    "sqlstate",
    "notify",
    "review",
    "max_rows",
)
# What max_rows can count: the command tag of these reports the rows they changed.
GUARDED_COMMANDS = ("UPDATE", "DELETE", "MERGE", "INSERT")
CONDITION_KEYS = (
    "users",
    "databases",
    "applications",
    "identities",
    "identity",
    "identity_sources",
    "client_addrs",
    "commands",
    "classes",
    "tables",
    "access",
    "functions",
    "missing_where",
    "multi_statement",
    "opaque",
    "role_change",
    "copy",
    "hours",
    "sql_regex",
)
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
_IDENTITY_ATTRS = {
    "users": "user",
    "databases": "database",
    "applications": "application_name",
    "identities": "end_identity",
    "identity": "end_identity",
}
_FLAG_ATTRS = {"missing_where": "missing_where", "opaque": "opaque", "role_change": "role_change"}


def compile_defaults(problems: Problems, data: Any, source: str) -> Defaults | None:
    if not isinstance(data, dict):
        problems.at(data, None, "defaults must be a mapping")
        return None
    check_keys(problems, data, DEFAULT_KEYS, "defaults", "defaults")
    action: Action = "allow"
    on_unparsable: Action = "block"
    mode: Mode = "enforce"
    search_path: tuple[str, ...] | None = None
    message = ""
    break_glass: tuple[str, ...] = ()
    if "action" in data:
        action = cast(Action, _one_of(problems, data, "action", DEFAULT_ACTIONS, "defaults.action"))
    if "on_unparsable" in data:
        on_unparsable = cast(
            Action,
            _one_of(problems, data, "on_unparsable", ("block", "flag"), "defaults.on_unparsable"),
        )
    if "mode" in data:
        mode = cast(Mode, _one_of(problems, data, "mode", MODES, "defaults.mode"))
    if "search_path" in data:
        items = _string_list(problems, data, "search_path", "defaults.search_path")
        names = []
        for container, key, text in items:
            try:
                names.append(_schema_name(text))
            except PatternError as exc:
                problems.at(container, key, str(exc), "defaults.search_path")
        search_path = tuple(names)
    if "message" in data:
        if isinstance(data["message"], str):
            message = data["message"]
        else:
            problems.at(data, "message", "expected a string", "defaults.message")
    if "break_glass" in data:
        items = _string_list(problems, data, "break_glass", "defaults.break_glass")
        break_glass = tuple(text for _c, _k, text in items)
    return Defaults(action, on_unparsable, mode, search_path, message, source, break_glass)


def _schema_name(text: str) -> str:
    if text.strip() == "$user":
        return "$user"
    from proxy.policy.names import split_identifier

    parts = split_identifier(text)
    if len(parts) != 1:
        raise PatternError(f"{text!r} is not a schema name")
    return parts[0]


def compile_rule(
    problems: Problems,
    rules: Any,
    index: int,
    search_path: tuple[str, ...] | None,
    load_index: int,
    reviews: ReviewCompiler | None = None,
) -> Rule | None:
    data = rules[index]
    line, _col = yamlsrc.where(rules, index)
    if not isinstance(data, dict):
        problems.at(rules, index, "a rule must be a mapping with id, when and action")
        return None
    rule_id = data.get("id")
    path = f"rules[{rule_id}]" if isinstance(rule_id, str) else f"rules[{index}]"
    errors_before = len(problems.out)
    check_keys(problems, data, RULE_KEYS, path, "rule")
    if "id" not in data:
        problems.at(rules, index, "rule has no id", path)
    elif not isinstance(rule_id, str) or not _RULE_ID.fullmatch(rule_id):
        problems.at(data, "id", "id must be letters, digits, '_', '.', ':' or '-'", path)
    elif rule_id in RESERVED_IDS:
        problems.at(data, "id", f"id {rule_id!r} is reserved for pgwarden's own decisions", path)
    action: Any = None
    if "action" not in data:
        problems.at(rules, index, "rule has no action (allow, flag, review or block)", path)
    else:
        action = _one_of(problems, data, "action", ACTIONS, f"{path}.action")
    severity: Any = "medium"
    if "severity" in data:
        severity = _one_of(problems, data, "severity", SEVERITIES, f"{path}.severity")
    description = _text(problems, data, "description", path)
    message = _text(problems, data, "message", path)
    sqlstate = "42501"
    if "sqlstate" in data:
        value = data["sqlstate"]
        if isinstance(value, str) and _SQLSTATE.fullmatch(value):
            sqlstate = value
        else:
            problems.at(data, "sqlstate", "sqlstate must be 5 characters 0-9/A-Z, quoted", path)
    notify = False
    if "notify" in data:
        notify = bool(_bool(problems, data, "notify", f"{path}.notify"))
        if notify and action is not None and action != "flag":
            problems.at(data, "notify", "notify applies only to flag rules", path)
    source = f"{data.file}:{line}" if isinstance(data, yamlsrc.MarkedDict) else str(line)
    review: ReviewSpec | None = None
    if action == "review":
        if "review" not in data:
            problems.at(rules, index, "a review rule needs review: {approvers: …}", path)
        elif isinstance(rule_id, str):
            compiler = reviews or ReviewCompiler(problems, {}, ())
            review = compiler.compile(data, rule_id, path, source)
    elif "review" in data and action is not None:
        problems.at(data, "review", "review settings apply only to action: review", path)
    max_rows = _max_rows(problems, data, path, action) if "max_rows" in data else None
    when = _clause(problems, data, "when", path, search_path) if "when" in data else Clause(())
    unless = _clause(problems, data, "unless", path, search_path) if "unless" in data else None
    if len(problems.out) != errors_before or when is None or action is None:
        return None
    if not message:
        verb = {"block": "blocked", "flag": "flagged", "allow": "allowed"}.get(action)
        message = description or (
            f"statement {verb} by pgwarden policy rule {rule_id}"
            if verb
            else f"statement needs approval under pgwarden policy rule {rule_id}"
        )
    limit = None
    if max_rows is not None:
        if "message" not in data:
            message = description or (
                f"statement changes more rows than pgwarden policy rule {rule_id} allows"
            )
        limit = RowLimit(max_rows, cast(str, rule_id), message, sqlstate)
    match = RuleMatch(
        cast(str, rule_id),
        cast(Action, action),
        cast(Severity, severity),
        source,
        message,
        sqlstate,
        notify,
        review,
        limit,
    )
    return Rule(
        cast(str, rule_id),
        cast(Action, action),
        cast(Severity, severity),
        when,
        unless,
        match,
        description,
        load_index,
    )


def _max_rows(problems: Problems, data: Any, path: str, action: Any) -> int | None:
    """``max_rows: N`` of an allow or flag rule whose commands are all ones a command tag
    counts; anything else is an error at the key."""
    value = data["max_rows"]
    where = f"{path}.max_rows"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.at(data, "max_rows", "max_rows must be a positive whole number of rows", where)
        return None
    if action is not None and action not in ("allow", "flag"):
        problems.at(
            data,
            "max_rows",
            f"max_rows applies to rules that let the statement run (allow or flag), not {action}",
            where,
        )
        return None
    when = data.get("when")
    commands = when.get("commands") if isinstance(when, dict) else None
    if not isinstance(commands, list) or not commands:
        problems.at(
            data,
            "max_rows",
            "max_rows needs when.commands listing the guarded commands "
            f"({', '.join(GUARDED_COMMANDS)})",
            where,
        )
        return None
    wrong = [c for c in commands if not isinstance(c, str) or c.upper() not in GUARDED_COMMANDS]
    if wrong:
        problems.at(
            data,
            "max_rows",
            f"max_rows guards only {', '.join(GUARDED_COMMANDS)}: their command tag counts the "
            f"rows changed; not {', '.join(map(str, wrong))}",
            where,
        )
        return None
    return value


def _text(problems: Problems, data: Any, key: str, path: str) -> str:
    if key not in data:
        return ""
    value = data[key]
    if not isinstance(value, str):
        problems.at(data, key, "expected a string", f"{path}.{key}")
        return ""
    return " ".join(value.split())


def _clause(
    problems: Problems, rule: Any, key: str, rule_path: str, search_path: tuple[str, ...] | None
) -> Clause | None:
    data = rule[key]
    path = f"{rule_path}.{key}"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.at(rule, key, f"{key} must be a mapping of conditions", path)
        return None
    check_keys(problems, data, CONDITION_KEYS, path, "condition")
    if key == "unless" and not data:
        problems.at(rule, key, "unless has no conditions (it would exempt everything)", path)
    if "identity" in data and "identities" in data:
        problems.at(
            data, "identity", "identity and identities are the same condition: use one", path
        )
    access: frozenset[str] | None = None
    if "access" in data:
        kinds = _choices(problems, data, "access", ACCESS, f"{path}.access")
        access = frozenset(kinds) if kinds is not None else None
    conditions: list[Condition] = []
    for name in CONDITION_KEYS:
        if name not in data or name == "access":
            continue
        compiler = _COMPILERS[name]
        condition = compiler(problems, data, name, f"{path}.{name}", access, search_path)
        if condition is not None:
            conditions.append(condition)
    if access is not None and "tables" not in data:
        conditions.append(Access("access", access))
    # Cheap checks first: identity, then command tags, then the rest.
    order = {"identity": 0, "shape": 1, "statement": 2}
    conditions.sort(key=lambda c: (order[c.stage], c.key == "sql_regex", c.key == "hours"))
    return Clause(tuple(conditions))


def _choices(
    problems: Problems, data: Any, key: str, choices: tuple[str, ...], path: str
) -> list[str] | None:
    out = []
    ok = True
    for container, k, text in _string_list(problems, data, key, path):
        if text not in choices:
            problems.at(container, k, f"{text!r} is not one of {', '.join(choices)}", path)
            ok = False
        out.append(text)
    return out if ok and out else None


_Compiler = Callable[
    [Problems, Any, str, str, "frozenset[str] | None", "tuple[str, ...] | None"],
    "Condition | None",
]


def _c_identity(
    problems: Problems, data: Any, key: str, path: str, _a: Any, _s: Any
) -> Condition | None:
    patterns: list[str] = []
    for container, k, text in _string_list(problems, data, key, path):
        try:
            compile_name_globs([text])
            patterns.append(text)
        except PatternError as exc:
            problems.at(container, k, str(exc), path)
    if not patterns:
        return None
    kind = EndIdentities if key in ("identities", "identity") else NameGlobs
    return kind(key, _IDENTITY_ATTRS[key], tuple(patterns), compile_name_globs(patterns))


def _c_identity_sources(
    problems: Problems, data: Any, key: str, path: str, _a: Any, _s: Any
) -> Condition | None:
    kinds = _choices(problems, data, key, IDENTITY_SOURCES, path)
    return IdentitySources(key, frozenset(kinds)) if kinds is not None else None


def _c_client_addrs(
    problems: Problems, data: Any, key: str, path: str, _a: Any, _s: Any
) -> Condition | None:
    items = _string_list(problems, data, key, path)
    networks, unix, bad = parse_networks(text for _c, _k, text in items)
    for index, why in bad:
        container, k, _text = items[index]
        problems.at(container, k, why, path)
    return ClientAddrs(key, tuple(networks), unix) if items and not bad else None


def _c_commands(
    problems: Problems, data: Any, key: str, path: str, _a: Any, _s: Any
) -> Condition | None:
    patterns: list[str] = []
    ok = True
    for container, k, text in _string_list(problems, data, key, path):
        try:
            compile_command_globs([text])
            patterns.append(text)
        except PatternError as exc:
            problems.at(container, k, str(exc), path)
            ok = False
    if not ok or not patterns:
        return None
    return Commands(key, tuple(patterns), compile_command_globs(patterns))


def _c_classes(
    problems: Problems, data: Any, key: str, path: str, _a: Any, _s: Any
) -> Condition | None:
    kinds = _choices(problems, data, key, CLASSES, path)
    return Classes(key, frozenset(kinds)) if kinds is not None else None


def _qualified(
    problems: Problems, data: Any, key: str, path: str
) -> tuple[QualifiedPattern, ...] | None:
    patterns = []
    items = _string_list(problems, data, key, path)
    ok = bool(items)
    for container, k, text in items:
        try:
            patterns.append(compile_qualified(text))
        except PatternError as exc:
            problems.at(container, k, f"bad {key[:-1]} pattern {text!r}: {exc}", path)
            ok = False
    return tuple(patterns) if ok else None


def _c_tables(
    problems: Problems,
    data: Any,
    key: str,
    path: str,
    access: frozenset[str] | None,
    search_path: tuple[str, ...] | None,
) -> Condition | None:
    patterns = _qualified(problems, data, key, path)
    return Tables(key, patterns, access, search_path) if patterns is not None else None


def _c_functions(
    problems: Problems,
    data: Any,
    key: str,
    path: str,
    _a: Any,
    search_path: tuple[str, ...] | None,
) -> Condition | None:
    patterns = _qualified(problems, data, key, path)
    return Functions(key, patterns, search_path) if patterns is not None else None


def _c_flag(
    problems: Problems, data: Any, key: str, path: str, _a: Any, _s: Any
) -> Condition | None:
    value = _bool(problems, data, key, path)
    return StatementFlag(key, _FLAG_ATTRS[key], value) if value is not None else None


def _c_multi(
    problems: Problems, data: Any, key: str, path: str, _a: Any, _s: Any
) -> Condition | None:
    value = _bool(problems, data, key, path)
    return MultiStatement(key, value) if value is not None else None


def _c_copy(
    problems: Problems, data: Any, key: str, path: str, _a: Any, _s: Any
) -> Condition | None:
    if isinstance(data[key], bool):
        return Copy(key, None) if data[key] else NoCopy(key)
    kinds = _choices(problems, data, key, COPY_KINDS, path)
    return Copy(key, frozenset(kinds)) if kinds is not None else None


def _c_hours(
    problems: Problems, data: Any, key: str, path: str, _a: Any, _s: Any
) -> Condition | None:
    windows: list[HoursWindow] = []
    items = _string_list(problems, data, key, path)
    ok = bool(items)
    for container, k, text in items:
        try:
            windows.append(parse_hours(text))
        except HoursError as exc:
            problems.at(container, k, f"bad hours: {exc}", path)
            ok = False
    return Hours(key, tuple(windows)) if ok else None


def _c_sql_regex(
    problems: Problems, data: Any, key: str, path: str, _a: Any, _s: Any
) -> Condition | None:
    regexes: list[re.Pattern[str]] = []
    items = _string_list(problems, data, key, path)
    ok = bool(items)
    for container, k, text in items:
        try:
            regexes.append(re.compile(text))
        except re.error as exc:
            problems.at(container, k, f"bad regex {text!r}: {exc}", path)
            ok = False
    return SqlRegex(key, tuple(regexes)) if ok else None


_COMPILERS: dict[str, _Compiler] = {
    "users": _c_identity,
    "databases": _c_identity,
    "applications": _c_identity,
    "identities": _c_identity,
    "identity": _c_identity,
    "identity_sources": _c_identity_sources,
    "client_addrs": _c_client_addrs,
    "commands": _c_commands,
    "classes": _c_classes,
    "tables": _c_tables,
    "functions": _c_functions,
    "missing_where": _c_flag,
    "opaque": _c_flag,
    "role_change": _c_flag,
    "multi_statement": _c_multi,
    "copy": _c_copy,
    "hours": _c_hours,
    "sql_regex": _c_sql_regex,
}
