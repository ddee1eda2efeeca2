"""libpq (through psycopg) against pgwarden's client-leg TLS and SCRAM pieces, assembled
into a toy front end (tests/auth/miniserver.py): sslmode=verify-full, channel binding to
pgwarden's own certificate, direct TLS with ALPN, require mode, wrong passwords."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.auth import scram
from proxy.tls.contexts import TLSHolder
from proxy.tls.settings import ClientMode, ClientTLS, TLSSettings
from tests.auth.miniserver import MiniFront
from tests.support.tlspair import TestPKI

SECRETS = {"alice": scram.make_secret("alice-pw")}


def _front(
    pki: TestPKI, mode: ClientMode = ClientMode.PREFER, uvloop: bool = False, **kw: Any
) -> MiniFront:
    leg = ClientTLS(mode, str(pki.server_cert), str(pki.server_key), **kw)
    holder = TLSHolder.from_settings(TLSSettings(client=leg))
    return MiniFront(holder, SECRETS, use_uvloop=uvloop)


@pytest.fixture(params=["asyncio", "uvloop"])
def front(pki: TestPKI, request: pytest.FixtureRequest) -> Iterator[MiniFront]:
    with _front(pki, uvloop=request.param == "uvloop").running() as running:
        yield running


def _connect(front: MiniFront, pki: TestPKI, password: str = "alice-pw", **params: str) -> None:
    conninfo = psycopg.conninfo.make_conninfo(
        host="127.0.0.1",
        port=front.port,
        user="alice",
        dbname="app",
        password=password,
        connect_timeout=5,
        sslrootcert=str(pki.ca_file),
        **params,
    )
    with psycopg.connect(conninfo) as conn:
        assert conn.info.backend_pid == 1234


def test_verify_full_with_channel_binding_required(front: MiniFront, pki: TestPKI) -> None:
    _connect(front, pki, sslmode="verify-full", channel_binding="require")
    assert front.seen.mechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert front.seen.tls_versions == ["TLSv1.3"] and front.seen.logins == ["alice"]


def test_libpq_defaults_bind_when_tls_is_used(front: MiniFront, pki: TestPKI) -> None:
    _connect(front, pki, sslmode="require")  # channel_binding=prefer is libpq's default
    assert front.seen.logins == ["alice"]


def test_plaintext_login_without_plus(front: MiniFront, pki: TestPKI) -> None:
    _connect(front, pki, sslmode="disable")
    assert front.seen.mechanisms == ["SCRAM-SHA-256"] and front.seen.tls_versions == []


def test_wrong_password_gets_postgres_error(front: MiniFront, pki: TestPKI) -> None:
    with pytest.raises(psycopg.OperationalError) as err:
        _connect(front, pki, password="nope", sslmode="verify-full")
    assert 'password authentication failed for user "alice"' in str(err.value)


def test_direct_tls_with_alpn(front: MiniFront, pki: TestPKI) -> None:
    if psycopg.pq.version() < 170000:
        pytest.skip(f"libpq {psycopg.pq.version()} has no sslnegotiation=direct")
    _connect(front, pki, sslmode="verify-full", sslnegotiation="direct")
    assert front.seen.tls_versions == ["TLSv1.3"] and front.seen.logins == ["alice"]


def test_require_mode_refuses_plaintext(pki: TestPKI) -> None:
    with _front(pki, ClientMode.REQUIRE).running() as front:
        with pytest.raises(psycopg.OperationalError) as err:
            _connect(front, pki, sslmode="disable")
        assert "pgwarden requires encryption" in str(err.value)
        _connect(front, pki, sslmode="verify-full")  # TLS is served


def test_no_direct_tls_when_disabled(pki: TestPKI) -> None:
    if psycopg.pq.version() < 170000:
        pytest.skip("libpq without sslnegotiation=direct")
    with _front(pki, direct=False).running() as front:
        with pytest.raises(psycopg.OperationalError):
            _connect(front, pki, sslmode="verify-full", sslnegotiation="direct")
        assert front.listener is not None and front.listener.refused == 1


def test_verify_full_client_certificate(pki: TestPKI) -> None:
    with _front(pki, ClientMode.VERIFY_FULL, ca_file=str(pki.ca_file)).running() as front:
        _connect(
            front,
            pki,
            sslmode="verify-full",
            sslcert=str(pki.client_cert),
            sslkey=str(pki.client_key),
        )
        with pytest.raises(psycopg.OperationalError):
            _connect(front, pki, sslmode="verify-full")  # no certificate: handshake refused


def test_psql_verify_full_with_channel_binding(front: MiniFront, pki: TestPKI) -> None:
    """The distribution's psql (its own libpq, not psycopg's) against the same pieces."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    conninfo = (
        f"host=127.0.0.1 port={front.port} user=alice dbname=app sslmode=verify-full "
        f"sslrootcert={pki.ca_file} channel_binding=require connect_timeout=5"
    )
    env = {**os.environ, "PGPASSWORD": "alice-pw"}
    env.pop("PGSERVICE", None)
    done = subprocess.run(
        [psql, "-X", "-w", conninfo, "-c", "\\q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert front.seen.logins == ["alice"] and front.seen.tls_versions


def test_asyncpg_over_tls_does_not_bind_and_logs_in(front: MiniFront, pki: TestPKI) -> None:
    """asyncpg implements SCRAM without channel binding (gs2 flag n): accepted over TLS."""
    import asyncio

    import asyncpg  # type: ignore[import-untyped]

    ctx = ssl.create_default_context(cafile=str(pki.ca_file))

    async def main() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=front.port,
            user="alice",
            password="alice-pw",
            database="app",
            ssl=ctx,
            timeout=5,
        )
        await conn.close(timeout=5)

    asyncio.run(main())
    assert front.seen.logins == ["alice"] and front.seen.tls_versions
