"""``pgwarden policy check`` and ``policy test``: real command, real output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.policy.cases import load_cases

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "policies" / "default.yaml"
DEFAULT_CASES = ROOT / "policies" / "tests" / "default.cases.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "policy", "check", str(DEFAULT))
    assert (code, out, err) == (0, "ok: 10 rules in 1 files\n", "")


def test_check_reports_every_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: a\n    action: nope\n    when: {client_addrs: [300.0.0.0/8]}\n")
    code, out, err = run(capsys, "policy", "check", str(bad))
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == (
        f"{bad}:3:5: rules[a].action: 'nope' is not one of allow, flag, review, block"
    )
    assert lines[1].startswith(f"{bad}:4:27: rules[a].when.client_addrs: bad CIDR '300.0.0.0/8'")
    assert len(lines) == 2


def test_test_human_output_explains_the_decision(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "policy",
        "test",
        "--policy",
        str(DEFAULT),
        "WITH d AS (DELETE FROM t RETURNING *) SELECT 1",
    )
    assert code == 0
    assert out.startswith("decision: BLOCK\n")
    assert "no-unbounded-writes  [high]  " + f"{DEFAULT}:21" in out
    assert "why: commands: command DELETE matches 'UPDATE', 'DELETE' (inside SELECT)" in out
    assert "missing_where: a write has no condition that limits its rows" in out


def test_test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "policy",
        "test",
        "--policy",
        str(DEFAULT),
        "--user",
        "postgres",
        "--json",
        "SELECT pg_read_file('x'); TRUNCATE t",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["action"] == "flag"
    assert [(r["id"], r["action"], r["statement"]) for r in doc["rules"]] == [
        ("flag-truncate-drop", "flag", 2)
    ]
    assert doc["rules"][0]["source"] == f"{DEFAULT}:79"
    assert doc["exempted"] == [
        {"id": "no-server-file-functions", "source": f"{DEFAULT}:32", "statement": 1}
    ]
    statements = doc["facts"]["statements"]
    assert [s["command"] for s in statements] == ["SELECT", "TRUNCATE TABLE"]


def test_test_at_time_and_identity_flags(capsys: pytest.CaptureFixture[str]) -> None:
    policy = ROOT / "policies" / "examples" / "business-hours.yaml"
    args = ("policy", "test", "--policy", str(policy), "--json", "CREATE TABLE t (id int)")
    code, out, _ = run(capsys, *args[:-1], "--at", "2026-03-02T10:00:00+01:00", args[-1])
    assert (code, json.loads(out)["action"]) == (0, "flag")
    code, out, _ = run(capsys, *args[:-1], "--at", "2026-03-02T20:00:00+01:00", args[-1])
    assert (code, json.loads(out)["action"]) == (0, "block")
    code, _, err = run(capsys, *args[:-1], "--at", "yesterday", args[-1])
    assert code == 2 and "bad --at time" in err


def test_test_bad_policy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: 3\n")
    code, _, err = run(capsys, "policy", "test", "--policy", str(bad), "SELECT 1")
    assert code == 2
    assert err == f"{bad}:1:1: rules must be a list\n"


def test_cases_pass_through_the_real_cli_process() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "policy",
            "test",
            "--policy",
            str(DEFAULT),
            "--cases",
            str(DEFAULT_CASES),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("PASS  plain-select: expected allow, got allow")
    n = len(load_cases(DEFAULT_CASES))
    assert len(lines) == n + 1
    assert all(line.startswith("PASS  ") for line in lines[:-1])
    assert lines[-1] == f"{n} passed, 0 failed, {n} cases"


def test_failing_cases_exit_1_with_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = tmp_path / "c.yaml"
    cases.write_text(
        textwrap.dedent("""
        - id: ok
          sql: DELETE FROM t
          expect: block
        - id: wrong
          sql: SELECT 1
          expect: block
          expect_rules: [no-unbounded-writes]
    """)
    )
    code, out, err = run(
        capsys, "policy", "test", "--policy", str(DEFAULT), "--cases", str(cases), "--json"
    )
    assert code == 1
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["action"], r["expected"], r["ok"]) for r in rows] == [
        ("ok", "block", "block", True),
        ("wrong", "allow", "block", False),
    ]
    assert rows[0]["rules"] == ["no-unbounded-writes"]
    assert rows[1]["failures"] == [
        "expected block, got allow",
        "expected rules not matched: no-unbounded-writes",
    ]
    assert err == "1 passed, 1 failed, 2 cases\n"


def test_bad_cases_file_exits_2_with_positions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = tmp_path / "c.yaml"
    cases.write_text(
        "cases:\n  - sql: SELECT 1\n    expect: maybe\n  - expect: allow\n    usr: x\n"
    )
    code, out, err = run(capsys, "policy", "test", "--policy", str(DEFAULT), "--cases", str(cases))
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{cases}:3:5: cases[case-1]: expect must be one of allow, flag, review, block",
        f"{cases}:4:5: cases[case-2]: case needs sql: a string",
        f"{cases}:5:5: cases[case-2]: unknown case key 'usr'; did you mean 'user'?",
    ]


def test_sql_and_cases_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "policy",
        "test",
        "--policy",
        str(DEFAULT),
        "--cases",
        str(DEFAULT_CASES),
        "SELECT 1",
    )
    assert code == 2 and "one of SQL, -f FILE or --cases" in err
