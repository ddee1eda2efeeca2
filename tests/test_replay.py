"""``pgwarden policy replay``: a recorded trail judged again under a stricter policy.

The trail (recorded under a laxer, older policy) and the expected outcome under NEW_POLICY:

  alice  DELETE FROM accounts            x2  recorded allow (no decision)  -> block  newly blocked
  alice  UPDATE ... (no WHERE), normalized x1 recorded allow               -> block  newly blocked
  mallory SELECT 1 from 203.0.113.9      x1  recorded allow                -> block  newly blocked
  alice  UPDATE ... WHERE at 02:00 UTC   x1  recorded allow                -> block  newly blocked
  alice  UPDATE ... WHERE at 10:00 UTC   x1  recorded allow                -> allow  unchanged
  bob    SELECT pg_sleep(1)              x3  recorded allow                -> flag   newly flagged
  carol  DROP TABLE t                    x1  recorded block (no-ddl)  -> allow  no longer blocked
  dave   SELECT ... WHERE id = 1         x2  recorded flag (audit-...) -> allow  no longer flagged
  alice  SELECT 1                        x4  recorded allow                -> allow  unchanged
  alice  DELETE ... WHERE id = $1 (simple, normalized) x1 allow            -> allow  unchanged
  alice  SELECT ... WHERE id = $1 (extended, params)   x1 allow            -> allow  unchanged
  no statement text (absent / null)      x2                                   not judged
  "SELEC oops"                           x1                        not judged (unparsable)
"""

from __future__ import annotations

import argparse
import json
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import report_trail as rt

from proxy.commands.policy_replay import register_replay
from proxy.errors import PgWardenError, PolicyError
from proxy.review.replay import change_kind, looks_normalized

NEW_POLICY = """\
version: 1
defaults:
  action: allow
rules:
  - id: no-unbounded-writes
    when: {commands: [DELETE, UPDATE], missing_where: true}
    action: block
    severity: high
  - id: no-night-writes
    when: {classes: [write], hours: ["00:00-06:00"]}
    action: block
  - id: untrusted-network
    when: {client_addrs: ["203.0.113.0/24"]}
    action: block
    severity: critical
  - id: sleepers
    when: {functions: [pg_sleep]}
    action: flag
    severity: low
"""

WINDOW = ["--since", "2026-11-26T00:00:00Z", "--until", "2026-11-27T00:00:00Z"]
ALICE = rt.ALICE
BOB = rt.BOB
CAROL = {"session_id": "s3", "user": "carol"}
DAVE = {"session_id": "s4", "user": "dave"}
MALLORY = {"session_id": "s5", "user": "mallory", "client_addr": "203.0.113.9"}


def recorded_trail() -> list[dict[str, object]]:
    trail = rt.Trail()
    t = rt.SINCE + timedelta(hours=9)

    def at(minutes: int) -> object:
        return t + timedelta(minutes=minutes)

    for i in range(2):
        trail.query(at(i), ALICE, "DELETE FROM accounts", 1.0, command="DELETE")
    trail.query(
        at(2), ALICE, "UPDATE accounts SET balance = $1", 1.0, action="allow", command="UPDATE"
    )
    trail.query(at(3), MALLORY, "SELECT 1", 1.0)
    night = rt.SINCE + timedelta(hours=2)
    trail.query(night, ALICE, "UPDATE accounts SET note = 'x' WHERE id = 3", 1.0, command="UPDATE")
    trail.query(at(4), ALICE, "UPDATE accounts SET note = 'x' WHERE id = 3", 1.0, command="UPDATE")
    for i in range(3):
        trail.query(at(10 + i), BOB, "SELECT pg_sleep(1)", 1000.0, action="allow")
    trail.query(
        at(20),
        CAROL,
        "DROP TABLE t",
        0.1,
        action="block",
        rules=[("no-ddl", "block", "high")],
        command="DROP TABLE",
    )
    for i in range(2):
        trail.query(
            at(30 + i),
            DAVE,
            "SELECT * FROM accounts WHERE id = 1",
            1.0,
            action="flag",
            rules=[("audit-accounts", "flag", "low")],
        )
    for i in range(4):
        trail.query(at(40 + i), ALICE, "SELECT 1", 0.1)
    trail.query(at(50), ALICE, "DELETE FROM accounts WHERE id = $1", 1.0, command="DELETE")
    trail.query(
        at(51),
        ALICE,
        "SELECT * FROM accounts WHERE id = $1",
        1.0,
        protocol="extended",
        params=["7"],
    )
    absent = trail.query(at(60), ALICE, None, 1.0)
    del absent["statement"]
    trail.query(at(61), ALICE, None, 1.0)
    trail.query(at(62), ALICE, "SELEC oops", 0.1, fp_sql="SELECT 1", sqlstate="42601", error="x")
    trail.session_end(at(70), ALICE, 20)  # not a query: ignored
    # Outside the window: not replayed.
    trail.query(rt.UNTIL + timedelta(hours=3), ALICE, "DELETE FROM accounts", 1.0)
    return trail.events


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("replay")
    policy = base / "new.yaml"
    policy.write_text(NEW_POLICY, encoding="utf-8")
    trail = rt.write_trail(base / "audit", recorded_trail(), rotate_every=7, gzip_rotated=True)
    return trail, policy


def replay(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="pgwarden policy")
    register_replay(parser.add_subparsers())
    args = parser.parse_args(["replay", *argv])
    capsys.readouterr()
    code = args.func(args)
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def result(setup: tuple[Path, Path]) -> dict[str, object]:
    trail, policy = setup
    parser = argparse.ArgumentParser(prog="pgwarden policy")
    register_replay(parser.add_subparsers())
    args = parser.parse_args(
        ["replay", "--policy", str(policy), str(trail), *WINDOW, "--format", "json"]
    )
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    data: dict[str, object] = json.loads(out.getvalue())
    return data


def test_counts(result: dict[str, object]) -> None:
    assert result["statements"] == 21
    assert result["judged"] == 18
    assert result["not_judged"] == {"no_statement": 2, "unparsable": 1}
    assert result["changes"] == {
        "newly_blocked": 5,
        "newly_flagged": 3,
        "no_longer_blocked": 1,
        "no_longer_flagged": 2,
        "unchanged": 7,
    }
    transitions = result["transitions"]
    assert isinstance(transitions, dict)
    assert transitions["allow->block"] == 5
    assert transitions["allow->flag"] == 3
    assert transitions["block->allow"] == 1
    assert transitions["flag->allow"] == 2
    assert transitions["allow->allow"] == 7
    assert sum(transitions.values()) == 18


def test_counts_per_rule_of_the_new_policy(result: dict[str, object]) -> None:
    rules = {(r["rule"], r["action"]): r["count"] for r in result["rules"]}  # type: ignore[attr-defined]
    assert rules == {
        ("no-unbounded-writes", "block"): 3,
        ("sleepers", "flag"): 3,
        ("no-night-writes", "block"): 1,
        ("untrusted-network", "block"): 1,
    }


def test_examples_show_time_user_statement_old_new_rules(result: dict[str, object]) -> None:
    examples = result["examples"]
    assert isinstance(examples, dict)
    blocked = examples["newly_blocked"]
    assert [(e["user"], e["statement"], e["old"], e["new"]) for e in blocked[:2]] == [
        ("alice", "DELETE FROM accounts", "allow", "block"),
        ("alice", "DELETE FROM accounts", "allow", "block"),
    ]
    assert blocked[0]["rules"] == ["no-unbounded-writes"]
    assert blocked[0]["ts"] == "2026-11-26T09:00:00.000000Z"
    night = next(e for e in blocked if e["rules"] == ["no-night-writes"])
    assert night["ts"] == "2026-11-26T02:00:00.000000Z"  # judged at its recorded time
    normalized = next(e for e in blocked if e["statement"].startswith("UPDATE accounts SET b"))
    assert normalized["normalized"] is True
    assert blocked[0]["normalized"] is False
    (unblocked,) = examples["no_longer_blocked"]
    assert (unblocked["user"], unblocked["old"], unblocked["new"]) == ("carol", "block", "allow")
    assert len(examples["no_longer_flagged"]) == 2
    assert result["normalized"] == 2  # the UPDATE and the DELETE ... $1 (simple protocol)


def test_not_judged_are_reported(result: dict[str, object]) -> None:
    skipped = result["not_judged_examples"]
    assert isinstance(skipped, list)
    assert [(e["reason"], e["statement"]) for e in skipped] == [
        ("no_statement", ""),
        ("no_statement", ""),
        ("unparsable", "SELEC oops"),
    ]


def test_examples_limit(setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    trail, policy = setup
    code, out = replay(
        capsys, "--policy", str(policy), "--audit-dir", str(trail), *WINDOW, "--format", "json",
        "--examples", "1",
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert [len(v) for v in data["examples"].values()] == [1, 1, 1, 1]
    assert data["changes"]["newly_blocked"] == 5


def test_filters_are_the_logs_flags(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    trail, policy = setup
    code, out = replay(
        capsys, "--policy", str(policy), str(trail), *WINDOW, "--format", "json", "--user", "bob"
    )
    assert code == 0
    data = json.loads(out)
    assert (data["statements"], data["changes"]["newly_flagged"]) == (3, 3)
    assert data["filters"] == ["--user bob"]


def test_text_output(setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    trail, policy = setup
    code, out = replay(capsys, "--policy", str(policy), str(trail), *WINDOW)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "pgwarden policy replay"
    summary = [line.split() for line in lines[lines.index("Summary") + 1 :][:8]]
    assert ["newly", "blocked", "5"] in summary
    assert ["not", "judged", "3"] in summary
    assert "    2 statement text not recorded (audit.statement_text: none)" in lines
    assert "    1 statement text rejected by PostgreSQL's grammar" in lines
    assert any("normalized: literal-dependent rules may differ" in line for line in lines)
    assert "Newly blocked: 5 (showing 5)" in lines
    assert any("[normalized] UPDATE accounts SET balance = $1" in line for line in lines)
    assert "  allow → block           5" in lines


def test_bad_policy_is_bad_input(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail, _policy = setup
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        textwrap.dedent("""\
        rules:
          - id: x
            when: {commands: [DELETE]}
            action: explode
        """)
    )
    # PolicyError is a SourceError: `pgwarden` prints file:line:col and exits 2.
    with pytest.raises(PolicyError) as raised:
        replay(capsys, "--policy", str(broken), str(trail), *WINDOW)
    assert "broken.yaml:4" in str(raised.value)
    with pytest.raises(PgWardenError, match="no audit directory at"):
        replay(capsys, "--policy", str(setup[1]), str(tmp_path / "missing"))
    with pytest.raises(SystemExit) as usage:
        replay(capsys, str(trail))  # --policy is required
    assert usage.value.code == 2


def test_change_kinds() -> None:
    assert change_kind("allow", "block") == "newly_blocked"
    assert change_kind("flag", "block") == "newly_blocked"
    assert change_kind("allow", "flag") == "newly_flagged"
    assert change_kind("block", "flag") == "no_longer_blocked"
    assert change_kind("block", "allow") == "no_longer_blocked"
    assert change_kind("flag", "allow") == "no_longer_flagged"
    assert change_kind("flag", "flag") == "unchanged"


def test_normalized_text_detection() -> None:
    assert looks_normalized("SELECT * FROM t WHERE a = $1", "simple", None)
    assert not looks_normalized("SELECT '$1' FROM t", "simple", None)  # a literal, not a param
    assert not looks_normalized("SELECT $tag$ $1 $tag$", "simple", None)  # dollar-quoted
    assert not looks_normalized("PREPARE p AS SELECT $1", "simple", None)
    assert not looks_normalized("SELECT $1", "extended", ["x"])  # the client's own parameter
    assert not looks_normalized("SELECT $1", "extended", None)  # parameters not recorded
    assert looks_normalized("SELECT $1, $2", "extended", ["x"])  # one more than was bound
    assert not looks_normalized("SELECT 1", "simple", None)
