"""The ``review`` action's settings: who may approve a held statement, how many, for how long.

A ``review`` rule names its approvers as people (``users``) and as groups defined at the top of
a policy file (``groups: {dba: [alice, bob]}``). Person names, database user names and the names
in the approvers' token file are one namespace: the requester of a statement is its database
user, and that person never counts as an approver of their own statement.

The compiled :class:`ReviewSpec` carries the group memberships it needs, so the approvals
broker decides who may approve from the request alone, without the policy that made it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from proxy import yamlsrc
from proxy.config import parse_duration
from proxy.policy.validate import Problems, bool_value, check_keys, string_list

DEFAULT_APPROVALS = 1
DEFAULT_TIMEOUT = 300.0
DEFAULT_TICKET_VALID = 900.0
MAX_APPROVALS = 10
MAX_TIMEOUT = 24 * 3600.0
REVIEW_KEYS = (
    "approvers",
    "approvals",
    "timeout",
    "self_approval",
    "reason_required",
    "on_timeout",
    "mode",
    "ticket_valid",
)
APPROVER_KEYS = ("users", "groups")
ReviewMode = Literal["hold", "ticket"]

Groups = tuple[tuple[str, frozenset[str]], ...]  # (group, members), sorted by group name


@dataclass(frozen=True, slots=True)
class ReviewSpec:
    """What a ``review`` rule asks for; ``groups`` and ``break_glass`` carry their members."""

    rule_id: str
    users: frozenset[str]
    groups: Groups
    approvals: int = DEFAULT_APPROVALS
    timeout: float = DEFAULT_TIMEOUT
    reason_required: bool = False
    on_timeout: Literal["block"] = "block"
    mode: ReviewMode = "hold"
    ticket_valid: float = DEFAULT_TICKET_VALID  # ticket mode: how long an approval stays usable
    break_glass: Groups = ()
    source: str = ""  # "file:line" of the rule

    def allows(self, name: str, member_of: frozenset[str]) -> bool:
        """Whether ``name`` (in groups ``member_of`` by its token) may approve under this rule."""
        return name in self.users or _in_any(self.groups, name, member_of)

    def may_break_glass(self, name: str, member_of: frozenset[str]) -> bool:
        return _in_any(self.break_glass, name, member_of)

    def approver_names(self) -> tuple[str, ...]:
        """Everyone named as an approver (users and group members), for notifications."""
        names = set(self.users)
        for _group, members in self.groups:
            names |= members
        return tuple(sorted(names))

    def describe_timeout(self) -> str:
        return duration_text(self.timeout)

    def describe(self) -> str:
        """One line for ``policy test`` and notices: who, how many, how long."""
        who = [f"group {g}" for g, _m in self.groups] + sorted(self.users)
        text = (
            f"{self.approvals} approval{'s' if self.approvals != 1 else ''} from "
            f"{', '.join(who)} within {duration_text(self.timeout)}"
        )
        if self.reason_required:
            text += ", reason required"
        if self.mode == "ticket":
            text += f", ticket mode (valid {duration_text(self.ticket_valid)} once approved)"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule_id,
            "users": sorted(self.users),
            "groups": [g for g, _m in self.groups],
            "approvals": self.approvals,
            "timeout_s": self.timeout,
            "reason_required": self.reason_required,
            "on_timeout": self.on_timeout,
            "mode": self.mode,
            "ticket_valid_s": self.ticket_valid if self.mode == "ticket" else None,
            "break_glass": [g for g, _m in self.break_glass],
        }


def _in_any(groups: Groups, name: str, member_of: frozenset[str]) -> bool:
    return any(name in members or group in member_of for group, members in groups)


def duration_text(value: float) -> str:
    """``10m``, ``4m59s``, ``1h30m``, ``0s``: durations as people write them."""
    total = round(value)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{seconds}s" if seconds or not text else "")


class ReviewCompiler:
    """Compiles ``review:`` blocks against the policy's groups; problems go to ``problems``
    (a :class:`proxy.policy.rules.Problems`)."""

    def __init__(
        self, problems: Problems, groups: Mapping[str, frozenset[str]], break_glass: tuple[str, ...]
    ) -> None:
        self.problems = problems
        self.groups = groups
        self.break_glass = break_glass

    def resolve(self, names: list[tuple[Any, Any, str]], path: str) -> Groups | None:
        out: list[tuple[str, frozenset[str]]] = []
        ok = True
        for container, key, name in names:
            if name not in self.groups:
                hint = difflib.get_close_matches(name, list(self.groups), n=1)
                known = (
                    f"; did you mean {hint[0]!r}?"
                    if hint
                    else (" (define it under the top-level groups:)")
                )
                self.problems.at(container, key, f"unknown group {name!r}{known}", path)
                ok = False
                continue
            out.append((name, self.groups[name]))
        return tuple(sorted(set(out))) if ok else None

    def compile(self, rule: Any, rule_id: str, path: str, source: str) -> ReviewSpec | None:
        problems = self.problems
        data = rule["review"]
        path = f"{path}.review"
        if not isinstance(data, dict):
            problems.at(rule, "review", "review must be a mapping (approvers, approvals, …)", path)
            return None
        before = len(problems.out)
        check_keys(problems, data, REVIEW_KEYS, path, "review")
        users: frozenset[str] = frozenset()
        groups: Groups = ()
        approvers = data.get("approvers")
        if "approvers" not in data:
            problems.at(rule, "review", "review needs approvers: {users: […], groups: […]}", path)
        elif not isinstance(approvers, dict) or not approvers:
            problems.at(
                data, "approvers", "approvers must be a mapping with users and/or groups", path
            )
        else:
            check_keys(problems, approvers, APPROVER_KEYS, f"{path}.approvers", "approvers")
            if "users" in approvers:
                items = string_list(problems, approvers, "users", f"{path}.approvers.users")
                users = frozenset(text for _c, _k, text in items)
            if "groups" in approvers:
                items = string_list(problems, approvers, "groups", f"{path}.approvers.groups")
                groups = self.resolve(items, f"{path}.approvers.groups") or ()
        approvals = DEFAULT_APPROVALS
        if "approvals" in data:
            value = data["approvals"]
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not (1 <= value <= MAX_APPROVALS)
            ):
                problems.at(
                    data,
                    "approvals",
                    f"approvals must be a whole number from 1 to {MAX_APPROVALS}",
                    f"{path}.approvals",
                )
            else:
                approvals = value
        timeout = self._duration(data, "timeout", DEFAULT_TIMEOUT, path)
        ticket_valid = self._duration(data, "ticket_valid", DEFAULT_TICKET_VALID, path)
        if "self_approval" in data and bool_value(
            problems, data, "self_approval", f"{path}.self_approval"
        ):
            problems.at(
                data,
                "self_approval",
                "self_approval: true is not supported: the "
                "requester never counts as an approver of their own statement",
                f"{path}.self_approval",
            )
        reason_required = False
        if "reason_required" in data:
            reason_required = bool(
                bool_value(problems, data, "reason_required", f"{path}.reason_required")
            )
        if "on_timeout" in data and data["on_timeout"] != "block":
            problems.at(
                data,
                "on_timeout",
                f"on_timeout {data['on_timeout']!r} is not supported; "
                "a statement nobody approved in time is refused (block)",
                f"{path}.on_timeout",
            )
        mode: ReviewMode = "hold"
        if "mode" in data:
            if data["mode"] in ("hold", "ticket"):
                mode = data["mode"]
            else:
                problems.at(
                    data, "mode", f"{data['mode']!r} is not one of hold, ticket", f"{path}.mode"
                )
        if "ticket_valid" in data and mode != "ticket":
            problems.at(
                data,
                "ticket_valid",
                "ticket_valid applies only to mode: ticket",
                f"{path}.ticket_valid",
            )
        break_glass = tuple((g, self.groups.get(g, frozenset())) for g in self.break_glass)
        if len(problems.out) != before:
            return None
        if not users and not groups:
            problems.at(data, "approvers", "approvers names nobody", path)
            return None
        return ReviewSpec(
            rule_id,
            users,
            groups,
            approvals,
            timeout,
            reason_required,
            "block",
            mode,
            ticket_valid,
            break_glass,
            source,
        )

    def _duration(self, data: Any, key: str, default: float, path: str) -> float:
        if key not in data:
            return default
        try:
            value = parse_duration(data[key])
        except ValueError as exc:
            self.problems.at(data, key, str(exc), f"{path}.{key}")
            return default
        if not 1 <= value <= MAX_TIMEOUT:
            self.problems.at(data, key, f"{key} must be between 1s and 24h", f"{path}.{key}")
            return default
        return value


def compile_groups(
    problems: Problems, document: Any, seen: dict[str, str]
) -> dict[str, frozenset[str]]:
    """The ``groups:`` of one policy file; a group defined in two places is an error naming
    the first. ``seen`` maps group name → where it was defined, across files."""
    data = document["groups"]
    out: dict[str, frozenset[str]] = {}
    if not isinstance(data, dict):
        problems.at(document, "groups", "groups must map a group name to a list of people")
        return out
    for name in data:
        line, col = yamlsrc.where(data, name)
        path = f"groups.{name}"
        if not isinstance(name, str) or not name:
            problems.at(data, name, "a group name is a string", path)
            continue
        if name in seen:
            problems.at(data, name, f"group {name!r} is already defined at {seen[name]}", path)
            continue
        seen[name] = f"{document.file}:{line}:{col}"
        items = string_list(problems, data, name, path)
        out[name] = frozenset(text for _c, _k, text in items)
    return out
