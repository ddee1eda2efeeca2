"""FunctionCall messages name extension and user functions from the server's catalog
(catalog.dsn), so every function rule works for fast-path calls too (issue 10 §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.kit import admin, unique
from tests.support import rawpg

pytestmark = pytest.mark.e2e


def test_user_function_called_by_oid_is_judged_by_name(
    proxy_factory: Any, pg: Any, tmp_path: Path
) -> None:
    name = unique("pgw_evil")
    with admin(pg) as conn:
        conn.execute(f"create function {name}(text) returns text language sql as 'select $1'")
        row = conn.execute(f"select '{name}'::regproc::oid::int").fetchone()
        assert row is not None
        oid = int(row[0])
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\ndefaults: {action: allow}\nrules:\n"
        f"  - id: no-evil\n    when: {{functions: [{name}]}}\n    action: block\n"
    )
    try:
        named = proxy_factory("--catalog-dsn", pg.dsn(), policies=[policy])
        with rawpg.RawConn(named.host, named.port) as conn:
            conn.login()
            conn.send(rawpg.function_call(oid, [b"x"]))
            replies = conn.recv_until("Z")
            assert [m.fields()["C"] for m in replies if m.type == "E"] == ["42501"]
        blind = proxy_factory(policies=[policy])  # no catalog login: the OID stays opaque
        with rawpg.RawConn(blind.host, blind.port) as conn:
            conn.login()
            conn.send(rawpg.function_call(oid, [b"x"]))
            assert "V" in rawpg.types(conn.recv_until("Z"))
    finally:
        with admin(pg) as conn:
            conn.execute(f"drop function if exists {name}(text)")
