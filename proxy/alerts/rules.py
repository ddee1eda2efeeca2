"""Alert rules from YAML, validated with every problem located as file:line:col.

::

    version: 1
    alerts:
      - id: blocked-spike
        description: Many blocked statements
        filter: {action: block}
        threshold: "count >= 20 in 1m"
        by: user
        cooldown: 10m
        severity: high
        destinations: [log, {webhook: {url: "http://…", format: slack}}]
      - id: new-shape
        filter: {type: query}
        condition: new_fingerprint
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from proxy import yamlsrc
from proxy.audit.filters import ACTIONS, EVENT_TYPES, EventFilter
from proxy.config import parse_duration
from proxy.errors import AlertRulesError, SourceError, SourceProblem

SEVERITIES = ("low", "medium", "high", "critical")
GROUP_KEYS = {
    # `by:` value -> event field
    "user": "user",
    "client_addr": "client_addr",
    "database": "database",
    "application_name": "application_name",
    "session_id": "session_id",
    "fingerprint": "fingerprint",
}
CONDITIONS = ("new_fingerprint", "each_event")  # each_event: fire for every matching event
# The `pgwarden logs` vocabulary (EventFilter fields; `type` is EventFilter.types).
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
_THRESHOLD = re.compile(r"\s*count\s*(>=|>)\s*(\d+)\s+in\s+(\S+)\s*")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_RULE_KEYS = {
    "id",
    "description",
    "filter",
    "threshold",
    "condition",
    "by",
    "cooldown",
    "severity",
    "destinations",
    "learn_for",
}


@dataclass(frozen=True, slots=True)
class Threshold:
    count: int  # fire when the window holds at least this many matching events
    window: float  # seconds
    text: str  # as written, e.g. "count >= 20 in 1m"
    window_text: str  # e.g. "1m"


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    format: Literal["json", "slack"] = "json"
    timeout: float = 5.0
    retries: int = 3
    headers: tuple[tuple[str, str], ...] = ()


Destination = Literal["log"] | Webhook


@dataclass(frozen=True, slots=True)
class AlertRule:
    id: str
    filter: EventFilter
    source: str  # "file:line" of the rule
    description: str = ""
    threshold: Threshold | None = None
    condition: str | None = None  # "new_fingerprint" or "each_event"
    by: str | None = None  # a GROUP_KEYS key
    cooldown: float = 0.0
    severity: str = "medium"
    destinations: tuple[Destination, ...] = ("log",)
    learn_for: float = 0.0  # new_fingerprint: remember shapes silently for this long first


class _Problems:
    def __init__(self) -> None:
        self.items: list[SourceProblem] = []

    def add(self, container: Any, key: Any, message: str, path: str = "") -> None:
        self.items.append(yamlsrc.problem(container, key, message, path=path))


def _duration(raw: Any, container: Any, key: Any, path: str, out: _Problems) -> float | None:
    try:
        return parse_duration(raw)
    except ValueError as exc:
        out.add(container, key, str(exc), path)
        return None


def _strings(raw: Any) -> tuple[str, ...] | None:
    if isinstance(raw, str | int) and not isinstance(raw, bool):
        return (str(raw),)
    if isinstance(raw, list) and raw and all(isinstance(v, str | int) for v in raw):
        return tuple(str(v) for v in raw)
    return None


def _filter(raw: Any, container: Any, path: str, out: _Problems) -> EventFilter | None:
    """The rule's ``filter:`` as the same :class:`EventFilter` ``pgwarden logs`` uses, so a
    rule selects exactly the events ``pgwarden logs`` shows for the same criteria."""
    if raw is None:
        return EventFilter()
    if not isinstance(raw, dict):
        out.add(container, "filter", "filter must be a mapping such as {action: block}", path)
        return None
    criteria: dict[str, Any] = {}
    ok = True
    for key, value in raw.items():
        kpath = f"{path}.{key}"
        if key not in FILTER_KEYS:
            out.add(raw, key, f"unknown filter key; use one of {', '.join(FILTER_KEYS)}", kpath)
            ok = False
        elif key in STRING_KEYS:
            values = _strings(value)
            if values is None:
                out.add(raw, key, "expected a string or a non-empty list of strings", kpath)
                ok = False
            elif key == "client" and not _valid_clients(values):
                out.add(raw, key, "expected addresses, CIDR networks or globs", kpath)
                ok = False
            elif key == "sqlstate" and not all(re.fullmatch(r"[0-9A-Z]{2,5}", v) for v in values):
                out.add(raw, key, "expected a SQLSTATE (28P01) or class prefix (28)", kpath)
                ok = False
            elif key == "type" and not set(values) <= set(EVENT_TYPES):
                out.add(raw, key, f"type must be one of {', '.join(EVENT_TYPES)}", kpath)
                ok = False
            elif key == "action" and not set(values) <= set(ACTIONS):
                out.add(raw, key, f"action must be one of {', '.join(ACTIONS)}", kpath)
                ok = False
            else:
                criteria["types" if key == "type" else key] = values
        elif key == "errors":
            if value is not True:
                out.add(raw, key, "errors: true is the only form (omit it for any outcome)", kpath)
                ok = False
            else:
                criteria[key] = True
        else:  # min_duration_ms
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                out.add(raw, key, "expected a number of milliseconds", kpath)
                ok = False
            else:
                criteria[key] = float(value)
    return EventFilter(**criteria) if ok else None


def _valid_clients(values: tuple[str, ...]) -> bool:
    for value in values:
        if "/" in value:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                return False
    return True


def parse_threshold(text: str) -> Threshold:
    """``count >= 20 in 1m`` (or ``count > 19 in 60s``)."""
    match = _THRESHOLD.fullmatch(text)
    if not match:
        raise ValueError('expected a threshold such as "count >= 20 in 1m"')
    op, number, window_text = match.groups()
    count = int(number) + (1 if op == ">" else 0)
    if count < 1:
        raise ValueError("the count must be at least 1")
    window = parse_duration(window_text)
    if window <= 0:
        raise ValueError("the window must be longer than 0s")
    return Threshold(count, window, text.strip(), window_text)


def _webhook(raw: Any, container: Any, key: Any, path: str, out: _Problems) -> Webhook | None:
    if not isinstance(raw, dict):
        out.add(container, key, "webhook needs a mapping with at least url", path)
        return None
    unknown = set(raw) - {"url", "format", "timeout", "retries", "headers"}
    for name in sorted(unknown, key=str):
        out.add(raw, name, "unknown webhook key; use url, format, timeout, retries, headers", path)
    url = raw.get("url")
    parts = urlsplit(str(url)) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        out.add(raw, "url" if "url" in raw else None, "url must be an http(s):// URL", path)
        return None
    fmt = raw.get("format", "json")
    if fmt not in ("json", "slack"):
        out.add(raw, "format", "format must be json or slack", path)
        return None
    timeout = _duration(raw.get("timeout", 5.0), raw, "timeout", path, out)
    retries = raw.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        out.add(raw, "retries", "retries must be a whole number from 0 to 10", path)
        return None
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        out.add(raw, "headers", "headers must map names to strings", path)
        return None
    if timeout is None or unknown:
        return None
    if timeout <= 0:
        out.add(raw, "timeout", "timeout must be longer than 0s", path)
        return None
    return Webhook(str(url), fmt, timeout, retries, tuple(headers.items()))


def _destinations(
    raw: Any, container: Any, path: str, out: _Problems
) -> tuple[Destination, ...] | None:
    if raw is None:
        return ("log",)
    if not isinstance(raw, list) or not raw:
        out.add(container, "destinations", "destinations must be a non-empty list", path)
        return None
    found: list[Destination] = []
    ok = True
    for index, item in enumerate(raw):
        ipath = f"{path}.destinations[{index}]"
        if item == "log":
            found.append("log")
        elif isinstance(item, dict) and set(item) == {"webhook"}:
            hook = _webhook(item["webhook"], item, "webhook", ipath, out)
            if hook is None:
                ok = False
            else:
                found.append(hook)
        else:
            out.add(raw, index, "a destination is `log` or {webhook: {url: …}}", ipath)
            ok = False
    return tuple(found) if ok else None


def _rule(
    raw: Any, alerts: Any, index: int, seen: dict[str, str], out: _Problems
) -> AlertRule | None:
    path = f"alerts[{index}]"
    if not isinstance(raw, dict):
        out.add(alerts, index, "each alert must be a mapping", path)
        return None
    before = len(out.items)
    for key in raw:
        if key not in _RULE_KEYS:
            out.add(raw, key, f"unknown key; use one of {', '.join(sorted(_RULE_KEYS))}", path)
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID.fullmatch(rule_id):
        out.add(
            raw,
            "id" if "id" in raw else None,
            "id must be a short name (letters, digits, - _ .)",
            path,
        )
        rule_id = None
    elif rule_id in seen:
        out.add(raw, "id", f"duplicate alert id (first defined at {seen[rule_id]})", path)
    line, _col = yamlsrc.where(alerts, index)
    source = f"{getattr(alerts, 'file', '')}:{line}"
    if isinstance(rule_id, str) and rule_id not in seen:
        seen[rule_id] = source
    flt = _filter(raw.get("filter"), raw, f"{path}.filter", out)

    threshold = condition = None
    if "threshold" in raw and "condition" in raw:
        out.add(raw, "condition", "use either threshold or condition, not both", path)
    elif "threshold" in raw:
        if not isinstance(raw["threshold"], str):
            out.add(raw, "threshold", 'expected text such as "count >= 20 in 1m"', path)
        else:
            try:
                threshold = parse_threshold(raw["threshold"])
            except ValueError as exc:
                out.add(raw, "threshold", str(exc), path)
    elif "condition" in raw:
        if raw["condition"] not in CONDITIONS:
            out.add(
                raw, "condition", f"unknown condition; use one of {', '.join(CONDITIONS)}", path
            )
        else:
            condition = str(raw["condition"])
    else:
        out.add(raw, None, "an alert needs a threshold or a condition", path)

    by = raw.get("by")
    if by is not None:
        if condition is not None:
            out.add(raw, "by", "by applies to thresholds only", path)
        elif by not in GROUP_KEYS:
            out.add(raw, "by", f"by must be one of {', '.join(GROUP_KEYS)}", path)

    default_cooldown = threshold.window if threshold else 0.0
    cooldown = _duration(raw.get("cooldown", default_cooldown), raw, "cooldown", path, out)
    learn_for = _duration(raw.get("learn_for", 0), raw, "learn_for", path, out)
    if "learn_for" in raw and condition != "new_fingerprint" and (condition or threshold):
        out.add(raw, "learn_for", "learn_for applies to condition: new_fingerprint", path)

    severity = raw.get("severity", "medium")
    if severity not in SEVERITIES:
        out.add(raw, "severity", f"severity must be one of {', '.join(SEVERITIES)}", path)
    description = raw.get("description", "")
    if not isinstance(description, str):
        out.add(raw, "description", "description must be text", path)
    destinations = _destinations(raw.get("destinations"), raw, path, out)

    if len(out.items) > before or rule_id is None or flt is None or destinations is None:
        return None
    assert cooldown is not None and learn_for is not None
    return AlertRule(
        id=rule_id,
        filter=flt,
        source=source,
        description=str(description),
        threshold=threshold,
        condition=condition,
        by=by,
        cooldown=cooldown,
        severity=str(severity),
        destinations=destinations,
        learn_for=learn_for,
    )


def parse_rules(data: Any, file: str, seen: dict[str, str], out: _Problems) -> list[AlertRule]:
    if not isinstance(data, dict):
        out.items.append(SourceProblem(file, 1, 1, "an alert-rules file must be a mapping"))
        return []
    for key in data:
        if key not in ("version", "alerts"):
            out.add(data, key, "unknown key; use version and alerts")
    if data.get("version") != 1:
        out.add(data, "version" if "version" in data else None, "version must be 1")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        out.add(data, "alerts" if "alerts" in data else None, "alerts must be a list")
        return []
    rules = []
    for index, raw in enumerate(alerts):
        rule = _rule(raw, alerts, index, seen, out)
        if rule is not None:
            rules.append(rule)
    return rules


def rule_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus ``*.yaml``/``*.yml`` of named directories (sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return files


def load_rules(paths: Iterable[str | Path]) -> list[AlertRule]:
    """Every rule of every file; raises :class:`AlertRulesError` listing all problems."""
    out = _Problems()
    seen: dict[str, str] = {}
    rules: list[AlertRule] = []
    for path in rule_files(paths):
        try:
            data = yamlsrc.load_file(path)
        except SourceError as exc:
            out.items.extend(exc.problems)
            continue
        rules.extend(parse_rules(data, str(path), seen, out))
    if out.items:
        raise AlertRulesError(out.items)
    return rules
