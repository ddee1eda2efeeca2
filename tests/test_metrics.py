"""Metrics derived from the real audit trail's event stream, plus values read on scrape."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from proxy import config
from proxy.audit.trail import AuditTrail
from proxy.metrics import Metrics
from proxy.state import ServerState


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "type": kind, "ts": "2026-11-26T07:00:00.000000Z", "proxy_id": "m",
            "session_id": "s", "user": "alice", "database": "app", **fields}  # fmt: skip


def query(
    klass: str, action: str, duration_ms: float, sqlstate: str | None = None
) -> dict[str, Any]:
    return event("query", statement="SELECT 1", duration_ms=duration_ms, sqlstate=sqlstate,
                 decision={"action": action, "rules": []}, **{"class": klass})  # fmt: skip


def test_statement_metrics_come_from_the_trail(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config.defaults().replace(audit__dir=str(tmp_path))
        trail = AuditTrail(cfg, "m")
        trail.open()
        state = ServerState(proxy_id="m", started_at=time.time())
        metrics = Metrics(state, trail)
        before = samples(metrics)
        assert before[("pgwarden_audit_queue_depth", ())] == 0
        for item in (
            event("session_start"),
            query("read", "allow", 0.4),
            query("read", "allow", 3.0),
            query("write", "block", 0.2, "42501"),
            query("ddl", "flag", 700.0, "42P07"),
            event("auth_failure", sqlstate="28P01", error="password authentication failed"),
            event("session_end", duration_ms=10.0),
            event("alert", alert="blocked-spike", severity="high"),
        ):
            trail.submit(item)
        assert samples(metrics)[("pgwarden_audit_queue_depth", ())] == 8  # not written yet
        written = asyncio.Event()
        trail.when_written(written.set)  # the flush runs on a later loop turn
        await asyncio.wait_for(written.wait(), 10)
        state.counters.connections_total = 5
        state.counters.policy_reloads = 2
        state.sessions["x"] = object()  # type: ignore[assignment]
        got = samples(metrics)
        await trail.aclose()
        assert got[("pgwarden_statements_total", (("action", "allow"), ("class", "read")))] == 2
        assert got[("pgwarden_statements_total", (("action", "block"), ("class", "write")))] == 1
        assert got[("pgwarden_statements_total", (("action", "flag"), ("class", "ddl")))] == 1
        assert got[("pgwarden_statement_errors_total", (("sqlstate_class", "42"),))] == 2
        assert got[("pgwarden_statement_duration_seconds_count", ())] == 4
        assert got[("pgwarden_statement_duration_seconds_bucket", (("le", "0.0005"),))] == 2
        assert got[("pgwarden_statement_duration_seconds_bucket", (("le", "0.005"),))] == 3
        assert got[("pgwarden_auth_failures_total", ())] == 1
        assert got[("pgwarden_sessions_started_total", ())] == 1
        assert got[("pgwarden_sessions_ended_total", ())] == 1
        assert (
            got[("pgwarden_alerts_fired_total", (("alert", "blocked-spike"), ("severity", "high")))]
            == 1
        )
        assert got[("pgwarden_audit_queue_depth", ())] == 0
        assert got[("pgwarden_audit_events_written_total", ())] == 8
        assert got[("pgwarden_connections_total", ())] == 5
        assert got[("pgwarden_policy_reloads_total", ())] == 2
        assert got[("pgwarden_client_connections", ())] == 1

    asyncio.run(main())


def test_each_metrics_object_has_its_own_registry(tmp_path: Path) -> None:
    cfg = config.defaults().replace(audit__dir=str(tmp_path))
    state = ServerState(proxy_id="m", started_at=time.time())
    first = Metrics(state, AuditTrail(cfg, "a"))
    second = Metrics(state, AuditTrail(cfg, "b"))  # no "Duplicated timeseries" error
    first.observe([query("read", "allow", 1.0)])
    key = ("pgwarden_statements_total", (("action", "allow"), ("class", "read")))
    assert samples(first)[key] == 1
    assert key not in samples(second)


def test_build_info_names_the_running_build(tmp_path: Path) -> None:
    import platform
    from importlib import metadata

    import proxy

    cfg = config.defaults().replace(audit__dir=str(tmp_path))
    metrics = Metrics(ServerState(proxy_id="m", started_at=time.time()), AuditTrail(cfg, "a"))
    from proxy.compiled import build_kind

    labels = (
        ("build", build_kind()),
        ("pglast", metadata.version("pglast")),
        ("python", platform.python_version()),
        ("version", proxy.__version__),
    )
    assert samples(metrics)[("pgwarden_build_info", labels)] == 1.0


def test_version_flag_and_start_up_line_name_the_same_build(tmp_path: Path) -> None:
    import subprocess
    import sys

    from proxy.buildinfo import version_line

    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == version_line()
    assert version_line().startswith("pgwarden 0.") and "pglast" in version_line()
