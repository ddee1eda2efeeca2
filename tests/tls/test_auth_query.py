"""``auth_query``: pgwarden looks each user's secret up on the suite's PostgreSQL (over
``verify-full`` TLS, as ``auth.auth_user``), as PgBouncer does, end to end with libpq."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.auth import scram
from proxy.auth.users import write as write_users
from tests.support.pgcluster import PgServer, needs_managed_cluster
from tests.support.proxyproc import ProxyFactory, ProxyProcess
from tests.support.tlspair import TestPKI
from tests.tls.proxytls import both_legs, conninfo

pytestmark = needs_managed_cluster

AUTH_USER = "pgw_auth_lookup"
AUTH_PASSWORD = "lookup-pw"
# PgBouncer's recommended set-up: an unprivileged role calling a SECURITY DEFINER function
# (in the database postgres, auth.auth_dbname; clients log in to app).
QUERY = "SELECT usename, passwd FROM pgw_lookup($1)"


@pytest.fixture
def lookup_role(pg: PgServer) -> Iterator[str]:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP FUNCTION IF EXISTS pgw_lookup(text); DROP ROLE IF EXISTS {AUTH_USER}")
        conn.execute(f"CREATE ROLE {AUTH_USER} LOGIN PASSWORD '{AUTH_PASSWORD}'")
        conn.execute(
            "CREATE FUNCTION pgw_lookup(i_username text, OUT usename name, OUT passwd text) "
            "RETURNS record AS $$ SELECT usename, passwd FROM pg_catalog.pg_shadow "
            "WHERE usename = i_username $$ LANGUAGE sql SECURITY DEFINER"
        )
        conn.execute("REVOKE ALL ON FUNCTION pgw_lookup(text) FROM public")
        conn.execute(f"GRANT EXECUTE ON FUNCTION pgw_lookup(text) TO {AUTH_USER}")
    try:
        yield AUTH_USER
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP FUNCTION pgw_lookup(text); DROP ROLE {AUTH_USER}")


def _passfile(tmp_path: Path, password: str = AUTH_PASSWORD) -> Path:
    path = tmp_path / "pgpass"
    path.write_text(f"*:*:*:{AUTH_USER}:{password}\n")
    path.chmod(0o600)
    return path


def _proxy(
    factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, passfile: Path, *extra: str
) -> ProxyProcess:
    return factory(
        *both_legs(pki, server_pki, "require"),
        *("--auth-mode", "proxy", "--auth-auth-user", AUTH_USER),
        *("--auth-auth-query", QUERY, "--auth-auth-dbname", "postgres"),
        *("--auth-passfile", str(passfile), *extra),
    )


def test_auth_query_logs_users_in_with_the_servers_secrets(
    proxy_factory: ProxyFactory,
    pki: TestPKI,
    server_pki: TestPKI,
    lookup_role: str,
    tmp_path: Path,
    pg: PgServer,
) -> None:
    proxy = _proxy(
        proxy_factory,
        pki,
        server_pki,
        _passfile(tmp_path),
        "--auth-client-methods",
        "scram-sha-256,md5",
    )
    # tess: SCRAM, bound to pgwarden's certificate; bob: md5 secret, answered upstream too
    with psycopg.connect(conninfo(proxy, pki, "tess", channel_binding="require")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("tess",)
    with psycopg.connect(conninfo(proxy, pki, "bob", require_auth="md5")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("bob",)
    # wrong password, unknown role, role without a password: alike, as PostgreSQL says it
    for user, password in (("tess", "wrong"), ("nobody", "x"), ("dave", "x")):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(conninfo(proxy, pki, user, password=password)).close()
        assert f'FATAL:  password authentication failed for user "{user}"' in str(info.value)
    failures = proxy.wait_for(lambda e: e["type"] == "auth_failure", count=3)
    assert {(e["user"], e["sqlstate"]) for e in failures} == {
        ("tess", "28P01"),
        ("nobody", "28P01"),
        ("dave", "28P01"),
    }


def test_auth_query_results_are_cached(
    proxy_factory: ProxyFactory,
    pki: TestPKI,
    server_pki: TestPKI,
    lookup_role: str,
    tmp_path: Path,
    pg: PgServer,
) -> None:
    proxy = _proxy(
        proxy_factory, pki, server_pki, _passfile(tmp_path), "--auth-auth-query-cache", "1h"
    )
    with psycopg.connect(conninfo(proxy, pki, "alice")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"REVOKE EXECUTE ON FUNCTION pgw_lookup(text) FROM {AUTH_USER}")
    # alice's secret is cached: her next login does not ask the server
    with psycopg.connect(conninfo(proxy, pki, "alice")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    # tess is not: the lookup fails (permission denied), the client gets a clear FATAL
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(conninfo(proxy, pki, "tess")).close()
    assert 'could not look up the password of user "tess" on the server (auth_query)' in str(
        info.value
    )
    assert "permission denied for function pgw_lookup" in proxy.stderr_text()


def test_auth_query_failures_are_clear(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, lookup_role: str, tmp_path: Path
) -> None:
    # auth_user's password is wrong: the client is told pgwarden could not check its
    # password; the log says why
    proxy = _proxy(proxy_factory, pki, server_pki, _passfile(tmp_path, "not-it"))
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(conninfo(proxy, pki, "alice")).close()
    text = str(info.value)
    assert 'FATAL:  pgwarden could not look up the password of user "alice"' in text
    deadline = time.monotonic() + 10
    while f"the server refused auth.auth_user {AUTH_USER}" not in proxy.stderr_text():
        assert time.monotonic() < deadline, proxy.stderr_text()
        time.sleep(0.05)  # polling interval, not synchronization
    assert 'password authentication failed for user "pgw_auth_lookup"' in proxy.stderr_text()
    # a query that does not return (user name, secret)
    wrong = proxy_factory(
        *both_legs(pki, server_pki, "require"),
        *("--auth-mode", "proxy", "--auth-auth-user", AUTH_USER, "--auth-auth-dbname", "postgres"),
        *("--auth-auth-query", "SELECT usename, passwd, 1 FROM pgw_lookup($1)"),
        *("--auth-passfile", str(_passfile(tmp_path))),
    )
    with pytest.raises(psycopg.OperationalError, match="could not look up the password"):
        psycopg.connect(conninfo(wrong, pki, "alice")).close()
    deadline = time.monotonic() + 10
    while "must return two columns (user name, secret); it returned 3" not in wrong.stderr_text():
        assert time.monotonic() < deadline, wrong.stderr_text()
        time.sleep(0.05)  # polling interval, not synchronization
    # the server unreachable
    closed = _proxy(
        proxy_factory, pki, server_pki, _passfile(tmp_path), "--upstream", "127.0.0.1:1"
    )
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(conninfo(closed, pki, "alice")).close()
    assert 'could not look up the password of user "alice"' in str(info.value)
    deadline = time.monotonic() + 10
    while "auth_query lookup failed" not in closed.stderr_text():
        assert time.monotonic() < deadline, closed.stderr_text()
        time.sleep(0.05)  # polling interval, not synchronization
    assert "could not connect to the upstream server at 127.0.0.1:1" in closed.stderr_text()


def test_users_file_first_then_auth_query(
    proxy_factory: ProxyFactory,
    pki: TestPKI,
    server_pki: TestPKI,
    lookup_role: str,
    tmp_path: Path,
) -> None:
    # The users file knows alice with another password: it is asked first, so the server's
    # secret for her is never looked up; tess is not in the file, so it is.
    users = tmp_path / "users.txt"
    write_users(str(users), {"alice": scram.make_secret("the-files-password")})
    proxy = _proxy(
        proxy_factory, pki, server_pki, _passfile(tmp_path), "--auth-users-file", str(users)
    )
    with pytest.raises(psycopg.OperationalError, match='failed for user "alice"'):
        psycopg.connect(conninfo(proxy, pki, "alice")).close()
    with psycopg.connect(conninfo(proxy, pki, "tess")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("tess",)
