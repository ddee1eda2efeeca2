"""FunctionCall (fast-path) messages through the proxy with the shipped default policy: pg_dump
of a database with a large object (libpq's lo_* calls are FunctionCall messages) runs, every
call is named from the catalog and none is flagged; pg_dump's own set_config query is no role
switch (issues 9 §4 and 10 §1)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import wait_until
from tests.test_policy_shipped import SHIPPED

pytestmark = pytest.mark.e2e

_DB = "lodump"


@pytest.fixture(scope="module")
def proxy(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.support.proxyproc import ProxyFactory

    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_DB}")
        conn.execute(f"CREATE DATABASE {_DB}")
    with psycopg.connect(pg.dsn(database=_DB), autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, blob oid)")
        conn.execute("INSERT INTO docs VALUES (1, lo_from_bytea(0, 'large object payload'))")
    factory = ProxyFactory(pg, tmp_path_factory.mktemp("fastpath"))
    try:
        yield factory(policies=[SHIPPED["default"]])
    finally:
        factory.close()


def test_pg_dump_with_a_large_object_is_not_flagged(proxy: Any, pg: Any, tmp_path: Path) -> None:
    if pg.bin_dir is None or not (pg.bin_dir / "pg_dump").exists():
        pytest.skip("pg_dump not found next to the server binaries")
    env = {**os.environ, "PGSSLMODE": "disable"}
    if pg.superuser_password:
        env["PGPASSWORD"] = pg.superuser_password
    out = tmp_path / "dump.sql"
    command = [str(pg.bin_dir / "pg_dump"), "-h", proxy.host, "-p", str(proxy.port)]
    command += ["-U", pg.superuser, "-d", _DB, "-f", str(out)]
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # the large object's bytes were read through the proxy (pg_dump writes them as hex)
    assert b"large object payload".hex() in out.read_text()

    def calls() -> list[dict[str, Any]] | None:
        found = [e for e in proxy.events("query") if e.get("protocol") == "function_call"]
        return found or None

    function_calls = wait_until(calls, 10, "function_call events")
    names = {e["statement"] for e in function_calls}
    assert any("pg_catalog.lo_open" in n for n in names), names
    assert any("pg_catalog.loread" in n for n in names), names
    for event in function_calls:
        assert event["decision"]["action"] == "allow", event
        assert event["decision"]["rules"] == [], event
    flagged = [
        (e["statement"], e["decision"]["rules"])
        for e in proxy.events("query")
        if e["decision"]["rules"]
    ]
    assert flagged == []  # neither the lo_* calls nor pg_dump's set_config query
