"""The generated mutation corpus (tests/support/mutations.py) against the facts layer and the
default policy: every mutation of a blocked statement stays blocked, by the seed's rule.

A sample also runs through the proxy against a real server (tests/e2e/test_mutations_e2e.py)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import config as config_module
from proxy.gate import Gate
from proxy.identity import Identity
from proxy.policy.loader import load_policy
from proxy.sql.extract import analyze
from proxy.sql.facts import QueryFacts
from tests.support.mutations import SEEDS, mutations
from tests.test_policy_shipped import SHIPPED

MUTATIONS = mutations()
POLICY = load_policy([SHIPPED["default"]])
APP = Identity(user="app", database="app")
GATE = Gate(config_module.defaults(), None)


def session_facts(sql: str) -> QueryFacts:
    """Facts as the session sees them: SQL-level PREPARE bodies merged into EXECUTEs."""
    facts: QueryFacts = GATE.resolve_prepared(analyze(sql), {})
    return facts


def test_the_corpus_is_large_and_covers_every_seed() -> None:
    assert len(MUTATIONS) >= 300, len(MUTATIONS)
    for seed in SEEDS:
        assert sum(m.seed == seed for m in MUTATIONS) >= 10, seed.sql


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: f"{m.how}: {m.sql[:50]}")
def test_every_mutation_stays_blocked(mutation: Any) -> None:
    facts = session_facts(mutation.sql)
    assert facts.parsable, facts.parse_error or facts.unparsable_reason
    decision = POLICY.evaluate(APP, facts)
    assert decision.action == "block", f"{mutation.how}: {mutation.sql}"
    assert mutation.rule in [r.id for r in decision.rules], decision.rules
