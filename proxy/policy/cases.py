"""Policy test cases: SQL plus who runs it, and the decision the policy must reach.

A cases file is either a list of cases or a mapping with ``cases:`` and optional ``defaults:``
(identity fields shared by every case)::

    defaults: {user: app, database: app}
    cases:
      - id: unbounded-delete
        sql: DELETE FROM orders
        expect: block
        expect_rules: [no-unbounded-writes]

``expect_rules`` lists rule ids that must all be among the matched rules (``[]``: no rule may
match). ``policy test --cases`` and the test suite run cases through :func:`run_cases`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from proxy import yamlsrc
from proxy.errors import SourceError, SourceProblem
from proxy.identity import Identity, IdentitySource
from proxy.policy.decision import ACTIONS, Action, Decision
from proxy.policy.engine import Explanation, Policy
from proxy.policy.validate import Problems, check_keys
from proxy.sql.facts import QueryFacts

IDENTITY_KEYS = (
    "user",
    "database",
    "application",
    "client_addr",
    "identity",
    "identity_source",
    "at",
)
SOURCE_NAMES = tuple(s.value for s in IdentitySource)
CASE_KEYS = ("id", "sql", "expect", "expect_rules", *IDENTITY_KEYS)
DEFAULT_IDENTITY = Identity(user="app", database="app", client_addr="127.0.0.1")

Analyzer = Callable[[str], QueryFacts]


class CasesError(SourceError):
    """A policy cases file is invalid."""


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    sql: str
    identity: Identity
    at: datetime | None
    expect: Action
    expect_rules: tuple[str, ...] | None
    source: str  # "file:line"


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    explanation: Explanation
    failures: tuple[str, ...]  # why the expectation failed; empty when it held

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def action(self) -> Action:
        """What the policy decides; a review stays ``review`` even where this proxy enforces
        it as a block (a case tests the policy, not whether the session can hold)."""
        return case_action(self.explanation.decision)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.explanation.decision.rules)


def case_action(decision: Decision) -> Action:
    if decision.review is not None and decision.mode == "enforce":
        return "review"
    return decision.action


def parse_time(text: str) -> datetime:
    """ISO-8601; a time without offset is UTC."""
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def make_identity(
    user: str | None = None,
    database: str | None = None,
    application: str | None = None,
    client_addr: str | None = None,
    base: Identity = DEFAULT_IDENTITY,
    end_identity: str | None = None,
    identity_source: str | None = None,
) -> Identity:
    """An identity for a case; an end identity without a source is ``certificate``."""
    end = base.end_identity if end_identity is None else end_identity
    source = base.identity_source
    if identity_source is not None:
        source = IdentitySource(identity_source)
    elif end_identity is not None:
        source = IdentitySource.CERTIFICATE if end else None
    return Identity(
        user=base.user if user is None else user,
        database=base.database if database is None else database,
        application_name=base.application_name if application is None else application,
        client_addr=base.client_addr if client_addr is None else client_addr,
        end_identity=end,
        identity_source=source if end else None,
    )


def _with_fields(fields: dict[str, str], base: Identity) -> Identity:
    return make_identity(
        fields.get("user"),
        fields.get("database"),
        fields.get("application"),
        fields.get("client_addr"),
        base,
        fields.get("identity"),
        fields.get("identity_source"),
    )


def _identity_fields(
    problems: Problems, data: Any, path: str
) -> tuple[dict[str, str], datetime | None]:
    fields: dict[str, str] = {}
    at: datetime | None = None
    for key in IDENTITY_KEYS:
        if key not in data:
            continue
        value = data[key]
        if not isinstance(value, str):
            problems.at(data, key, f"{key} must be a string", path)
            continue
        if key == "at":
            try:
                at = parse_time(value)
            except ValueError:
                problems.at(data, key, f"bad time {value!r} (use ISO-8601)", path)
        elif key == "identity_source" and value not in SOURCE_NAMES:
            problems.at(data, key, f"{value!r} is not one of {', '.join(SOURCE_NAMES)}", path)
        else:
            fields[key] = value
    return fields, at


def load_cases(path: str | Path) -> tuple[Case, ...]:
    """Read a cases file; raises :class:`CasesError` with every problem."""
    try:
        data = yamlsrc.load_file(path)
    except SourceError as exc:
        raise CasesError(exc.problems) from None
    out: list[SourceProblem] = []
    problems = Problems(out)
    base = DEFAULT_IDENTITY
    base_at: datetime | None = None
    if isinstance(data, dict):
        check_keys(problems, data, ("defaults", "cases"), "", "cases-file")
        shared = data.get("defaults", {})
        if isinstance(shared, dict):
            check_keys(problems, shared, IDENTITY_KEYS, "defaults", "defaults")
            fields, base_at = _identity_fields(problems, shared, "defaults")
            base = _with_fields(fields, DEFAULT_IDENTITY)
        else:
            problems.at(data, "defaults", "defaults must be a mapping of identity fields")
        items = data.get("cases")
        where: Any = data
    else:
        items = data
        where = None
    if not isinstance(items, list) or not items:
        if where is not None and "cases" in where:
            problems.at(where, "cases", "cases must be a non-empty list")
        else:
            message = "expected a list of cases (or a mapping with cases: [...])"
            out.append(SourceProblem(str(path), 1, 1, message))
        raise CasesError(out)
    cases: list[Case] = []
    seen_ids: dict[str, int] = {}
    for index, item in enumerate(items):
        line, _col = yamlsrc.where(items, index)
        if not isinstance(item, dict):
            problems.at(items, index, "a case is a mapping with sql and expect")
            continue
        case_id = item.get("id", f"case-{index + 1}")
        label = f"cases[{case_id}]"
        before = len(out)
        check_keys(problems, item, CASE_KEYS, label, "case")
        if not isinstance(case_id, str | int):
            problems.at(item, "id", "id must be a string", label)
        elif str(case_id) in seen_ids:
            problems.at(item, "id", f"duplicate case id {case_id!r}", label)
        seen_ids[str(case_id)] = line
        sql = item.get("sql")
        if not isinstance(sql, str):
            container, key = (item, "sql") if "sql" in item else (items, index)
            problems.at(container, key, "case needs sql: a string", label)
        expect = item.get("expect")
        if expect not in ACTIONS:
            container, key = (item, "expect") if "expect" in item else (items, index)
            problems.at(container, key, f"expect must be one of {', '.join(ACTIONS)}", label)
        expect_rules: tuple[str, ...] | None = None
        if "expect_rules" in item:
            value = item["expect_rules"]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                expect_rules = tuple(value)
            else:
                problems.at(item, "expect_rules", "expect_rules must be a list of rule ids", label)
        fields, at = _identity_fields(problems, item, label)
        if len(out) != before:
            continue
        cases.append(
            Case(
                id=str(case_id),
                sql=cast(str, sql),
                identity=_with_fields(fields, base),
                at=at or base_at,
                expect=cast(Action, expect),
                expect_rules=expect_rules,
                source=f"{path}:{line}",
            )
        )
    if out:
        raise CasesError(sorted(out, key=lambda p: (p.line, p.col)))
    return tuple(cases)


def run_case(policy: Policy, case: Case, analyze: Analyzer) -> CaseResult:
    explanation = policy.explain(case.identity, analyze(case.sql), case.at)
    decision = explanation.decision
    failures: list[str] = []
    action = case_action(decision)
    if action != case.expect:
        failures.append(f"expected {case.expect}, got {action}")
    if case.expect_rules is not None:
        got = {r.id for r in decision.rules}
        if not case.expect_rules and got:
            failures.append(f"expected no rule to match, got {', '.join(sorted(got))}")
        missing = [r for r in case.expect_rules if r not in got]
        if missing:
            failures.append(f"expected rules not matched: {', '.join(missing)}")
    return CaseResult(case, explanation, tuple(failures))


def run_cases(
    policy: Policy, cases: Sequence[Case], analyze: Analyzer | None = None
) -> list[CaseResult]:
    return [run_case(policy, case, analyze or default_analyzer()) for case in cases]


def default_analyzer() -> Analyzer:
    """The facts layer with default session settings (standard_conforming_strings on, UTF8)."""
    from proxy.sql.extract import analyze
    from proxy.sql.facts import ParserSettings

    settings = ParserSettings()

    def run(text: str) -> QueryFacts:
        return analyze(text, settings)

    return run
