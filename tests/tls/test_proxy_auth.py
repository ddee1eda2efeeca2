"""``auth.mode proxy`` and ``cert`` in the live proxy, and the login rate limiter, end to end.

Both legs TLS (pgwarden's certificate from the ``pki`` CA to clients, ``verify-full`` to the
suite's PostgreSQL). In ``proxy`` mode pgwarden checks SCRAM against a users file holding
the server's own secrets for the roles (as ``pgwarden users add --print-sql`` arranges), so
libpq's default ``channel_binding=prefer`` and ``require`` work: the client binds to
pgwarden's certificate, pgwarden binds to the server's. In ``cert`` mode the client
certificate names the role and pgwarden presents a certificate for that role upstream.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from proxy.auth import scram
from proxy.auth.users import write as write_users
from tests.support.pgcluster import PASSWORDS, PgServer
from tests.support.proxyproc import ProxyFactory, ProxyProcess
from tests.support.tlspair import TestPKI
from tests.tls.proxytls import asyncpg_current_user, both_legs, conninfo


@pytest.fixture
def proxied(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, users_file: Path
) -> ProxyProcess:
    return proxy_factory(
        *both_legs(pki, server_pki, "require"),
        "--auth-mode",
        "proxy",
        "--auth-users-file",
        str(users_file),
    )


@pytest.mark.parametrize("binding", ["prefer", "require"])
def test_proxy_mode_binds_to_pgwardens_certificate(
    proxied: ProxyProcess, pki: TestPKI, binding: str
) -> None:
    for user in ("alice", "tess"):
        with psycopg.connect(conninfo(proxied, pki, user, channel_binding=binding)) as conn:
            assert conn.pgconn.ssl_in_use
            row = conn.execute(
                "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert row == (user, True)
    starts = proxied.wait_for(lambda e: e["type"] == "session_start", count=2)
    assert {e["auth_mode"] for e in starts} == {"proxy"}
    assert all(e["tls"] and e["upstream_tls"] for e in starts)
    assert not any("identity" in e for e in starts)  # the proxy user is the role


def test_proxy_mode_wrong_password_and_unknown_user(proxied: ProxyProcess, pki: TestPKI) -> None:
    for user, password in (("alice", "wrong"), ("nobody", "x"), ("dave", "x")):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(conninfo(proxied, pki, user, password=password)).close()
        assert f'password authentication failed for user "{user}"' in str(info.value)
    failures = proxied.wait_for(lambda e: e["type"] == "auth_failure", count=3)
    assert {(e["user"], e["sqlstate"]) for e in failures} == {
        ("alice", "28P01"),
        ("nobody", "28P01"),
        ("dave", "28P01"),  # no secret in the users file: refused, even though trust upstream
    }
    assert not proxied.events("session_start")


def test_asyncpg_in_proxy_mode(proxied: ProxyProcess, pki: TestPKI) -> None:
    assert asyncpg_current_user(proxied, pki) == "alice"


def test_failed_logins_are_throttled_with_an_event_and_a_metric(
    proxied: ProxyProcess, pki: TestPKI
) -> None:
    for _ in range(10):  # the per-address threshold
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(conninfo(proxied, pki, "alice", password="wrong")).close()
    with pytest.raises(psycopg.OperationalError, match="too many failed logins from this"):
        psycopg.connect(conninfo(proxied, pki, "alice")).close()  # even the right password
    (event,) = proxied.wait_for(lambda e: e["type"] == "login_throttled")
    assert event["limited_by"] == "address" and event["retry_after"] > 0
    assert event["user"] == "alice" and event["client_addr"] == "127.0.0.1"
    with urllib.request.urlopen(proxied.admin_url("/metrics"), timeout=10) as response:
        metrics = response.read().decode()
    assert "pgwarden_logins_throttled_total 1.0" in metrics


def test_cert_mode_maps_the_certificate_to_its_role(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI
) -> None:
    proxy = proxy_factory(
        *both_legs(pki, server_pki, "verify-ca"),
        "--client-tls-ca-file",
        str(pki.ca_file),
        "--auth-mode",
        "cert",
        # cecil may only log in with a certificate: pgwarden presents one for it upstream
        "--upstream-tls-cert-file",
        str(server_pki.cecil_cert),
        "--upstream-tls-key-file",
        str(server_pki.cecil_key),
    )
    cecil = {"sslcert": str(pki.cecil_cert), "sslkey": str(pki.cecil_key)}
    with psycopg.connect(conninfo(proxy, pki, "cecil", **cecil)) as conn:
        row = conn.execute(
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row == ("cecil", True)
    (start,) = proxy.wait_for(lambda e: e["type"] == "session_start")
    assert start["auth_mode"] == "cert" and start["identity"].startswith("CN=cecil,")
    assert start["identity_source"] == "certificate"
    queries = proxy.wait_for(lambda e: e["type"] == "query" and "pg_stat_ssl" in e["statement"])
    assert [(q["user"], q["identity"], q["identity_source"]) for q in queries] == [
        ("cecil", start["identity"], "certificate")
    ]
    with pytest.raises(
        psycopg.OperationalError, match='certificate authentication failed for user "dave"'
    ):
        psycopg.connect(conninfo(proxy, pki, "dave", **cecil)).close()
    # alice's certificate names alice; upstream pgwarden holds no password for her role
    alice = {"sslcert": str(pki.client_cert), "sslkey": str(pki.client_key)}
    with pytest.raises(psycopg.OperationalError, match='no credential for role "alice"'):
        psycopg.connect(conninfo(proxy, pki, "alice", **alice)).close()


def test_passthrough_counts_the_servers_password_refusals(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory()
    wrong = proxy.dsn("alice", "app", "wrong") + "?sslmode=disable"
    for _ in range(10):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong, connect_timeout=10).close()
    with pytest.raises(psycopg.OperationalError, match="too many failed logins from this"):
        psycopg.connect(proxy.dsn("alice", "app", "alice-pw"), connect_timeout=10).close()
    (event,) = proxy.wait_for(lambda e: e["type"] == "login_throttled")
    assert event["limited_by"] == "address"


def test_users_file_is_reread_on_sighup(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, users_file: Path
) -> None:
    full = users_file.read_text()
    users_file.write_text("".join(line + "\n" for line in full.splitlines() if "tess" not in line))
    proxy = proxy_factory(
        *both_legs(pki, server_pki, "require"),
        *("--auth-mode", "proxy", "--auth-users-file", str(users_file)),
    )
    with pytest.raises(psycopg.OperationalError, match='failed for user "tess"'):
        psycopg.connect(conninfo(proxy, pki, "tess")).close()
    users_file.write_text(full)
    proxy.reload()
    deadline = time.monotonic() + 10
    while "users file reloaded" not in proxy.stderr_text():
        assert time.monotonic() < deadline, proxy.stderr_text()
        time.sleep(0.05)  # polling interval, not synchronization
    with psycopg.connect(conninfo(proxy, pki, "tess")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("tess",)


def _private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_passfile_logs_in_upstream_where_the_secrets_differ(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, tmp_path: Path, pg: PgServer
) -> None:
    # pgwarden's own secrets (new salts): the recovered key cannot log in upstream; a
    # password from auth.passfile can, whatever the server asks for (SCRAM, md5, cleartext).
    roles = ("alice", "bob", "carol")
    users = tmp_path / "users.txt"
    write_users(str(users), {r: scram.make_secret(PASSWORDS[r], iterations=4096) for r in roles})
    flags = [*both_legs(pki, server_pki, "require"), "--auth-mode", "proxy"]
    flags += ["--auth-users-file", str(users)]
    keyed = proxy_factory(*flags)
    with pytest.raises(psycopg.OperationalError, match="secret for this role differs"):
        psycopg.connect(conninfo(keyed, pki, "alice")).close()
    lines = "".join(f"{pg.host}:{pg.port}:*:{r}:{PASSWORDS[r]}\n" for r in roles)
    passfile = _private(tmp_path / "pgpass", lines)
    proxy = proxy_factory(*flags, "--auth-passfile", str(passfile))
    for role in roles:
        with psycopg.connect(conninfo(proxy, pki, role, channel_binding="require")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)


def test_cert_mode_with_a_passfile_for_a_password_role(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, tmp_path: Path, pg: PgServer
) -> None:
    passfile = _private(tmp_path / "pgpass", f"*:*:*:alice:{PASSWORDS['alice']}\n")
    proxy = proxy_factory(
        *both_legs(pki, server_pki, "verify-full"),
        *("--client-tls-ca-file", str(pki.ca_file), "--auth-mode", "cert"),
        *("--auth-passfile", str(passfile)),
    )
    alice = {"sslcert": str(pki.client_cert), "sslkey": str(pki.client_key)}
    with psycopg.connect(conninfo(proxy, pki, "alice", password="", **alice)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    (start,) = proxy.wait_for(lambda e: e["type"] == "session_start")
    assert start["identity"].startswith("CN=alice,") and start["auth_mode"] == "cert"


def test_cert_mode_role_map_and_its_reload(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, tmp_path: Path
) -> None:
    ident = tmp_path / "pg_ident.conf"
    ident.write_text(
        "# MAPNAME SYSTEM-USERNAME DATABASE-USERNAME\nops alice dave\nops /^(cecil)$ \\1\n"
    )
    proxy = proxy_factory(
        *both_legs(pki, server_pki, "verify-ca"),
        *("--client-tls-ca-file", str(pki.ca_file), "--auth-mode", "cert"),
        *("--auth-ident-file", str(ident), "--auth-ident-map", "ops"),
        *("--upstream-tls-cert-file", str(server_pki.cecil_cert)),
        *("--upstream-tls-key-file", str(server_pki.cecil_key)),
    )
    alice = {"sslcert": str(pki.client_cert), "sslkey": str(pki.client_key), "password": ""}
    cecil = {"sslcert": str(pki.cecil_cert), "sslkey": str(pki.cecil_key)}
    with psycopg.connect(conninfo(proxy, pki, "dave", **alice)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("dave",)
    with psycopg.connect(conninfo(proxy, pki, "cecil", **cecil)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("cecil",)
    for user, cert in (("alice", alice), ("dave", cecil)):
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(conninfo(proxy, pki, user, **cert)).close()
        assert f'FATAL:  certificate authentication failed for user "{user}"' in str(info.value)
    starts = proxy.wait_for(lambda e: e["type"] == "session_start", count=2)
    assert [(e["user"], e["identity"].split(",")[0], e["identity_source"]) for e in starts] == [
        ("dave", "CN=alice", "certificate"),
        ("cecil", "CN=cecil", "certificate"),
    ]
    failures = proxy.wait_for(lambda e: e["type"] == "auth_failure", count=2)
    assert {e["sqlstate"] for e in failures} == {"28000"}
    # the map is re-read on SIGHUP: alice's line goes, cecil may now be dave
    ident.write_text("ops cecil dave\n")
    proxy.reload()
    deadline = time.monotonic() + 10
    while "ident map reloaded" not in proxy.stderr_text():
        assert time.monotonic() < deadline, proxy.stderr_text()
        time.sleep(0.05)  # polling interval, not synchronization
    with pytest.raises(psycopg.OperationalError, match="certificate authentication failed"):
        psycopg.connect(conninfo(proxy, pki, "dave", **alice)).close()
    with psycopg.connect(conninfo(proxy, pki, "dave", **cecil)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("dave",)
    # a broken map on reload keeps the old one and says so
    ident.write_text("ops cecil\n")
    request = urllib.request.Request(
        proxy.admin_url("/reload"), method="POST", headers=proxy.admin_headers()
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    assert b"expected MAPNAME SYSTEM-USERNAME DATABASE-USERNAME" in body
    with psycopg.connect(conninfo(proxy, pki, "dave", **cecil)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("dave",)
