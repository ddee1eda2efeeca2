"""End to end: two real proxies ship into one store while the store restarts mid-workload;
the alerts they fire travel the same way; ``pgwarden alerts test --store`` replays them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import psycopg
import pytest

from proxy import pgrun
from proxy.alerts.engine import parse_ts
from proxy.buildinfo import version_line
from tests.support.proxyproc import ProxyProcess

pytestmark = pytest.mark.e2e

RULES = """\
version: 1
alerts:
  - id: failing-selects
    filter: {type: query, sqlstate: "22"}
    threshold: "count >= 3 in 1m"
    by: user
    severity: medium
"""


def store_rows(dsn: str, by: str = "proxy_id") -> dict[str, list[dict[str, Any]]] | None:
    """The store's events grouped by the column ``by``, each group in seq order; None while
    the store does not answer."""
    assert by in ("proxy_id", "trail_id")

    async def fetch() -> dict[str, list[dict[str, Any]]] | None:
        try:
            conn = await asyncpg.connect(dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None
        try:
            rows = await conn.fetch(
                f"SELECT {by}, event::text FROM audit_events ORDER BY {by}, seq"
            )
        except asyncpg.UndefinedTableError:
            return {}
        finally:
            await conn.close()
        out: dict[str, list[dict[str, Any]]] = {}
        for key, text in rows:
            out.setdefault(key, []).append(json.loads(text))
        return out

    return asyncio.run(fetch())


def poll(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)  # polling interval


def workload(proxy: ProxyProcess, rounds: int, tag: str) -> None:
    with psycopg.connect(proxy.dsn(database="app"), autocommit=True, application_name=tag) as c:
        for i in range(rounds):
            c.execute("SELECT %s::int + 1", (i,))
            if i % 4 == 3:
                with pytest.raises(psycopg.errors.DivisionByZero):
                    c.execute("SELECT 1/0")


def test_two_proxies_one_store_with_a_store_restart(
    proxy_factory: Callable[..., ProxyProcess], store_server: pgrun.LocalCluster, tmp_path: Path
) -> None:
    dsn = store_server.dsn(database="postgres")
    rules = tmp_path / "alerts.yaml"
    rules.write_text(RULES)
    sinks = json.dumps([{"type": "postgres", "dsn": dsn, "batch_size": 25}])
    proxies = [
        proxy_factory(
            *("--proxy-id", name, "--audit-sinks", sinks),
            *("--alerts", str(rules), "--audit-rotate-size", "8kB"),
        )
        for name in ("edge-a", "edge-b")
    ]
    for proxy in proxies:
        workload(proxy, 20, "before")
    store_server.pause()
    for proxy in proxies:
        workload(proxy, 20, "during-outage")  # the proxies keep serving
    for proxy in proxies:
        assert proxy.returncode is None
    store_server.resume()
    for proxy in proxies:
        workload(proxy, 12, "after")

    def caught_up() -> bool:
        rows = store_rows(dsn) or {}
        return all(len(rows.get(p.events()[0]["proxy_id"], [])) == len(p.events()) for p in proxies)

    poll(caught_up)
    rows = store_rows(dsn)
    assert rows is not None and sorted(rows) == ["edge-a", "edge-b"]
    for proxy in proxies:
        recorded = proxy.events()
        proxy_id = recorded[0]["proxy_id"]
        assert rows[proxy_id] == recorded  # nothing lost, nothing twice, same order
        assert [e["seq"] for e in recorded] == list(range(1, len(recorded) + 1))
        assert len(list(proxy.audit_dir.glob("audit-*.jsonl*"))) >= 1  # rotations happened
        alerts = [e for e in recorded if e["type"] == "alert"]
        assert alerts and alerts[0]["alert"] == "failing-selects"
        assert "unavailable" in proxy.stderr_text() and "reachable again" in proxy.stderr_text()

    replay = subprocess.run(
        [sys.executable, "-m", "proxy", "alerts", "test", "--rules", str(rules), "--store", dsn,
         "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    replayed = [json.loads(line) for line in replay.stdout.splitlines()]
    # The store merges both proxies: the replay counts their failures together, so the first
    # alert comes at the third failing statement of either proxy (by ts).
    failing = sorted(
        (e for p in proxies for e in p.events() if e["type"] == "query" and e.get("sqlstate")),
        key=lambda e: e["ts"],
    )
    assert replayed and {a["alert"] for a in replayed} == {"failing-selects"}
    assert abs(parse_ts(replayed[0]["ts"]) - parse_ts(failing[2]["ts"])) < 1e-5
    assert len(replayed[0]["events"]) == 3
    for proxy in proxies:
        proxy.stop()


def test_two_proxies_with_default_settings_keep_both_trails_in_the_store(
    proxy_factory: Callable[..., ProxyProcess], store_server: pgrun.LocalCluster
) -> None:
    """Same host, default proxy_id (the host name), one store that restarts in the middle:
    the store holds exactly the union of both trails, and the shared proxy_id is reported."""
    dsn = store_server.dsn(database="postgres")
    asyncio.run(_drop_store_tables(dsn))
    sinks = json.dumps([{"type": "postgres", "dsn": dsn, "batch_size": 10}])
    proxies = [proxy_factory("--audit-sinks", sinks) for _ in range(2)]
    for proxy in proxies:
        workload(proxy, 12, "before")
    store_server.pause()
    for proxy in proxies:
        workload(proxy, 12, "while-the-store-is-down")
    store_server.resume()
    for proxy in proxies:
        workload(proxy, 8, "after")

    trails = {(p.audit_dir / "audit.id").read_text().strip(): p for p in proxies}
    assert len(trails) == 2  # each directory got its own identity

    def caught_up() -> bool:
        counts = {t: len(events) for t, events in (store_rows(dsn, "trail_id") or {}).items()}
        return counts == {t: len(p.events()) for t, p in trails.items()}

    poll(caught_up)
    rows = store_rows(dsn, "trail_id") or {}
    proxy_ids = {p.events()[0]["proxy_id"] for p in proxies}
    assert len(proxy_ids) == 1  # the same default proxy_id: the case version 1 merged
    assert set(rows) == set(trails)
    for trail_id, events in rows.items():
        recorded = trails[trail_id].events()
        assert {e["proxy_id"] for e in events} == proxy_ids
        assert events == recorded  # the union, exactly: nothing lost, nothing twice
        starts = [e for e in recorded if e["type"] == "session_start"]
        assert starts and {e["trail_id"] for e in starts} == {trail_id}
    started = proxies[0].stderr_text()  # the start-up line names the build and the sinks
    assert f"{version_line()} listening on" in started and f"store: {dsn}" in started
    warned = [p for p in proxies if "is also shipped by another trail" in p.stderr_text()]
    assert warned  # at least the one that connected second; the other at its next heartbeat
    for proxy in proxies:
        proxy.stop()


async def _drop_store_tables(dsn: str) -> None:
    """The module-scoped store server may hold an earlier test's rows: start empty."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS audit_events, pgwarden_trails, pgwarden_schema_version"
        )
    finally:
        await conn.close()
