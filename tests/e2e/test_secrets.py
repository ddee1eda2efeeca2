"""Secrets never reach the audit trail or the diagnostics, on any path: passwords in role
statements, user mappings, connection strings, unparsable text, Bind parameters, and the
password/SASL messages of the login itself. Checked by grepping everything the proxy wrote."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import unique

pytestmark = pytest.mark.e2e

MARK = "S3cretZ"


def _run(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] | None = None) -> None:
    # Many of these fail on the server (no such extension or host): they are still logged.
    with contextlib.suppress(psycopg.Error):
        conn.execute(sql, params)


def test_no_secret_in_audit_or_diagnostics(proxy_factory: Any, pg: Any) -> None:
    proxy = proxy_factory("--audit-parameters", "full", "--log-level", "debug")
    role = unique("sec")
    fdw, server = unique("fdw"), unique("srv")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        _run(conn, f"create role {role} login password '{MARK}-create'")
        _run(conn, f"alter role {role} password '{MARK}-alter'")
        _run(conn, f"alter user {role} with encrypted password '{MARK}-encrypted'")
        _run(conn, f"create foreign data wrapper {fdw}")
        _run(conn, f"create server {server} foreign data wrapper {fdw}")
        _run(
            conn,
            f"create user mapping for {role} server {server} "
            f"options (user 'u', password '{MARK}-mapping')",
        )
        _run(
            conn,
            f"alter user mapping for {role} server {server} "
            f"options (set password '{MARK}-mapping2')",
        )
        _run(conn, f"select dblink_connect('host=127.0.0.1 password={MARK}-dblink')")
        _run(
            conn,
            f"select * from dblink('dbname=x password={MARK}-dblink2', 'select 1') as t(a int)",
        )
        _run(
            conn,
            f"create subscription {unique('sub')} connection "
            f"'host=127.0.0.1 password={MARK}-sub' publication p",
        )
        _run(conn, f"create role {role}x password '{MARK}-unparsable' login (((")
        _run(conn, "select dblink_connect(%s)", (f"password={MARK}-param",))
        _run(conn, f"drop user mapping if exists for {role} server {server}")
        _run(conn, f"drop server if exists {server}")
        _run(conn, f"drop foreign data wrapper if exists {fdw}")
        _run(conn, f"drop role if exists {role}")
    # Password, md5 and SCRAM logins, and a wrong password.
    for user, password in (("carol", "carol-pw"), ("bob", "bob-pw"), ("alice", "alice-pw")):
        with psycopg.connect(proxy.dsn(user=user, password=password, database="app")) as conn:
            conn.execute("select 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(user="carol", password=f"{MARK}-wrong", database="app"))

    proxy.stop()
    written = b"".join(p.read_bytes() for p in Path(proxy.audit_dir).rglob("*") if p.is_file())
    stderr = proxy.stderr_text()
    assert b"create role" in written and b"create user mapping" in written
    for secret in (MARK, "carol-pw", "bob-pw", "alice-pw"):
        assert secret.encode() not in written, f"{secret!r} reached the audit trail"
        assert secret not in stderr, f"{secret!r} reached the diagnostics"
    assert b"***" in written
    events = proxy.events("query")
    (param_event,) = [e for e in events if e.get("statement") == "select dblink_connect($1)"]
    # audit.parameters=full, but this statement may carry credentials: type and length only.
    assert param_event["params"][0]["length"] == len(f"password={MARK}-param")
