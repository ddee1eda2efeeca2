"""The `review` action: loading (every problem at file:line), strength, monitor mode, and the
live proxy's safe default while it cannot hold statements (a review is refused as a block)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.errors import PolicyError
from proxy.identity import Identity
from proxy.policy.engine import NOT_HELD_SUFFIX, Policy
from proxy.policy.loader import load_policy
from proxy.sql.extract import analyze
from proxy.sql.facts import ParserSettings

POLICY = """
version: 1
groups:
  dba: [alice, bob]
  oncall: [dave]
defaults:
  break_glass: [oncall]
rules:
  - id: review-deletes
    when: {commands: [DELETE]}
    action: review
    message: Deletes need a second pair of eyes.
    review:
      approvers: {groups: [dba], users: [carol]}
      approvals: 2
      timeout: 10m
      reason_required: true
  - id: ticket-truncate
    when: {commands: ["TRUNCATE TABLE"]}
    action: review
    review:
      approvers: {users: [carol]}
      mode: ticket
      ticket_valid: 30m
  - id: flag-updates
    when: {commands: [UPDATE, DELETE]}
    action: flag
  - id: no-drops
    when: {commands: ["DROP *"]}
    action: block
  - id: review-drops
    when: {commands: ["DROP TABLE"]}
    action: review
    review: {approvers: {users: [carol]}}
"""

WHO = Identity(user="app", database="app", client_addr="127.0.0.1")


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def decide(policy: Policy, sql: str):  # type: ignore[no-untyped-def]
    return policy.evaluate(WHO, analyze(sql, ParserSettings()))


def test_review_settings_are_compiled_with_their_groups(tmp_path: Path) -> None:
    policy = load_policy([write(tmp_path, POLICY)], holding=True)
    decision = decide(policy, "DELETE FROM t WHERE id = 1")
    assert decision.action == "review" and decision.intended == "review"
    spec = decision.review
    assert spec is not None
    assert spec.rule_id == "review-deletes"
    assert spec.users == frozenset({"carol"})
    assert spec.groups == (("dba", frozenset({"alice", "bob"})),)
    assert (spec.approvals, spec.timeout, spec.reason_required) == (2, 600.0, True)
    assert spec.mode == "hold" and spec.on_timeout == "block"
    assert spec.break_glass == (("oncall", frozenset({"dave"})),)
    assert spec.source.endswith("p.yaml:8")
    assert spec.allows("alice", frozenset()) and spec.allows("carol", frozenset())
    assert spec.allows("zoe", frozenset({"dba"}))  # a group given by the approver's token
    assert not spec.allows("dave", frozenset())
    assert spec.may_break_glass("dave", frozenset()) and not spec.may_break_glass(
        "alice", frozenset()
    )
    assert decision.message == "Deletes need a second pair of eyes."
    assert decision.as_audit()["review_rule"] == "review-deletes"
    ticket = decide(policy, "TRUNCATE t").review
    assert ticket is not None and (ticket.mode, ticket.ticket_valid) == ("ticket", 1800.0)
    assert (ticket.approvals, ticket.timeout, ticket.reason_required) == (1, 300.0, False)


def test_review_sits_between_flag_and_block(tmp_path: Path) -> None:
    policy = load_policy([write(tmp_path, POLICY)], holding=True)
    # DELETE matches review-deletes and flag-updates: review is stronger than flag.
    assert decide(policy, "DELETE FROM t WHERE id = 1").action == "review"
    assert decide(policy, "UPDATE t SET a = 1 WHERE id = 1").action == "flag"
    # DROP TABLE matches no-drops and review-drops: block is stronger than review.
    dropped = decide(policy, "DROP TABLE t")
    assert dropped.action == "block" and dropped.review is None


def test_without_holding_a_review_is_enforced_as_a_block_saying_why(tmp_path: Path) -> None:
    """A caller that cannot hold statements (holding=False) gets a block, saying why."""
    policy = load_policy([write(tmp_path, POLICY)], holding=False)
    decision = decide(policy, "DELETE FROM t WHERE id = 1")
    assert decision.action == "block"
    assert decision.intended == "review"
    assert decision.review is not None  # what the policy asked for stays visible
    assert decision.message == "Deletes need a second pair of eyes." + NOT_HELD_SUFFIX
    assert decision.sqlstate == "42501"
    assert "enforced as block" in decision.reason


def test_monitor_mode_records_a_would_be_review_as_a_flag(tmp_path: Path) -> None:
    text = POLICY.replace("  break_glass: [oncall]", "  break_glass: [oncall]\n  mode: monitor")
    policy = load_policy([write(tmp_path, text)], holding=True)
    decision = decide(policy, "DELETE FROM t WHERE id = 1")
    assert (decision.action, decision.intended, decision.mode) == ("flag", "review", "monitor")
    assert decision.review is None  # nothing is held in monitor mode
    assert decision.reason.startswith("monitor mode, would review:")


def test_every_problem_is_located(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        """
        version: 1
        groups:
          dba: [alice]
        defaults:
          break_glass: [on-call]
        rules:
          - id: a
            when: {commands: [DELETE]}
            action: review
          - id: b
            when: {commands: [DELETE]}
            action: review
            review:
              approvers: {groups: [dbas], people: [x]}
              approvals: 0
              timeout: forever
              self_approval: true
              on_timeout: allow
              ticket_valid: 5m
              mode: later
          - id: c
            when: {commands: [DELETE]}
            action: block
            review: {approvers: {users: [carol]}}
          - id: d
            action: review
            review: {approvers: {}}
        """,
    )
    with pytest.raises(PolicyError) as info:
        load_policy([bad])
    got = [str(p).removeprefix(f"{bad}:") for p in info.value.problems]
    assert got == [
        "5:17: defaults.break_glass: unknown group 'on-call' (define it under the top-level "
        "groups:)",
        "7:5: rules[a]: a review rule needs review: {approvers: …}",
        "14:28: rules[b].review.approvers.groups: unknown group 'dbas'; did you mean 'dba'?",
        "14:35: rules[b].review.approvers: unknown approvers key 'people' (known: users, groups)",
        "15:7: rules[b].review.approvals: approvals must be a whole number from 1 to 10",
        "16:7: rules[b].review.timeout: expected a duration such as 30s, got 'forever'",
        "17:7: rules[b].review.self_approval: self_approval: true is not supported: the "
        "requester never counts as an approver of their own statement",
        "18:7: rules[b].review.on_timeout: on_timeout 'allow' is not supported; a statement "
        "nobody approved in time is refused (block)",
        "19:7: rules[b].review.ticket_valid: ticket_valid applies only to mode: ticket",
        "20:7: rules[b].review.mode: 'later' is not one of hold, ticket",
        "24:5: rules[c]: review settings apply only to action: review",
        "27:14: rules[d].review: approvers must be a mapping with users and/or groups",
    ]


def test_a_group_defined_twice_names_the_first(tmp_path: Path) -> None:
    one = write(tmp_path, "version: 1\ngroups:\n  dba: [alice]\n", "one.yaml")
    two = write(tmp_path, "version: 1\ngroups:\n  dba: [bob]\n", "two.yaml")
    with pytest.raises(PolicyError) as info:
        load_policy([one, two])
    assert [str(p) for p in info.value.problems] == [
        f"{two}:3:3: groups.dba: group 'dba' is already defined at {one}:3:3"
    ]


def test_policy_test_explains_a_review(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, POLICY)
    assert main(["policy", "test", "--policy", str(path), "DELETE FROM t WHERE id = 1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("decision: REVIEW\n")
    assert "review:   2 approvals from group dba, carol within 10m, reason required\n" in out
    assert "  review review-deletes  [medium]" in out
    cases = write(
        tmp_path,
        """
        - {id: del, sql: "DELETE FROM t WHERE id = 1", expect: review,
           expect_rules: [review-deletes]}
        - {id: upd, sql: "UPDATE t SET a = 1 WHERE id = 1", expect: review}
        """,
        "c.yaml",
    )
    assert main(["policy", "test", "--policy", str(path), "--cases", str(cases)]) == 1
    out = capsys.readouterr().out
    assert "PASS  del: expected review, got review" in out
    assert "FAIL  upd: expected review, got flag" in out
