"""Shared checks for YAML policy-like files: every problem collected at its exact key."""

from __future__ import annotations

from typing import Any

from proxy import yamlsrc
from proxy.errors import SourceProblem
from proxy.hints import did_you_mean


class Problems:
    """Collects problems for one file."""

    def __init__(self, out: list[SourceProblem]) -> None:
        self.out = out

    def at(self, container: Any, key: Any, message: str, path: str = "") -> None:
        self.out.append(yamlsrc.problem(container, key, message, path=path))


def check_keys(
    problems: Problems, data: Any, allowed: tuple[str, ...], path: str, what: str
) -> None:
    for key in data:
        if key not in allowed:
            tip = did_you_mean(str(key), allowed) or f" (known: {', '.join(allowed)})"
            problems.at(data, key, f"unknown {what} key {key!r}{tip}", path)


def one_of(
    problems: Problems, data: Any, key: str, choices: tuple[str, ...], path: str
) -> str | None:
    value = data[key]
    if not isinstance(value, str) or value not in choices:
        problems.at(data, key, f"{value!r} is not one of {', '.join(choices)}", path)
        return None
    return value


def string_list(problems: Problems, data: Any, key: str, path: str) -> list[tuple[Any, Any, str]]:
    """A string or a list of strings, each with where it was written: (container, key, text)."""
    value = data[key]
    if isinstance(value, str):
        return [(data, key, value)]
    if isinstance(value, list) and value:
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append((value, i, item))
            else:
                problems.at(value, i, f"expected a string, got {type(item).__name__}", path)
        return out
    problems.at(data, key, "expected a string or a non-empty list of strings", path)
    return []


def bool_value(problems: Problems, data: Any, key: str, path: str) -> bool | None:
    value = data[key]
    if not isinstance(value, bool):
        problems.at(data, key, f"expected true or false, got {value!r}", path)
        return None
    return value
