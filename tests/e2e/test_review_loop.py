"""The review loop on a real trail: a psql session through the proxy, then `pgwarden logs`,
`report`, `verify` and `policy replay` on the audit directory it produced (issue 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.kit import unique

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STRICTER = """\
version: 1
defaults: {action: allow, on_unparsable: block}
rules:
  - id: no-ddl
    when: {classes: [ddl]}
    action: block
    severity: high
    message: DDL goes through migrations
"""


def pgwarden(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"pgwarden {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def psql(proxy: Any, sql: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGAPPNAME": "review-loop", "PGCONNECT_TIMEOUT": "5"}
    return subprocess.run(
        ["psql", proxy.dsn(), "-X", "-v", "ON_ERROR_STOP=0", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_session_then_logs_report_verify_replay(proxy_factory: Any, tmp_path: Path) -> None:
    proxy = proxy_factory(policies=[ROOT / "policies" / "default.yaml"])
    table = unique("review")
    statements = [
        f"create table {table} (id int primary key, name text)",  # ddl: flagged
        f"insert into {table} values (1, 'a'), (2, 'b'), (3, 'c')",
        f"select * from {table} where id > 1",
        f"update {table} set name = 'z' where id = 2",
        f"delete from {table}",  # unbounded: blocked
        "select 1/0",  # error
    ]
    outputs = [psql(proxy, sql) for sql in statements]
    assert "DETAIL:  pgwarden rule: no-unbounded-writes" in outputs[4].stderr, outputs[4].stderr
    assert "division by zero" in outputs[5].stderr
    audit = str(proxy.audit_dir)
    proxy.stop()

    verified = pgwarden("verify", audit)
    assert verified.stdout.startswith("ok: "), verified.stdout

    blocked = pgwarden("logs", audit, "--action", "block", "--format", "json")
    events = [json.loads(line) for line in blocked.stdout.splitlines()]
    assert [e["statement"] for e in events] == [f"delete from {table}"]
    assert events[0]["decision"]["rules"][0]["id"] == "no-unbounded-writes"

    report = json.loads(pgwarden("report", audit, "--format", "json").stdout)
    mine = report["totals"]
    assert mine["blocks"] == 1 and mine["errors"] == 2  # the blocked DELETE and 1/0
    assert mine["statements"] == len(statements)
    html = tmp_path / "report.html"
    pgwarden("report", audit, "--format", "html", "--output", str(html))
    assert "<svg" in html.read_text()

    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(STRICTER)
    pgwarden("policy", "check", str(stricter))
    replay = json.loads(
        pgwarden("policy", "replay", "--policy", str(stricter), audit, "--format", "json").stdout
    )
    # Only the CREATE TABLE is DDL; the blocked DELETE is no longer blocked by this policy.
    assert replay["changes"]["newly_blocked"] == 1, replay["changes"]
    assert replay["changes"]["no_longer_blocked"] == 1, replay["changes"]

    # Tampering is detected: edit one recorded statement.
    current = Path(audit) / "audit.jsonl"
    text = current.read_text()
    assert "where id > 1" in text
    current.write_text(text.replace("where id > 1", "where id > 0", 1))
    tampered = pgwarden("verify", audit, check=False)
    assert tampered.returncode == 1 and "edited" in tampered.stdout + tampered.stderr
