"""The end identity through a running proxy (issue 11 §4): a trusted startup parameter
recorded as client_supplied, policies by identity on one shared role, filters over the
trail, propagation to the server as pgwarden.identity, and every forging attempt refused.
(The certificate source is tested in tests/tls/test_proxy_auth.py.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.e2e.kit import admin, unique
from tests.support.proxyproc import ProxyFactory, ProxyProcess

pytestmark = pytest.mark.e2e

PATTERN = r"^billing/(?P<identity>[a-z]+)$"
POLICY = """
rules:
  - id: mallory-reads-only
    when:
      classes: [write, ddl]
      identities: [mallory]
    action: block
  - id: drops-need-a-proven-dba
    when:
      commands: ["DROP TABLE"]
    unless:
      identities: [dba]
      identity_sources: [certificate, proxy_user]
    action: block
"""
GUC = "select current_setting('pgwarden.identity'), current_setting('pgwarden.identity_source')"


@pytest.fixture
def proxy(proxy_factory: ProxyFactory, tmp_path: Path) -> ProxyProcess:
    policy = tmp_path / "identity.yaml"
    policy.write_text(POLICY)
    return proxy_factory(
        "--identity-parameter",
        "application_name",
        "--identity-pattern",
        PATTERN,
        "--identity-propagate",
        "guc",
        policies=[policy],
    )


@pytest.fixture
def table(pg: Any) -> Any:
    name = unique("ident")
    with admin(pg) as conn:
        conn.execute(f"create table {name} (id int)")
    yield name
    with admin(pg) as conn:
        conn.execute(f"drop table if exists {name}")


def connect(proxy: ProxyProcess, app: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(), application_name=app, autocommit=True, **kw)


def queries(proxy: ProxyProcess, marker: str, count: int = 1) -> list[dict[str, Any]]:
    return proxy.wait_for(
        lambda e: e["type"] == "query" and marker in (e.get("statement") or ""), count=count
    )


def test_one_role_two_people_a_policy_tells_them_apart(
    proxy: ProxyProcess, table: str, pg: Any
) -> None:
    with connect(proxy, "billing/alice") as alice, connect(proxy, "billing/mallory") as mallory:
        alice.execute(f"insert into {table} values (1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            mallory.execute(f"insert into {table} values (2)")
        assert "mallory-reads-only" in str(info.value)
        assert mallory.execute(f"select count(*) from {table}").fetchone() == (1,)
        # A client-supplied "dba" is not exempt from the drop rule: only a proven one is.
        with (
            connect(proxy, "billing/dba") as dba,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            dba.execute(f"drop table {table}")
    with admin(pg) as direct:
        assert direct.execute(f"select id from {table}").fetchall() == [(1,)]
    inserts = queries(proxy, f"insert into {table}", count=2)
    assert sorted(
        (e["identity"], e["identity_source"], e["decision"]["action"]) for e in inserts
    ) == [("alice", "client_supplied", "allow"), ("mallory", "client_supplied", "block")]
    starts = proxy.wait_for(lambda e: e["type"] == "session_start" and "identity" in e, count=3)
    assert {e["identity"] for e in starts} == {"alice", "mallory", "dba"}
    assert all(e["user"] == starts[0]["user"] for e in starts)  # one shared role


def test_live_sessions_show_the_identity(proxy: ProxyProcess) -> None:
    import urllib.request

    with connect(proxy, "billing/alice"), connect(proxy, "psql"):
        request = urllib.request.Request(
            proxy.admin_url("/sessions"), headers=proxy.admin_headers()
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            sessions = json.loads(response.read())
    seen = {(s["application_name"], s["identity"], s["identity_source"]) for s in sessions}
    assert {("billing/alice", "alice", "client_supplied"), ("psql", None, None)} <= seen


def test_no_claim_no_identity_and_the_server_sees_pgwarden_identity(proxy: ProxyProcess) -> None:
    with connect(proxy, "billing/alice") as conn:
        assert conn.execute(GUC).fetchone() == ("alice", "client_supplied")
    with connect(proxy, "psql") as conn:
        assert conn.execute(GUC).fetchone() == ("", "")
        conn.execute("select 'anonymous marker'")
    (event,) = queries(proxy, "anonymous marker")
    assert "identity" not in event and "identity_source" not in event


def test_forged_startup_settings_are_stripped(proxy: ProxyProcess) -> None:
    for options in ("-c pgwarden.identity=root", "-Ec pgwarden.identity=root"):
        with connect(proxy, "billing/alice", options=options) as conn:
            assert conn.execute(GUC).fetchone() == ("alice", "client_supplied")
    with connect(proxy, "psql", options="--pgwarden.identity_source=certificate") as conn:
        assert conn.execute(GUC).fetchone() == ("", "")

    async def as_startup_key() -> tuple[str, str]:
        # asyncpg sends server_settings as startup keys, in any case the client likes.
        conn = await asyncpg.connect(
            proxy.dsn(),
            server_settings={"application_name": "billing/eve", "PGWARDEN.IDENTITY": "root"},
        )
        try:
            row = await conn.fetchrow(GUC)
            assert row is not None
            return row[0], row[1]
        finally:
            await conn.close()

    assert asyncio.run(as_startup_key()) == ("eve", "client_supplied")
    starts = proxy.wait_for(lambda e: e.get("identity_settings_stripped") is True, count=4)
    assert len(starts) == 4


@pytest.mark.parametrize(
    "attempt",
    [
        "set pgwarden.identity = 'root'",
        "set local pgwarden.identity = 'root'",
        'set "PGWARDEN.IDENTITY" to root',
        "set pgwarden.identity_source = 'certificate'",
        "select set_config('pgwarden.identity', 'root', false)",
        "select 1; select set_config('pgwarden.identity', 'root', false)",
        "do $$ begin perform set_config('pgwarden.identity', 'root', false); end $$",
        "create function pg_temp.forge() returns text language sql"
        " as $$ select set_config('pgwarden.identity', 'root', false) $$",
    ],
)
def test_setting_it_later_is_refused_whatever_the_policy(proxy: ProxyProcess, attempt: str) -> None:
    with connect(proxy, "billing/alice") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(attempt)
        assert "set by pgwarden" in str(info.value)
        assert conn.execute(GUC).fetchone() == ("alice", "client_supplied")
        # Extended protocol, with the name as a parameter: decided with the bound value.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select set_config(%s, 'root', false)", ("pgwarden.identity",))
        assert conn.execute(GUC).fetchone() == ("alice", "client_supplied")
        # RESET goes back to the startup value, which is pgwarden's: allowed, harmless.
        conn.execute("reset pgwarden.identity")
        conn.execute("reset all")
        assert conn.execute(GUC).fetchone() == ("alice", "client_supplied")
        assert conn.execute("select set_config('search_path', 'public', false)").fetchone()


def test_a_later_application_name_is_recorded_not_adopted(proxy: ProxyProcess, table: str) -> None:
    with connect(proxy, "billing/alice") as conn:
        conn.execute("set application_name = 'billing/mallory'")
        conn.execute(f"insert into {table} values (3)")  # still alice: allowed
        assert conn.execute(GUC).fetchone() == ("alice", "client_supplied")
    (ignored,) = proxy.wait_for(lambda e: e["type"] == "identity_claim_ignored")
    assert ignored["claimed"] == "mallory" and ignored["identity"] == "alice"
    assert ignored["application_name"] == "billing/mallory"
    (insert,) = queries(proxy, f"insert into {table} values (3)")
    assert (insert["application_name"], insert["identity"]) == ("billing/mallory", "alice")
    assert insert["decision"]["action"] == "allow"


def test_the_server_reading_decides_which_application_name_counts(proxy: ProxyProcess) -> None:
    """options=-c application_name and the application_name key: the key wins, on the
    server as in pgwarden (postinit.c reads the options first)."""
    options = "-c application_name=billing/mallory"
    with connect(proxy, "billing/alice", options=options) as conn:
        assert conn.execute("show application_name").fetchone() == ("billing/alice",)
        assert conn.execute(GUC).fetchone() == ("alice", "client_supplied")


def test_filters_find_each_identity(proxy: ProxyProcess, tmp_path: Path) -> None:
    for who in ("alice", "bob", "alice"):
        with connect(proxy, f"billing/{who}") as conn:
            conn.execute(f"select 'filter marker {who}'")
    queries(proxy, "filter marker", count=3)

    def cli(*args: str) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, check=True
        )
        return run.stdout

    out = cli("logs", str(proxy.audit_dir), "--format", "json", "--identity", "alice", "--grep",
              "filter marker")  # fmt: skip
    assert [json.loads(line)["statement"] for line in out.splitlines()] == [
        "select 'filter marker alice'"
    ] * 2
    report = json.loads(
        cli("report", str(proxy.audit_dir), "--format", "json", "--grep", "filter marker")
    )
    rows = {r["key"]: r["statements"] for r in report["by_identity"]}
    assert rows == {"alice (client_supplied)": 2, "bob (client_supplied)": 1}


def test_claims_only_from_listed_networks(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(
        "--identity-parameter",
        "app.end_user",
        "--identity-client-addrs",
        "10.0.0.0/8",
    )
    with psycopg.connect(proxy.dsn(), options="-c app.end_user=carol") as conn:
        # The server still gets the client's own setting; pgwarden just does not believe it.
        assert conn.execute("show app.end_user").fetchone() == ("carol",)
    (start,) = proxy.wait_for(lambda e: e["type"] == "session_start")
    assert "identity" not in start
    assert start["identity_claim_refused"] == (
        "client address 127.0.0.1 is not in identity.client_addrs"
    )
    assert start["identity_claimed"] == "carol"


def test_a_custom_setting_names_the_person(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory("--identity-parameter", "app.end_user")
    with psycopg.connect(proxy.dsn(), options="-c app.end_user=carol") as conn:
        conn.execute("select 'custom marker'")
    (event,) = queries(proxy, "custom marker")
    assert (event["identity"], event["identity_source"]) == ("carol", "client_supplied")
    # Without identity.propagate the reserved names mean nothing to pgwarden: no guard.
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("set pgwarden.identity = 'anything'")


def test_bad_identity_settings_stop_the_start(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--check-config",
         "--identity-parameter", "application_name", "--audit-dir", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert "identity.pattern" in run.stderr and "needs identity.pattern" in run.stderr


def test_a_role_default_does_not_override_what_pgwarden_sends(proxy: ProxyProcess, pg: Any) -> None:
    role = unique("identrole")
    with admin(pg) as conn:
        conn.execute(f"create role {role} login password 'pw'")
        conn.execute(f"alter role {role} set pgwarden.identity = 'forged'")
    try:
        direct = pg.dsn(user=role, password="pw")
        with psycopg.connect(direct) as conn:  # without pgwarden the role default applies
            row = conn.execute("select current_setting('pgwarden.identity')").fetchone()
            assert row == ("forged",)
        dsn = proxy.dsn(user=role, password="pw")
        with psycopg.connect(dsn, application_name="billing/alice") as conn:
            assert conn.execute(GUC).fetchone() == ("alice", "client_supplied")
    finally:
        with admin(pg) as conn:
            conn.execute(f"drop role {role}")
