"""Policies in the running proxy: a real client is blocked, flagged, and the policy hot-reloads
when its file changes."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.proxyproc import ProxyFactory

POLICY = """
version: 1
rules:
  - id: no-unbounded-writes
    when: {{commands: [UPDATE, DELETE], missing_where: true}}
    action: {action}
    message: Add a WHERE clause.
  - id: no-server-files
    when: {{functions: [pg_read_file]}}
    action: block
"""


def write_policy(path: Path, action: str) -> None:
    path.write_text(textwrap.dedent(POLICY.format(action=action)).lstrip())


def test_block_flag_and_reload_on_file_change(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, "block")
    proxy = proxy_factory(policies=[policy])
    with psycopg.connect(proxy.dsn(user="postgres", database="app"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS policy_e2e")
        conn.execute("CREATE TABLE policy_e2e (id int)")
        conn.execute("INSERT INTO policy_e2e VALUES (1), (2)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute("WITH d AS (DELETE FROM policy_e2e RETURNING *) SELECT count(*) FROM d")
        assert info.value.diag.message_primary == "Add a WHERE clause."
        # A message with a blocked statement runs none of its statements.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO policy_e2e VALUES (3); SELECT pg_read_file('PG_VERSION')")
        rows = conn.execute("SELECT count(*) FROM policy_e2e").fetchone()
        assert rows == (2,)

        write_policy(policy, "flag")  # the proxy polls its policy files
        deadline = time.monotonic() + 20
        while True:
            try:
                conn.execute("DELETE FROM policy_e2e")
                break
            except psycopg.errors.InsufficientPrivilege:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert conn.execute("SELECT count(*) FROM policy_e2e").fetchone() == (0,)
        conn.execute("DROP TABLE policy_e2e")

    proxy.wait_for(
        lambda e: (
            e.get("statement") == "DELETE FROM policy_e2e"
            and e.get("decision", {}).get("action") == "flag"
        )
    )
    queries = proxy.events("query")
    blocked = next(e for e in queries if e["statement"].startswith("WITH d AS"))
    assert blocked["decision"] == {
        "action": "block",
        "intended": "block",
        "mode": "enforce",
        "rules": [{"id": "no-unbounded-writes", "action": "block", "severity": "medium"}],
    }
    assert blocked["sqlstate"] == "42501"
    flagged = next(
        e
        for e in queries
        if e["statement"] == "DELETE FROM policy_e2e" and e["decision"]["action"] == "flag"
    )
    assert flagged["error"] is None
