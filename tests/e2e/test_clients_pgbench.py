"""pgbench in simple, extended and prepared modes through the proxy; one event per statement."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import unique, wait_until

pytestmark = pytest.mark.e2e

CLIENTS, TRANSACTIONS = 4, 200


def _pgbench_setup(statement: str) -> bool:
    """pgbench's own probes before a run: the scale and the partitioning of pgbench_accounts."""
    text = statement.strip().lower()
    return text == "select count(*) from pgbench_branches" or "p.partstrat" in text


SELECT_SHAPE = re.compile(r"^\s*SELECT abalance FROM pgbench_accounts WHERE aid = ", re.I)


@pytest.fixture(scope="module")
def bench_db(pg: Any) -> str:
    """A pgbench database initialised directly (not through the proxy)."""
    name = unique("bench")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"create database {name}")
    done = subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q", "-d", pg.dsn(database=name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return name


def _pgbench(dsn: str, app: str, *args: str) -> str:
    env = {**os.environ, "PGAPPNAME": app, "PGCONNECT_TIMEOUT": "5"}
    done = subprocess.run(
        ["pgbench", "-n", *args, dsn], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, f"pgbench failed:\n{done.stdout}\n{done.stderr}"
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    assert processed, done.stdout
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    assert failed is None or failed.group(1) == "0", done.stdout
    return done.stdout


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only(proxy: Any, bench_db: str, mode: str) -> None:
    app = unique(f"pgbench_{mode}")
    out = _pgbench(
        proxy.dsn(database=bench_db),
        app,
        "-S",
        "-M",
        mode,
        "-c",
        str(CLIENTS),
        "-t",
        str(TRANSACTIONS),
    )
    assert f"processed: {CLIENTS * TRANSACTIONS}/{CLIENTS * TRANSACTIONS}" in out, out

    def selects() -> list[dict[str, Any]] | None:
        found = [
            e
            for e in proxy.events("query")
            if e["application_name"] == app and SELECT_SHAPE.match(e["statement"])
        ]
        return found if len(found) >= CLIENTS * TRANSACTIONS else None

    wait_until(selects, 15, f"{CLIENTS * TRANSACTIONS} SELECT events")
    found = selects() or []
    assert len(found) == CLIENTS * TRANSACTIONS, len(found)
    want = "simple" if mode == "simple" else "extended"
    assert {e["protocol"] for e in found} == {want}
    assert {e["command_tag"] for e in found} == {"SELECT 1"}
    assert all(e["rows"] == 1 and e["error"] is None for e in found)

    def all_ended() -> list[dict[str, Any]] | None:
        mine = [e for e in proxy.events() if e.get("application_name") == app]
        starts = [e for e in mine if e["type"] == "session_start"]
        ends = [e for e in mine if e["type"] == "session_end"]
        return ends if len(ends) == len(starts) >= CLIENTS else None

    ends = wait_until(all_ended, 15, "every pgbench session to end")
    assert sum(e["statements"] for e in ends) == len(
        [e for e in proxy.events("query") if e["application_name"] == app]
    )


def test_pgbench_tpcb_prepared(proxy: Any, bench_db: str) -> None:
    """The default TPC-B-like script: BEGIN, 3 UPDATEs, SELECT, INSERT, END per transaction."""
    app = unique("pgbench_tpcb")
    clients, transactions = 2, 50
    _pgbench(
        proxy.dsn(database=bench_db),
        app,
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-t",
        str(transactions),
    )
    expected = clients * transactions * 7

    def script_events() -> list[dict[str, Any]] | None:
        found = [
            e
            for e in proxy.events("query")
            if e["application_name"] == app and not _pgbench_setup(e["statement"])
        ]
        return found if len(found) >= expected else None

    # pgbench's own setup (a scale probe on pgbench_branches) is left out by the filter.
    events = wait_until(script_events, 15, f"{expected} tpcb statements")
    tags: dict[str, int] = {}
    for e in events:
        tags[e["command_tag"].split()[0]] = tags.get(e["command_tag"].split()[0], 0) + 1
    n = clients * transactions
    extra = [
        e["statement"]
        for e in events
        if e["command_tag"].startswith("SELECT") and "abalance" not in e["statement"]
    ]
    assert tags == {"BEGIN": n, "UPDATE": 3 * n, "SELECT": n, "INSERT": n, "COMMIT": n}, (
        tags,
        extra,
    )
