"""The shipped policies decide their case tables as written, through the real SQL analyser.

Same code path as ``pgwarden policy test --cases`` (proxy.policy.cases.run_case).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.policy.cases import Case, default_analyzer, load_cases, run_case
from proxy.policy.loader import load_policy

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
