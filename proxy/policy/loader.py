"""Load policy files (with their includes) into one :class:`Policy`, or report every problem.

Several files merge: their rules are concatenated in load order (a file's own rules, then the
rules of what it includes, in order). Only one file may set ``defaults``; a second one is an
error naming both places, so which defaults apply never depends on argument order. A file reached
twice (for example included by two others) is read once; a file that includes itself, directly
or not, is an include cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy import yamlsrc
from proxy.errors import PolicyError, SourceError, SourceProblem
from proxy.policy.engine import HOLDING_WIRED, Defaults, Policy, Rule
from proxy.policy.review import ReviewCompiler, compile_groups
from proxy.policy.rules import TOP_KEYS, compile_defaults, compile_rule
from proxy.policy.validate import Problems, check_keys

POLICY_SUFFIXES = (".yaml", ".yml")


class _Loader:
    def __init__(self) -> None:
        self.problems: list[SourceProblem] = []
        self.files: list[Path] = []
        self.dirs: list[Path] = []
        self.seen: set[Path] = set()
        self.documents: list[Any] = []  # parsed files in load order
        self.defaults_at: tuple[Any, str] | None = None  # (top mapping, "file:line:col")

    def add_path(self, path: Path, site: tuple[Any, Any] | None, stack: tuple[Path, ...]) -> None:
        """Load a file or a directory of rule files; ``site`` is the include item naming it."""
        if path.is_dir():
            self.dirs.append(path)
            entries = sorted(
                p for p in path.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file()
            )
            for entry in entries:
                self._add_file(entry, site, stack)
            return
        if not path.exists():
            self._missing(path, site)
            return
        self._add_file(path, site, stack)

    def _missing(self, path: Path, site: tuple[Any, Any] | None) -> None:
        if site is None:
            self.problems.append(SourceProblem(str(path), 0, 0, "no such file or directory"))
        else:
            self.problems.append(yamlsrc.problem(site[0], site[1], f"{path}: no such file"))

    def _add_file(self, path: Path, site: tuple[Any, Any] | None, stack: tuple[Path, ...]) -> None:
        real = path.resolve()
        if real in stack:
            chain = " -> ".join(str(p) for p in (*stack[stack.index(real) :], real))
            if site is not None:
                self.problems.append(yamlsrc.problem(site[0], site[1], f"include cycle: {chain}"))
            else:
                self.problems.append(SourceProblem(str(path), 0, 0, f"include cycle: {chain}"))
            return
        if real in self.seen:
            return
        self.seen.add(real)
        self.files.append(path)
        try:
            data = yamlsrc.load_file(path)
        except SourceError as exc:
            self.problems.extend(exc.problems)
            return
        if data is None:
            return  # an empty file is an empty policy
        if not isinstance(data, dict):
            self.problems.append(SourceProblem(str(path), 1, 1, "a policy file is a mapping"))
            return
        self.documents.append(data)
        problems = Problems(self.problems)
        check_keys(problems, data, TOP_KEYS, "", "top-level")
        if "version" in data and data["version"] != 1:
            problems.at(data, "version", f"unsupported version {data['version']!r} (expected 1)")
        if "defaults" in data:
            line, col = yamlsrc.where(data, "defaults")
            here = f"{path}:{line}:{col}"
            if self.defaults_at is not None:
                problems.at(
                    data,
                    "defaults",
                    f"defaults are already set at {self.defaults_at[1]}; only one policy file "
                    "may set defaults",
                )
            else:
                self.defaults_at = (data, here)
        if "rules" in data and not isinstance(data["rules"], list):
            problems.at(data, "rules", "rules must be a list")
        if "include" in data:
            includes = data["include"]
            if isinstance(includes, str):
                items: list[tuple[Any, Any, Any]] = [(data, "include", includes)]
            elif isinstance(includes, list):
                items = [(includes, i, v) for i, v in enumerate(includes)]
            else:
                problems.at(data, "include", "include must be a path or a list of paths")
                items = []
            for container, key, value in items:
                if not isinstance(value, str) or not value:
                    problems.at(container, key, "an include is a file or directory path")
                    continue
                target = Path(value).expanduser()
                if not target.is_absolute():
                    target = path.parent / target
                self.add_path(target, (container, key), (*stack, real))


def load_policy(paths: Sequence[str | Path], *, holding: bool = HOLDING_WIRED) -> Policy:
    """Read, validate and compile the policy; raises :class:`PolicyError` with every problem.

    ``holding``: whether the caller holds ``review`` statements for approval; when it does not,
    a review decision is enforced as ``block`` (see :data:`proxy.policy.engine.HOLDING_WIRED`).
    """
    loader = _Loader()
    for raw in paths:
        loader.add_path(Path(raw), None, ())
    problems = Problems(loader.problems)
    defaults = Defaults()
    if loader.defaults_at is not None:
        container = loader.defaults_at[0]
        line, _col = yamlsrc.where(container, "defaults")
        compiled = compile_defaults(problems, container["defaults"], f"{container.file}:{line}")
        if compiled is not None:
            defaults = compiled
    groups: dict[str, frozenset[str]] = {}
    group_sites: dict[str, str] = {}
    for document in loader.documents:
        if "groups" in document:
            groups.update(compile_groups(problems, document, group_sites))
    reviews = ReviewCompiler(problems, groups, defaults.break_glass)
    if loader.defaults_at is not None and defaults.break_glass:
        block = loader.defaults_at[0]["defaults"]
        listed = block["break_glass"]
        sites = (
            [(listed, i, name) for i, name in enumerate(listed) if isinstance(name, str)]
            if isinstance(listed, list)
            else [(block, "break_glass", listed)]
        )
        reviews.resolve(sites, "defaults.break_glass")
    rules: list[Rule] = []
    first_seen: dict[str, str] = {}
    for document in loader.documents:
        entries = document.get("rules")
        if not isinstance(entries, list):
            continue
        for index, entry in enumerate(entries):
            rule_id = entry.get("id") if isinstance(entry, dict) else None
            if isinstance(rule_id, str):
                line, col = yamlsrc.where(entry, "id")
                if rule_id in first_seen:
                    problems.at(
                        entry,
                        "id",
                        f"duplicate rule id {rule_id!r}; first defined at {first_seen[rule_id]}",
                        f"rules[{rule_id}]",
                    )
                    continue
                first_seen[rule_id] = f"{document.file}:{line}:{col}"
            rule = compile_rule(problems, entries, index, defaults.search_path, len(rules), reviews)
            if rule is not None:
                rules.append(rule)
    if loader.problems:
        order = {str(f): i for i, f in enumerate(loader.files)}
        loader.problems.sort(key=lambda p: (order.get(p.file, -1), p.line, p.col))
        raise PolicyError(loader.problems)
    uses_time = any(
        c.key == "hours"
        for r in rules
        for clause in (r.when, r.unless)
        if clause is not None
        for c in clause.conditions
    )
    return Policy(
        rules=tuple(rules),
        defaults=defaults,
        files=tuple(loader.files),
        watch_paths=(*loader.files, *loader.dirs),
        uses_time=uses_time,
        holding=holding,
        groups=tuple(sorted(groups.items())),
    )
