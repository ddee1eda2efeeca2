"""End to end: the admin API of a real proxy — metrics move under pgbench, live sessions are
listed and cancelled, reload answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.proxyproc import ProxyProcess

pytestmark = pytest.mark.e2e


def http(proxy: ProxyProcess, path: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(
        proxy.admin_url(path), method=method, headers=proxy.admin_headers()
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(proxy: ProxyProcess) -> dict[str, float]:
    status, body = http(proxy, "/metrics")
    assert status == 200
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def poll(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)  # polling interval


@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed")
def test_metrics_move_under_pgbench(
    proxy_factory: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    proxy = proxy_factory()
    assert http(proxy, "/healthz") == (200, b"ok\n")
    before = scrape(proxy)
    script = tmp_path / "bench.sql"
    script.write_text("\\set n random(1, 1000)\nSELECT :n::int * 2;\n")
    clients, transactions = 4, 60
    subprocess.run(
        ["pgbench", "-n", "-f", str(script), "-c", str(clients), "-t", str(transactions),
         "-M", "extended", "-h", proxy.host, "-p", str(proxy.port), "-U", "postgres", "app"],
        check=True, capture_output=True, timeout=90,
    )  # fmt: skip
    statements = clients * transactions
    poll(lambda: scrape(proxy)["pgwarden_sessions_ended_total"] >= clients)
    after = scrape(proxy)
    moved = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    assert moved["pgwarden_statements_total"] >= statements
    assert moved["pgwarden_statement_duration_seconds_count"] >= statements
    assert moved["pgwarden_sessions_started_total"] >= clients
    assert moved["pgwarden_connections_total"] >= clients
    assert moved["pgwarden_audit_events_written_total"] >= statements + 2 * clients
    assert after["pgwarden_client_connections"] == 0
    assert after["pgwarden_audit_queue_depth"] == 0
    status, body = http(proxy, "/readyz")
    assert status == 200, body
    assert json.loads(body)["checks"] == {"upstream": True, "audit_trail": True}


def test_sessions_are_listed_and_cancelled(proxy_factory: Callable[..., ProxyProcess]) -> None:
    proxy = proxy_factory()
    outcome: dict[str, BaseException | None] = {}

    def sleeper() -> None:
        with psycopg.connect(
            proxy.dsn(database="app"), autocommit=True, application_name="sleepy"
        ) as conn:
            try:
                conn.execute("SELECT pg_sleep(30)")
                outcome["error"] = None
            except psycopg.Error as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        sessions: list[dict[str, object]] = []

        def sleeping() -> bool:
            nonlocal sessions
            sessions = json.loads(http(proxy, "/sessions")[1])
            return any(s["current_statement"] == "SELECT pg_sleep(30)" for s in sessions)

        poll(sleeping)
        [session] = [s for s in sessions if s["application_name"] == "sleepy"]
        assert session["user"] == "postgres" and session["database"] == "app"
        assert session["state"] == "active" and isinstance(session["backend_pid"], int)
        status, body = http(proxy, f"/sessions/{session['session_id']}/cancel", "POST")
        assert status == 200 and json.loads(body)["cancelled"] is True
        thread.join(20)
        assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled)
    finally:
        thread.join(30)
    assert http(proxy, "/sessions/does-not-exist/cancel", "POST")[0] == 404
    poll(lambda: scrape(proxy).get("pgwarden_cancels_forwarded_total", 0) >= 1)
    status, body = http(proxy, "/reload", "POST")
    assert status == 200 and json.loads(body)["ok"] is True
