"""`pgwarden logs`: formats, filters through the CLI, --limit, broken pipes and --follow."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import cli, config
from proxy.audit.trail import AuditTrail

ROOT = Path(__file__).resolve().parents[1]


def write(directory: Path, events: list[dict[str, Any]], **changes: Any) -> None:
    cfg = config.defaults().replace(audit__dir=str(directory), audit__fsync="none", **changes)
    trail = AuditTrail(cfg, "p1")
    trail.open()
    for event in events:
        trail.submit(event)
    trail.close()


def query(n: int, user: str = "alice", **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "query",
        "ts": f"2026-11-26T07:40:{n % 60:02d}.000000Z",
        "proxy_id": "p1",
        "session_id": "s1",
        "user": user,
        "database": "app",
        "application_name": "psql",
        "client_addr": "127.0.0.1",
        "client_port": 50000,
        "statement": f"SELECT * FROM accounts WHERE id = {n}",
        "duration_ms": float(n),
        "command_tag": "SELECT 1",
        "rows": 1,
        "sqlstate": None,
        "error": None,
        "decision": {"action": "allow", "intended": "allow", "mode": "enforce", "rules": []},
        **extra,
    }


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    events: list[dict[str, Any]] = [
        {
            "v": 1,
            "type": "session_start",
            "ts": "2026-11-26T07:39:59.000000Z",
            "user": "alice",
            "database": "app",
            "application_name": "psql",
            "client_addr": "127.0.0.1",
            "session_id": "s1",
            "backend_pid": 4242,
            "tls": False,
            "protocol_version": "3.0",
        },
    ]
    events += [query(n, user="alice" if n % 2 else "bob") for n in range(1, 21)]
    events.append(
        query(
            21,
            statement="DROP TABLE accounts",
            sqlstate="42501",
            error="statement blocked by pgwarden policy",
            rows=None,
            decision={
                "action": "block",
                "intended": "block",
                "mode": "enforce",
                "rules": [{"id": "no-drop", "action": "block", "severity": "high"}],
            },
        )
    )
    write(tmp_path, events, audit__rotate_size="2kB")
    return tmp_path


def run_logs(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(["logs", *argv]) == 0
    return capsys.readouterr().out


def test_json_lines_when_piped_are_the_records_as_written(
    audit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_logs(capsys, str(audit), "--user", "alice", "--min-duration", "15")
    records = [orjson.loads(line) for line in out.splitlines()]
    assert [r["duration_ms"] for r in records] == [15.0, 17.0, 19.0, 21.0]
    assert all("hash" in r and r["user"] == "alice" for r in records)


def test_table_format(audit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_logs(capsys, "--audit-dir", str(audit), "--format", "table", "--action", "block")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "USER@DB"]
    assert len(lines) == 2
    row = lines[1]
    assert row.startswith("2026-11-26 07:40:21.000 alice@app")
    assert "block" in row and "42501" in row and "DROP TABLE accounts" in row


def test_table_shows_session_events_and_clips_to_the_terminal(
    audit: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "130")
    out = run_logs(capsys, str(audit), "--format", "table", "--limit", "3", "--grep", "id")
    lines = out.splitlines()
    assert len(lines) == 4 and all(len(line) <= 130 for line in lines)
    assert "SELECT * FROM acc" in lines[-1] and lines[-1].endswith("…")
    out = run_logs(capsys, str(audit), "--format", "table", "--type", "session_start")
    assert "[session start pid=4242]" in out


def test_csv_format(audit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_logs(capsys, str(audit), "--format", "csv", "--errors")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1
    assert rows[0]["sqlstate"] == "42501" and rows[0]["action"] == "block"
    assert rows[0]["statement"] == "DROP TABLE accounts" and rows[0]["seq"] == "22"


def test_limit_keeps_the_newest(audit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_logs(capsys, str(audit), "--limit", "2", "--type", "query")
    assert [orjson.loads(x)["seq"] for x in out.splitlines()] == [21, 22]


def test_rule_and_table_filters(audit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_logs(capsys, str(audit), "--rule", "no-*")
    assert [orjson.loads(x)["seq"] for x in out.splitlines()] == [22]


def test_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["logs", str(tmp_path / "nope")]) == 2
    assert "no audit directory at" in capsys.readouterr().err


def test_an_empty_directory_is_an_error_except_to_follow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["logs", str(tmp_path)]) == 2
    assert "no audit trail in" in capsys.readouterr().err


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    write(tmp_path, [query(n) for n in range(2000)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "logs", str(tmp_path), "--format", "json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert orjson.loads(proc.stdout.readline())["seq"] == 1
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(30) == 0
    assert err == ""


def test_follow_prints_new_events_across_rotation(tmp_path: Path) -> None:
    write(tmp_path, [query(n) for n in range(1, 4)], audit__rotate_size="2kB")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "logs",
            str(tmp_path),
            "--follow",
            "--format",
            "json",
            "--user",
            "bob",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    seen: list[int] = []
    reader = threading.Thread(
        target=lambda: seen.extend(orjson.loads(line)["seq"] for line in proc.stdout or ())
    )
    reader.start()
    try:
        write(tmp_path, [query(n, user="bob") for n in range(4, 30)], audit__rotate_size="2kB")
        deadline = time.monotonic() + 30
        while len(seen) < 26 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert seen == list(range(4, 30))
