"""The shipped policies decide their case tables as written, through the real SQL analyser.

Same code path as ``pgwarden policy test --cases`` (proxy.policy.cases.run_case).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.policy.cases import Case, default_analyzer, load_cases, run_case
from proxy.policy.loader import load_policy
from proxy.sql import catalog

ROOT = Path(__file__).resolve().parent.parent / "policies"
SHIPPED = {
    "default": ROOT / "default.yaml",
    **{p.stem: p for p in sorted((ROOT / "examples").glob("*.yaml"))},
}
MIN_CASES = {"default": 10}


def cases_file(name: str) -> Path:
    return ROOT / "tests" / f"{name}.cases.yaml"


def all_cases() -> list[tuple[str, Case]]:
    return [(name, case) for name in SHIPPED for case in load_cases(cases_file(name))]


def test_every_shipped_policy_has_enough_cases() -> None:
    assert set(SHIPPED) == {
        "default",
        "read-only-analysts",
        "pii-tables",
        "strict-allow-list",
        "business-hours",
        "production-reviews",
    }
    for name in SHIPPED:
        cases = load_cases(cases_file(name))
        assert len(cases) >= MIN_CASES.get(name, 5), name
        # Each table shows every outcome the policy can produce, not just the happy path.
        assert {"allow", "block"} <= {c.expect for c in cases}, name


@pytest.mark.parametrize(("name", "case"), all_cases(), ids=lambda v: getattr(v, "id", v))
def test_shipped_case(name: str, case: Case) -> None:
    result = run_case(load_policy([SHIPPED[name]]), case, default_analyzer())
    assert result.ok, f"{case.source}: {'; '.join(result.failures)} (rules {result.rule_ids})"


def test_examples_combine_with_the_default_policy() -> None:
    combinable = [p for name, p in SHIPPED.items() if name != "strict-allow-list"]
    policy = load_policy(combinable)
    assert policy.rule_count == sum(load_policy([p]).rule_count for p in combinable)


def _default_decision(sql: str, user: str = "app") -> tuple[str, list[str]]:
    from proxy.identity import Identity
    from proxy.sql.extract import analyze

    decision = load_policy([SHIPPED["default"]]).evaluate(
        Identity(user=user, database="app"), analyze(sql)
    )
    return decision.action, [r.id for r in decision.rules]


@pytest.mark.parametrize("name", sorted(catalog.SERVER_FILE_FUNCTIONS))
def test_default_policy_blocks_every_generated_server_file_function(name: str) -> None:
    assert _default_decision(f"SELECT {name}('x')") == ("block", ["no-server-file-functions"])
    assert _default_decision(f"SELECT {name}('x')", user="postgres")[0] == "allow"


@pytest.mark.parametrize("view", sorted(catalog.VIEW_FUNCTIONS))
def test_default_policy_blocks_reading_system_views_over_server_files(
    view: tuple[str, str],
) -> None:
    action, rules = _default_decision(f"SELECT * FROM {view[0]}.{view[1]}")
    reads_files = catalog.VIEW_FUNCTIONS[view] & catalog.SERVER_FILE_FUNCTIONS
    assert (action, rules) == (
        ("block", ["no-server-file-functions"]) if reads_files else ("allow", [])
    )


@pytest.mark.parametrize("name", sorted(catalog.DYNAMIC_SQL_FUNCTIONS))
def test_default_policy_flags_every_generated_dynamic_sql_function(name: str) -> None:
    assert _default_decision(f"SELECT * FROM {name}('SELECT 1')") == ("flag", ["flag-dynamic-sql"])
