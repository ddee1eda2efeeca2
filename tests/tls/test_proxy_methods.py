"""md5 and cleartext client authentication in ``auth.mode proxy`` (``auth.client_methods``),
end to end with libpq (psycopg; ``require_auth`` proves which method was asked) and a raw
protocol client, compared with what the suite's PostgreSQL says itself.

The server's own roles: bob has an md5 secret (and an md5 pg_hba line), carol a SCRAM secret
and a ``password`` line, alice SCRAM. pgwarden's users file holds the server's secrets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from proxy.auth import scram
from proxy.auth.password import md5_password
from proxy.auth.users import write as write_users
from tests.e2e.kit import sleep_until_cancelled
from tests.support import rawpg
from tests.support.pgcluster import PASSWORDS, PgServer, needs_managed_cluster
from tests.support.proxyproc import ProxyFactory, ProxyProcess
from tests.support.tlspair import TestPKI
from tests.tls.proxytls import both_legs, conninfo

pytestmark = needs_managed_cluster


@pytest.fixture
def server_secrets(pg: PgServer, tmp_path: Path) -> Path:
    """The server's secrets of alice (SCRAM), bob (md5) and carol (SCRAM), mode 0600."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT rolname, rolpassword FROM pg_authid "
            "WHERE rolname IN ('alice', 'bob', 'carol') ORDER BY 1"
        ).fetchall()
    assert rows[1][1].startswith("md5")
    path = tmp_path / "users.txt"
    path.write_text("".join(f'"{name}" "{secret}"\n' for name, secret in rows))
    path.chmod(0o600)
    return path


def _proxy(
    factory: ProxyFactory,
    pki: TestPKI,
    server_pki: TestPKI,
    users: Path,
    methods: str,
    *extra: str,
    client_mode: str = "prefer",
) -> ProxyProcess:
    return factory(
        *both_legs(pki, server_pki, client_mode),
        *("--auth-mode", "proxy", "--auth-users-file", str(users)),
        *("--auth-client-methods", methods, *extra),
    )


def _psql(proxy: ProxyProcess, pki: TestPKI, pg: PgServer, user: str, password: str) -> str:
    """``psql -w`` with PGPASSWORD (libpq answers whatever it is asked): its output, or the
    error it printed."""
    psql = shutil.which("psql") or (str(pg.bin_dir / "psql") if pg.bin_dir else None)
    if psql is None or not os.path.exists(psql):
        pytest.skip("psql is not installed")
    conninfo = (
        f"host={proxy.host} port={proxy.port} user={user} dbname=app sslmode=verify-full "
        f"sslrootcert={pki.ca_file} connect_timeout=10"
    )
    env = {**os.environ, "PGPASSWORD": password}
    env.pop("PGSERVICE", None)
    done = subprocess.run(
        [psql, "-X", "-w", "-At", conninfo, "-c", "SELECT current_user"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return done.stdout.strip() if done.returncode == 0 else done.stderr.strip()


def _fatal(conninfo_text: str) -> str:
    """The server's message of a refused libpq login (after libpq's own prefix)."""
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(conninfo_text).close()
    text = str(info.value)
    assert "FATAL:" in text, text
    return text.split("FATAL:", 1)[1].strip()


def test_md5_where_configured(
    proxy_factory: ProxyFactory,
    pki: TestPKI,
    server_pki: TestPKI,
    server_secrets: Path,
    pg: PgServer,
) -> None:
    proxy = _proxy(proxy_factory, pki, server_pki, server_secrets, "scram-sha-256,md5")
    # bob has an md5 entry: md5 to pgwarden, and pgwarden answers the server's md5 with it
    with psycopg.connect(conninfo(proxy, pki, "bob", require_auth="md5")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("bob",)
    assert _psql(proxy, pki, pg, "bob", PASSWORDS["bob"]) == "bob"
    assert _psql(proxy, pki, pg, "bob", "wrong").endswith(
        'FATAL:  password authentication failed for user "bob"'
    )
    # alice has a SCRAM secret: md5 being allowed changes nothing for her (as PostgreSQL)
    with psycopg.connect(conninfo(proxy, pki, "alice", require_auth="scram-sha-256")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    # a wrong md5 answer: what the server itself says to bob
    direct = psycopg.conninfo.make_conninfo(
        pg.dsn("bob", "app", "wrong"), sslmode="require", connect_timeout=10
    )
    expected = _fatal(direct)
    assert expected == 'password authentication failed for user "bob"'
    assert _fatal(conninfo(proxy, pki, "bob", password="wrong")) == expected
    failures = proxy.wait_for(lambda e: e["type"] == "auth_failure", count=2)
    assert [(e["user"], e["sqlstate"]) for e in failures] == [("bob", "28P01")] * 2
    # md5 not configured: bob's md5 entry is refused at start-up, naming the line
    with pytest.raises(AssertionError, match="exited with 2 before listening") as info:
        proxy_factory(
            *both_legs(pki, server_pki, "prefer"),
            *("--auth-mode", "proxy", "--auth-users-file", str(server_secrets)),
        )
    assert "user 'bob': an md5 entry is only accepted when auth.client_methods lists md5 or" in (
        str(info.value)
    )


def test_md5_raw_client_and_the_rate_limiter(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, server_secrets: Path
) -> None:
    proxy = _proxy(proxy_factory, pki, server_pki, server_secrets, "md5")
    with rawpg.RawConn(proxy.host, proxy.port) as raw:
        raw.login("bob", "app", PASSWORDS["bob"])
        assert raw.simple("SELECT current_user")[1].row() == ["bob"]
    for _ in range(10):  # the per-address threshold
        with rawpg.RawConn(proxy.host, proxy.port) as raw:
            raw.send(rawpg.startup({"user": "bob", "database": "app"}))
            challenge = raw.recv()
            assert (challenge.type, challenge.auth_code()) == ("R", 5)
            raw.send(rawpg.password(md5_password("wrong", "bob", challenge.body[4:8])))
            error = raw.recv().fields()
            assert (error["S"], error["C"]) == ("FATAL", "28P01")
            assert error["M"] == 'password authentication failed for user "bob"'
    with (
        rawpg.RawConn(proxy.host, proxy.port) as raw,
        pytest.raises(AssertionError, match="too many failed logins from this address"),
    ):
        raw.login("bob", "app", PASSWORDS["bob"])
    assert len(proxy.wait_for(lambda e: e["type"] == "auth_failure", count=10)) == 10
    proxy.wait_for(lambda e: e["type"] == "login_throttled")


def test_cleartext_over_tls_checked_against_scram_and_md5_secrets(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, tmp_path: Path, pg: PgServer
) -> None:
    # pgwarden's own SCRAM secrets (new salts) and an md5 entry: the cleartext password is
    # checked against them, then logs in upstream itself (SCRAM, md5 or cleartext, whatever
    # the server asks: alice SCRAM, bob md5, carol password), no passfile needed.
    users = tmp_path / "users.txt"
    write_users(
        str(users),
        {
            "alice": scram.make_secret(PASSWORDS["alice"]),
            "bob": scram.make_secret(PASSWORDS["bob"]),
            "carol": scram.make_secret(PASSWORDS["carol"]),
        },
    )
    proxy = _proxy(proxy_factory, pki, server_pki, users, "password")
    for role in ("alice", "bob", "carol"):
        with psycopg.connect(conninfo(proxy, pki, role, require_auth="password")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
    assert _psql(proxy, pki, pg, "carol", PASSWORDS["carol"]) == "carol"
    assert _fatal(conninfo(proxy, pki, "carol", password="wrong")) == (
        'password authentication failed for user "carol"'
    )
    assert _fatal(conninfo(proxy, pki, "nobody", password="x")) == (
        'password authentication failed for user "nobody"'
    )
    # plaintext client leg: no cleartext password is asked for
    refused = _fatal(conninfo(proxy, pki, "carol", sslmode="disable"))
    assert refused.startswith(
        "pgwarden does not ask for a cleartext password over an unencrypted connection"
    )
    failures = proxy.wait_for(lambda e: e["type"] == "auth_failure", count=3)
    assert [(e["user"], e["sqlstate"]) for e in failures] == [
        ("carol", "28P01"),
        ("nobody", "28P01"),
        ("carol", "28000"),
    ]


def test_cleartext_without_tls_when_allowed_raw_client(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, server_secrets: Path
) -> None:
    proxy = _proxy(
        proxy_factory,
        pki,
        server_pki,
        server_secrets,
        "password",
        "--auth-cleartext-without-tls",
        "true",
    )
    with rawpg.RawConn(proxy.host, proxy.port) as raw:
        first = raw.login("bob", "app", PASSWORDS["bob"])  # md5 entry, checked by hashing
        assert first[0].type == "R" and first[0].auth_code() == 3
        assert raw.simple("SELECT current_user")[1].row() == ["bob"]
    with rawpg.RawConn(proxy.host, proxy.port) as raw:
        raw.send(rawpg.startup({"user": "alice", "database": "app"}))
        assert raw.recv().auth_code() == 3
        raw.send(rawpg.password("wrong"))
        error = raw.recv()
        assert error.type == "E"
        assert error.fields()["S"] == "FATAL" and error.fields()["C"] == "28P01"
        assert error.fields()["M"] == 'password authentication failed for user "alice"'
        raw.wait_closed()


def test_protocol_32_in_proxy_mode(
    proxy_factory: ProxyFactory, server_secrets: Path, pg: PgServer
) -> None:
    """A 3.2 client is served 3.2 by pgwarden (no NegotiateProtocolVersion), whether the
    server speaks 3.0 (PostgreSQL 15: its 4-byte key is relayed) or 3.2 (18: its 32-byte
    key); cancels work. Plaintext legs, so it also runs against the embedded PostgreSQL 18
    (which has no TLS) in .ci/run."""
    proxy = proxy_factory(
        *("--auth-mode", "proxy", "--auth-users-file", str(server_secrets)),
        *("--auth-client-methods", "scram-sha-256,md5"),
    )
    with rawpg.RawConn(proxy.host, proxy.port) as raw:
        got = raw.login("bob", "app", PASSWORDS["bob"], minor=2)
        assert [m.type for m in got][:2] == ["R", "R"]  # md5 request, then Ok: no 'v'
        # the server's own key, as it is: 4 bytes from a 3.0 server, 32 from PostgreSQL 18
        server_major = int(raw.params["server_version"].split(".")[0])
        assert raw.key is not None and len(raw.key[1]) == (32 if server_major >= 18 else 4)
        assert raw.simple("SELECT pg_backend_pid()")[1].row() == [str(raw.key[0])]
    if psycopg.pq.version() < 180000:
        pytest.fail(f"this test needs libpq >= 18, psycopg has {psycopg.pq.version()}")
    dsn = psycopg.conninfo.make_conninfo(
        proxy.dsn("alice", "app", PASSWORDS["alice"]),
        sslmode="disable",
        max_protocol_version="3.2",
        application_name="p32",
        connect_timeout=10,
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.full_protocol_version == 30002
        with ThreadPoolExecutor(1) as pool:
            result = pool.submit(sleep_until_cancelled, conn)
            deadline = time.monotonic() + 5
            while not _running(pg, "p32"):
                assert time.monotonic() < deadline, "pg_sleep did not start"
                time.sleep(0.05)  # polling interval, not synchronization
            conn.cancel_safe(timeout=5)
            assert result.result(timeout=5) == "57014"
        assert conn.execute("select 2").fetchone() == (2,)
    (start,) = [e for e in proxy.events("session_start") if e["user"] == "alice"]
    assert start["protocol_version"] == "3.2"


def _running(pg: PgServer, app: str) -> bool:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where application_name = %s "
            "and state = 'active' and query like 'select pg_sleep%%'",
            (app,),
        ).fetchone()
    return bool(row and row[0])
