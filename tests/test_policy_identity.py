"""Policies on the end identity: ``identities:`` / ``identity:`` and ``identity_sources:`` in
``when`` and ``unless``, their loader errors, the engine's per-identity cache, policy test
cases, ``policy test --identity`` and ``policy replay`` of recorded identities."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from proxy.errors import PolicyError
from proxy.identity import Identity, IdentitySource
from proxy.policy.cases import load_cases, run_cases
from proxy.policy.loader import load_policy
from proxy.sql.extract import analyze

POLICY = """
rules:
  - id: no-deletes-for-interns
    when:
      commands: [DELETE]
      identities: ["intern-*", "CN=temp,*"]
    action: block
  - id: trusted-may-drop
    when:
      commands: [DROP TABLE]
    unless:
      identity_sources: [certificate, proxy_user]
      identity: ["dba-*"]
    action: block
  - id: flag-anonymous-writes
    when:
      classes: [write]
      identity_sources: [none]
    action: flag
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def who(end: str = "", source: IdentitySource | None = None) -> Identity:
    return Identity(
        user="app",
        database="app",
        client_addr="10.0.0.5",
        end_identity=end,
        identity_source=source if end else None,
    )


CERT = IdentitySource.CERTIFICATE
CLIENT = IdentitySource.CLIENT_SUPPLIED


def decide(tmp_path: Path, identity: Identity, sql: str) -> tuple[str, list[str]]:
    policy = load_policy([write(tmp_path / "p.yaml", POLICY)])
    decision = policy.evaluate(identity, analyze(sql))
    return decision.action, [r.id for r in decision.rules]


def test_identities_block_one_person_and_allow_another_on_the_same_role(tmp_path: Path) -> None:
    sql = "DELETE FROM t WHERE id = 1"
    assert decide(tmp_path, who("intern-bob", CLIENT), sql)[0] == "block"
    assert decide(tmp_path, who("CN=temp,O=Example", CERT), sql)[0] == "block"
    assert decide(tmp_path, who("alice", CERT), sql) == ("allow", [])
    # No end identity matches no identities pattern, not even one that is all wildcards.
    assert decide(tmp_path, who(), sql)[0] == "flag"


def test_unless_needs_both_a_trusted_source_and_the_name(tmp_path: Path) -> None:
    drop = "DROP TABLE t"
    assert decide(tmp_path, who("dba-carol", CERT), drop) == ("allow", [])
    assert decide(tmp_path, who("dba-carol", IdentitySource.PROXY_USER), drop)[0] == "allow"
    # The same name, but chosen by the client: not exempt.
    assert decide(tmp_path, who("dba-carol", CLIENT), drop)[0] == "block"
    assert decide(tmp_path, who("alice", CERT), drop)[0] == "block"
    assert decide(tmp_path, who(), drop)[0] == "block"


def test_the_engine_cache_tells_identities_apart(tmp_path: Path) -> None:
    """Same user, database, application and address: the cached candidates must not leak
    from one end identity (or source) to another."""
    policy = load_policy([write(tmp_path / "p.yaml", POLICY)])
    facts = analyze("DELETE FROM t WHERE id = 1")
    order = [
        who("alice", CERT),
        who("intern-bob", CLIENT),
        who("alice", CERT),
        who("intern-bob", CERT),
        who(),
    ]
    assert [policy.evaluate(i, facts).action for i in order] == [
        "allow",
        "block",
        "allow",
        "block",
        "flag",
    ]
    drop = analyze("DROP TABLE t")
    assert policy.evaluate(who("dba-x", CERT), drop).action == "allow"
    assert policy.evaluate(who("dba-x", CLIENT), drop).action == "block"


def test_explain_says_why(tmp_path: Path) -> None:
    policy = load_policy([write(tmp_path / "p.yaml", POLICY)])
    explanation = policy.explain(who("intern-bob", CLIENT), analyze("DELETE FROM t WHERE a=1"))
    reasons = " ".join(t.why for t in explanation.traces)
    assert "identity 'intern-bob' (client_supplied) matches 'intern-*', 'CN=temp,*'" in reasons


def test_loader_errors_name_file_line_and_column(tmp_path: Path) -> None:
    f = write(
        tmp_path / "p.yaml",
        """
        rules:
          - id: a
            when:
              identities: ["ok", "bad[glob"]
              identity_sources: [certificate, password]
            action: block
          - id: b
            when: {identity: [x], identities: [y]}
            action: block
          - id: c
            when: {identites: [x]}
            action: block
        """,
    )
    with pytest.raises(PolicyError) as info:
        load_policy([f])
    got = [str(p) for p in info.value.problems]
    assert got[0] == f"{f}:4:26: rules[a].when.identities: bad glob 'bad[glob': '[' is never closed"
    assert got[1] == (
        f"{f}:5:39: rules[a].when.identity_sources: 'password' is not one of "
        "certificate, proxy_user, client_supplied, none"
    )
    assert got[2].startswith(
        f"{f}:8:12: rules[b].when: identity and identities are the same condition"
    )
    assert got[3].startswith(f"{f}:11:12: rules[c].when: unknown condition key 'identites'")
    assert "did you mean 'identities'" in got[3]


def test_cases_carry_identity_and_source(tmp_path: Path) -> None:
    policy = load_policy([write(tmp_path / "p.yaml", POLICY)])
    cases = write(
        tmp_path / "cases.yaml",
        """
        defaults: {user: app}
        cases:
          - id: intern
            sql: DELETE FROM t WHERE id = 1
            identity: intern-bob
            identity_source: client_supplied
            expect: block
            expect_rules: [no-deletes-for-interns]
          - id: dba-by-certificate
            sql: DROP TABLE t
            identity: dba-carol
            expect: allow
          - id: dba-claimed
            sql: DROP TABLE t
            identity: dba-carol
            identity_source: client_supplied
            expect: block
        """,
    )
    results = run_cases(policy, load_cases(cases))
    assert [(r.case.id, r.ok, r.action) for r in results] == [
        ("intern", True, "block"),
        ("dba-by-certificate", True, "allow"),
        ("dba-claimed", True, "block"),
    ]
    assert results[1].case.identity.identity_source is CERT  # the default source
    bad = write(
        tmp_path / "bad.yaml", "- {id: x, sql: SELECT 1, expect: allow, identity_source: me}\n"
    )
    with pytest.raises(PolicyError.__mro__[1]) as info:
        load_cases(bad)
    assert "'me' is not one of certificate, proxy_user, client_supplied" in str(info.value)


def test_policy_test_command_takes_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy.cli import main

    p = write(tmp_path / "p.yaml", POLICY)
    sql = "DROP TABLE t"
    args = ["policy", "test", "--policy", str(p), "--format", "json", sql]
    assert main([*args[:-1], "--identity", "dba-carol", sql]) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "allow"
    flags = ["--identity", "dba-carol", "--identity-source", "client_supplied"]
    assert main([*args[:-1], *flags, sql]) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "block"
    assert main([*args[:-1], "--identity-source", "certificate", sql]) == 2
    assert "--identity-source needs --identity" in capsys.readouterr().err


def test_replay_evaluates_the_recorded_identity(tmp_path: Path) -> None:
    from proxy.review.replay import Replayer

    policy = load_policy([write(tmp_path / "p.yaml", POLICY)])
    base = {
        "type": "query",
        "ts": "2026-12-01T10:00:00.000000Z",
        "user": "app",
        "database": "app",
        "statement": "DROP TABLE t",
        "decision": {"action": "allow", "intended": "allow", "mode": "enforce", "rules": []},
    }
    events = [
        {**base, "session_id": "s1", "identity": "dba-carol", "identity_source": "certificate"},
        {**base, "session_id": "s2", "identity": "dba-carol", "identity_source": "client_supplied"},
        {**base, "session_id": "s3"},
        # Recorded before identity_source existed: matches no identity_sources condition.
        {**base, "session_id": "s4", "identity": "dba-carol"},
    ]
    result = Replayer(policy, analyze).add_all(events).result()
    blocked = result.examples["newly_blocked"]
    assert [(c.session_id, c.identity) for c in blocked] == [
        ("s2", "dba-carol"),
        ("s3", ""),
        ("s4", "dba-carol"),
    ]
    assert result.changes["unchanged"] == 1
