"""Flags and connection strings for the live-proxy TLS tests (pgwarden's certificate from
the ``pki`` CA on the client leg, ``verify-full`` to the suite's PostgreSQL upstream)."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.support.pgcluster import PASSWORDS
from tests.support.proxyproc import ProxyProcess
from tests.support.tlspair import TestPKI


def both_legs(pki: TestPKI, server_pki: TestPKI, mode: str = "prefer") -> list[str]:
    """``pgwarden serve`` flags: client_tls ``mode`` with pgwarden's certificate, and
    upstream verify-full against the server's CA."""
    return [
        "--client-tls-mode",
        mode,
        "--client-tls-cert-file",
        str(pki.server_cert),
        "--client-tls-key-file",
        str(pki.server_key),
        "--upstream-tls-mode",
        "verify-full",
        "--upstream-tls-ca-file",
        str(server_pki.ca_file),
    ]


def conninfo(proxy: ProxyProcess, pki: TestPKI, user: str = "alice", **params: Any) -> str:
    """libpq parameters for ``user`` through ``proxy``: verify-full against pgwarden's CA
    and the suite's password for the role, unless ``params`` say otherwise."""
    return psycopg.conninfo.make_conninfo(
        host=proxy.host,
        port=proxy.port,
        user=user,
        dbname="app",
        connect_timeout=10,
        sslrootcert=str(pki.ca_file),
        **{"sslmode": "verify-full", "password": PASSWORDS.get(user), **params},
    )


def asyncpg_current_user(proxy: ProxyProcess, pki: TestPKI, user: str = "alice") -> Any:
    """Log in with asyncpg over TLS (verify-full against pgwarden's CA): current_user."""
    import asyncio
    import ssl

    import asyncpg  # type: ignore[import-untyped]

    async def main() -> Any:
        conn = await asyncpg.connect(
            host=proxy.host,
            port=proxy.port,
            user=user,
            password=PASSWORDS.get(user),
            database="app",
            ssl=ssl.create_default_context(cafile=str(pki.ca_file)),
            timeout=10,
        )
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close(timeout=5)

    return asyncio.run(main())
