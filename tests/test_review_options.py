"""Review commands share their options: -c/--config (and $PGWARDEN_CONFIG) for the audit
directory and HMAC key, DIR or --audit-dir, and --format with --json as its alias."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy import config
from proxy.audit.trail import AuditTrail
from proxy.cli import main

KEY = "k" * 40
RULES = "version: 1\nalerts:\n  - id: any-query\n    filter: {type: query}\n"
RULES += '    threshold: "count >= 2 in 1h"\n    severity: low\n'


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    """A keyed trail of three queries and a config that names its directory and key."""
    (tmp_path / "key").write_text(KEY)
    audit = tmp_path / "trail"
    cfg = config.defaults().replace(audit__dir=str(audit), audit__hmac_key_file=tmp_path / "key")
    trail = AuditTrail(cfg, "p1")
    trail.open()
    for i in range(3):
        trail.submit({"type": "query", "ts": f"2099-01-01T00:00:0{i}.000000Z", "user": "alice",
                      "statement": f"SELECT {i}", "proxy_id": "p1"})  # fmt: skip
    assert trail.stats.events_written == 3  # without an event loop submit writes at once
    (tmp_path / "pgwarden.yaml").write_text(
        f"audit:\n  dir: {audit}\n  hmac_key_file: {tmp_path / 'key'}\n"
    )
    (tmp_path / "alerts.yaml").write_text(RULES)
    (tmp_path / "policy.yaml").write_text("version: 1\nrules: []\n")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


WINDOW = ("--since", "2098-12-31T00:00:00Z", "--until", "2099-01-02T00:00:00Z")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_every_review_command_takes_the_trail_from_the_config(
    setup: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    cfg = str(setup / "pgwarden.yaml")
    monkeypatch.chdir(setup)  # no ./audit here: the directory can only come from the config
    given: tuple[str, ...] = ("-c", cfg)
    if how == "env":
        monkeypatch.setenv("PGWARDEN_CONFIG", cfg)
        given = ()
    code, out, _ = run(capsys, "verify", *given)
    assert code == 0 and out.startswith("ok: 3 records")  # keyed: the key came from the config
    code, out, _ = run(capsys, "logs", *given, "--format", "json")
    assert code == 0 and len(out.splitlines()) == 3
    code, out, _ = run(capsys, "report", *given, *WINDOW, "--json")
    assert code == 0 and json.loads(out)["totals"]["statements"] == 3
    policy = str(setup / "policy.yaml")
    code, out, _ = run(capsys, "policy", "replay", "--policy", policy, *given, *WINDOW, "--json")
    assert code == 0 and json.loads(out)["judged"] == 3
    alerts = str(setup / "alerts.yaml")
    code, out, _ = run(capsys, "alerts", "test", "--rules", alerts, *given, "--json")
    assert code == 0 and [json.loads(x)["alert"] for x in out.splitlines()] == ["any-query"]


def test_a_flag_beats_the_config(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "logs", "-c", str(setup / "pgwarden.yaml"), str(setup))
    assert code == 2 and "no audit trail in" in err  # DIR given: the config's dir is not used


@pytest.mark.parametrize(
    "command",
    [
        ("verify",),
        ("report", *WINDOW),
        ("policy", "replay", "--policy", "{policy}", *WINDOW),
        ("alerts", "test", "--rules", "{alerts}"),
    ],
)
def test_json_is_an_alias_of_format_json(
    setup: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    args = [a.format(policy=setup / "policy.yaml", alerts=setup / "alerts.yaml") for a in command]
    args += ["-c", str(setup / "pgwarden.yaml")]
    outputs = []
    for flag in (["--json"], ["--format", "json"]):
        code, out, _ = run(capsys, *args, *flag)
        assert code == 0 and out.lstrip().startswith("{")
        outputs.append([line for line in out.splitlines() if '"generated_at"' not in line])
    assert outputs[0] == outputs[1]


def test_policy_test_reads_sql_from_a_file_or_stdin(
    setup: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = str(setup / "policy.yaml")
    big = "SELECT " + ", ".join(f"c{i}" for i in range(5000)) + " FROM t"
    (setup / "big.sql").write_text(big)
    code, out, _ = run(capsys, "policy", "test", "--policy", policy, "-f", str(setup / "big.sql"))
    assert code == 0 and "decision: ALLOW" in out and "c4999" in out
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("DELETE FROM t"))
    code, out, _ = run(capsys, "policy", "test", "--policy", policy, "-f", "-", "--json")
    assert code == 0 and json.loads(out)["facts"]["statements"][0]["command"] == "DELETE"
    code, _out, err = run(capsys, "policy", "test", "--policy", policy, "-f", "/nonexistent.sql")
    assert code == 2 and "cannot read SQL from '/nonexistent.sql'" in err


def test_an_unwritable_report_path_fails_before_any_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The directory does not exist either: the output is checked first, before the work.
    code, out, err = run(capsys, "report", str(tmp_path / "no-trail"), "-o", "/nonexistent/r.html")
    assert code == 2 and out == ""
    assert (
        err
        == "pgwarden: cannot write the report to '/nonexistent/r.html': No such file or directory\n"
    )


def test_os_errors_are_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "audit.jsonl").mkdir()  # a trail "file" that cannot be read
    for command in (["logs"], ["report"], ["verify"]):
        code, _out, err = run(capsys, *command, str(tmp_path))
        assert code == 2
        assert err == f"pgwarden: {tmp_path / 'audit.jsonl'}: Is a directory\n", command
