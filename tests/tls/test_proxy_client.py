"""The live proxy's client leg over TLS (``client_tls``), end to end.

``pgwarden serve`` with its own certificate (the ``pki`` CA) in front of the suite's
PostgreSQL, reached with ``upstream_tls.mode verify-full`` (the server's CA): psql, psycopg
(libpq 17+, also ``sslnegotiation=direct``) and asyncpg connect with ``sslmode=verify-full``;
``require`` refuses plaintext; ``verify-full`` checks client certificates; the audit trail
records both legs. Authentication here is ``passthrough``, so libpq clients with a SCRAM
role set ``channel_binding=disable`` (docs/tls.md explains why; the default is shown
failing with pgwarden's hint).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import psycopg
import pytest

from tests.support import rawpg
from tests.support.pgcluster import PASSWORDS, PgServer
from tests.support.proxyproc import ProxyFactory, ProxyProcess
from tests.support.tlspair import TestPKI
from tests.tls.proxytls import asyncpg_current_user, both_legs, conninfo


def _start(
    proxy_factory: ProxyFactory,
    pki: TestPKI,
    server_pki: TestPKI,
    mode: str = "prefer",
    *extra: str,
) -> ProxyProcess:
    return proxy_factory(*both_legs(pki, server_pki, mode), *extra)


@pytest.fixture
def both(proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI) -> ProxyProcess:
    return _start(proxy_factory, pki, server_pki)


def _starts(proxy: ProxyProcess, user: str) -> list[dict[str, Any]]:
    return proxy.wait_for(lambda e: e["type"] == "session_start" and e["user"] == user)


def test_psycopg_verify_full_on_both_legs(both: ProxyProcess, pki: TestPKI) -> None:
    with psycopg.connect(conninfo(both, pki, channel_binding="disable")) as conn:
        assert conn.pgconn.ssl_in_use
        (upstream_ssl,) = conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone() or (None,)
    assert upstream_ssl is True
    (start,) = _starts(both, "alice")
    assert start["tls"] is True
    client = start["client_tls"]
    assert client["protocol"] in ("TLSv1.2", "TLSv1.3") and client["cipher"]
    assert client["direct"] is False and client["peer_subject"] is None  # no client cert
    assert start["upstream_tls"]["peer_subject"].startswith("CN=pgwarden")


def test_libpq_default_channel_binding_gets_the_hint_in_passthrough(
    both: ProxyProcess, pki: TestPKI
) -> None:
    # libpq with TLS but no -PLUS offered says "I could bind" (gs2 'y'); the server, on TLS
    # itself, calls that a downgrade. pgwarden adds what to do.
    with pytest.raises(psycopg.OperationalError, match="channel binding") as info:
        psycopg.connect(conninfo(both, pki)).close()
    assert "channel_binding=disable" in str(info.value)
    (failure,) = both.wait_for(lambda e: e["type"] == "auth_failure")
    assert failure["user"] == "alice"


def test_trust_role_with_libpq_defaults(both: ProxyProcess, pki: TestPKI) -> None:
    with psycopg.connect(conninfo(both, pki, user="dave")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == ("dave",)


def test_psql_verify_full(both: ProxyProcess, pki: TestPKI, pg: PgServer) -> None:
    psql = shutil.which("psql") or (str(pg.bin_dir / "psql") if pg.bin_dir else None)
    if psql is None or not os.path.exists(psql):
        pytest.skip("psql is not installed")
    conninfo = (
        f"host={both.host} port={both.port} user=tess dbname=app sslmode=verify-full "
        f"sslrootcert={pki.ca_file} channel_binding=disable connect_timeout=10"
    )
    env = {**os.environ, "PGPASSWORD": PASSWORDS["tess"]}
    env.pop("PGSERVICE", None)
    done = subprocess.run(
        [
            psql,
            "-X",
            "-w",
            "-At",
            conninfo,
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "t"
    assert _starts(both, "tess")[0]["tls"] is True


def test_asyncpg_verify_full(both: ProxyProcess, pki: TestPKI) -> None:
    """asyncpg never binds (gs2 flag n), so passthrough SCRAM works with both legs on TLS."""
    assert asyncpg_current_user(both, pki) == "alice"
    assert _starts(both, "alice")[0]["tls"] is True


def test_direct_tls(both: ProxyProcess, pki: TestPKI) -> None:
    if psycopg.pq.version() < 170000:
        pytest.skip(f"libpq {psycopg.pq.version()} has no sslnegotiation=direct")
    info = conninfo(both, pki, user="dave", sslnegotiation="direct")
    with psycopg.connect(info) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _starts(both, "dave")[0]["client_tls"]["direct"] is True


def test_plaintext_still_served_in_prefer(both: ProxyProcess, pki: TestPKI) -> None:
    with psycopg.connect(conninfo(both, pki, user="dave", sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use
    (start,) = _starts(both, "dave")
    assert start["tls"] is False and start["client_tls"] is None


def test_require_refuses_plaintext(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI
) -> None:
    proxy = _start(proxy_factory, pki, server_pki, "require")
    with rawpg.RawConn(proxy.host, proxy.port, timeout=10) as conn:
        conn.send(rawpg.startup({"user": "dave", "database": "app"}))
        fields = conn.recv().fields()
    assert (fields["S"], fields["C"]) == ("FATAL", "28000")
    assert fields["M"].startswith("pgwarden requires encryption")
    assert "sslmode=require" in fields["H"]
    (failure,) = proxy.wait_for(lambda e: e["type"] == "auth_failure")
    assert failure["sqlstate"] == "28000" and failure["user"] == "dave"
    with psycopg.connect(conninfo(proxy, pki, user="dave")) as ok:
        assert ok.pgconn.ssl_in_use


def test_bytes_behind_the_ssl_request_close_the_connection(both: ProxyProcess) -> None:
    # CVE-2021-23214: what follows an SSLRequest before the answer could be injected.
    with rawpg.RawConn(both.host, both.port, timeout=10) as conn:
        conn.send(rawpg.ssl_request() + rawpg.startup({"user": "dave", "database": "app"}))
        msg = conn.recv()
        assert msg.type == "E" and msg.fields()["C"] == "08P01"
    with rawpg.RawConn(both.host, both.port, timeout=10) as conn:
        conn.send(rawpg.gssenc_request())
        assert conn.recv_bytes(1) == b"N"  # GSSAPI encryption is still declined
        conn.send(rawpg.ssl_request())
        assert conn.recv_bytes(1) == b"S"


def test_verify_full_client_certificates(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI
) -> None:
    proxy = _start(
        proxy_factory, pki, server_pki, "verify-full", "--client-tls-ca-file", str(pki.ca_file)
    )
    cert = {"sslcert": str(pki.client_cert), "sslkey": str(pki.client_key)}
    with psycopg.connect(conninfo(proxy, pki, channel_binding="disable", **cert)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    client = _starts(proxy, "alice")[0]["client_tls"]
    assert client["peer_subject"].startswith("CN=alice,") and len(client["peer_fingerprint"]) == 64
    with pytest.raises(psycopg.OperationalError):  # no certificate: the handshake fails
        psycopg.connect(conninfo(proxy, pki, user="dave")).close()
    with pytest.raises(psycopg.OperationalError, match=r"verify-full\) failed for user \"dave\""):
        psycopg.connect(conninfo(proxy, pki, user="dave", **cert)).close()
