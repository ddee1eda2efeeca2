"""``pgwarden alerts check`` and ``pgwarden alerts test`` over a real audit trail directory."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from proxy import config
from proxy.alerts.engine import iso
from proxy.audit.trail import AuditTrail

T0 = 1_800_000_000.0
ROOT = Path(__file__).resolve().parents[1]

RULES = """\
version: 1
alerts:
  - id: auth-burst
    filter: {type: auth_failure, sqlstate: "28P01"}
    threshold: "count >= 3 in 1m"
    by: client_addr
    cooldown: 10m
    severity: critical
  - id: new-shape
    filter: {type: query}
    condition: new_fingerprint
"""


def pgwarden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def record(directory: Path, events: list[dict[str, Any]]) -> None:
    async def main() -> None:
        trail = AuditTrail(config.defaults().replace(audit__dir=str(directory)), "cli")
        trail.open()
        for event in events:
            trail.submit(event)
        await trail.aclose()

    asyncio.run(main())


def base(i: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "type": kind, "ts": iso(T0 + i), "proxy_id": "cli", "session_id": f"s{i}",
            "user": "alice", "database": "app", "application_name": "", **fields}  # fmt: skip


def test_alerts_test_replays_a_directory(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    events = [base(0, "query", fingerprint="f1", statement="SELECT 1")]
    events += [base(i, "auth_failure", sqlstate="28P01", client_addr="10.9.8.7") for i in (1, 2, 4)]
    events += [base(5, "query", fingerprint="f1", statement="SELECT 2")]
    events += [base(6, "auth_failure", sqlstate="28P01", client_addr="10.9.8.7")]  # cooldown
    events += [base(7, "query", fingerprint="f2", statement="DELETE FROM t", user="bob")]
    record(tmp_path / "audit", events)

    out = pgwarden("alerts", "test", "--rules", str(rules), str(tmp_path / "audit"), "--json")
    assert out.returncode == 0, out.stderr
    fired = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(a["alert"], a["group"], a["events"]) for a in fired] == [
        ("new-shape", "alice", [1]),
        ("auth-burst", "10.9.8.7", [2, 3, 4]),
        ("new-shape", "bob", [7]),
    ]
    assert fired[1]["ts"] == iso(T0 + 4)

    table = pgwarden("alerts", "test", "-r", str(rules), str(tmp_path / "audit"), "--user", "bob")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "ALERT"] and len(lines) == 2
    assert "new-shape" in lines[1] and "DELETE FROM t" in lines[1]
    assert "1 alert(s) would have fired" in table.stderr


def test_alerts_check_lists_rules_or_every_problem(tmp_path: Path) -> None:
    ok = pgwarden("alerts", "check", "--rules", str(ROOT / "policies" / "alerts"))
    assert ok.returncode == 0 and "5 alert rule(s) in 1 file(s): ok" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nalerts:\n  - id: x\n    threshold: often\n    severity: loud\n")
    out = pgwarden("alerts", "check", "--rules", str(bad))
    assert out.returncode == 2
    assert f"{bad}:4:5: alerts[0]: expected a threshold" in out.stderr
    assert f"{bad}:5:5: alerts[0]: severity must be one of" in out.stderr
