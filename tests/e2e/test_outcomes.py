"""Did it commit? Rolled-back writes are findable with a real client (issue 9 §2)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import admin, scratch_table, unique, wait_events
from tests.support import rawpg

pytestmark = pytest.mark.e2e


@pytest.fixture
def table(pg: Any) -> Iterator[str]:
    with scratch_table(pg, "outc", 5) as name:
        yield name


def _logs(proxy: Any, *flags: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "logs", str(proxy.audit_dir), "--format", "json", *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_rolled_back_update_is_found_and_committed_one_too(proxy: Any, pg: Any, table: str) -> None:
    app = unique("outc_app")
    with rawpg.RawConn(proxy.host, proxy.port) as conn:
        conn.login(extra={"application_name": app})
        conn.simple(f"update {table} set q = -777 where id = 2; select 1/0")
        conn.simple(f"update {table} set q = 30 where id = 3")
        conn.simple("begin")
        conn.simple(f"update {table} set q = 40 where id = 4")
        conn.simple("rollback")
    with psycopg.connect(proxy.dsn(), application_name=app) as conn:  # not autocommit
        conn.execute(f"update {table} set q = 50 where id = 5")
        conn.commit()
    wait_events(proxy, 1, "session_end", application_name=app)
    with admin(pg) as check:
        rows = dict(check.execute(f"select id, q from {table}").fetchall())
    assert rows == {1: 1, 2: 2, 3: 30, 4: 4, 5: 50}
    rolled = {e["statement"] for e in _logs(proxy, "--rolled-back", "--app", app)}
    committed = {e["statement"] for e in _logs(proxy, "--committed", "--app", app)}
    assert f"update {table} set q = -777 where id = 2" in rolled
    assert f"update {table} set q = 40 where id = 4" in rolled
    assert f"update {table} set q = 30 where id = 3" in committed
    assert f"update {table} set q = 50 where id = 5" in committed
    assert not rolled & committed
