"""The PostgreSQL server behind the test suite (the ``pg`` fixture).

Either a throwaway cluster started through :mod:`proxy.pgrun` (the same code ``pgwarden demo``
uses) or, when ``$PGWARDEN_TEST_DSN`` names one, an existing server. The roles and the ``app``
database every test may rely on are created in both cases (on an existing server: when they
are missing and the DSN's user may create them).

The suite-started cluster runs with ``ssl=on`` (certificates from a throwaway CA, see
``pg.tls``), and two roles may only log in over TLS: ``tess`` (SCRAM) and ``cecil``
(client certificate, ``pg.tls.cecil_cert``). Clients that do not ask for TLS get plaintext
as before; libpq's default ``sslmode=prefer`` gets TLS when connecting directly.

Only the suite-started cluster controls ``pg_hba.conf``; on an existing server the roles exist
but authenticate however that server says. Tests that assert a specific authentication method
carry the ``needs_managed_cluster`` mark.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from proxy import pgrun
from proxy.errors import PostgresNotFoundError
from tests.support.tlspair import TestPKI, make_pki

SUPERUSER = "postgres"
APP_DATABASE = "app"
TEST_ROLES: tuple[pgrun.Role, ...] = (
    pgrun.Role("alice", "scram-sha-256", "alice-pw"),
    pgrun.Role("bob", "md5", "bob-pw"),
    pgrun.Role("carol", "password", "carol-pw"),
    pgrun.Role("dave", "trust"),
    pgrun.Role("tess", "scram-sha-256", "tess-pw", tls_only=True),
    pgrun.Role("cecil", "cert", tls_only=True),
)
PASSWORDS: dict[str, str] = {r.name: r.password for r in TEST_ROLES if r.password is not None}
DSN_ENV = "PGWARDEN_TEST_DSN"

# For tests that assert how the suite-started cluster authenticates (its pg_hba.conf).
needs_managed_cluster = pytest.mark.skipif(
    bool(os.environ.get(DSN_ENV)),
    reason=f"asserts the suite-started cluster's pg_hba.conf; ${DSN_ENV} is set",
)


@dataclass(slots=True)
class PgServer:
    """What tests see as ``pg``."""

    host: str
    port: int
    superuser: str
    unix_dir: str | None
    bin_dir: Path | None
    managed: bool  # True: started by the suite, pg_hba.conf is ours
    superuser_password: str | None = None
    tls: TestPKI | None = None  # the server's CA and certificates when it has ssl=on
    _cluster: pgrun.LocalCluster | pgrun.ContainerCluster | None = None

    def dsn(
        self, user: str | None = None, database: str = "postgres", password: str | None = None
    ) -> str:
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.superuser_password
        return pgrun.libpq_url(self.host, self.port, user, database, password)

    def stop(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.stop()
        if self.tls is not None:
            shutil.rmtree(self.tls.directory, ignore_errors=True)


def start() -> PgServer:
    """The suite's server: ``$PGWARDEN_TEST_DSN`` if set, else a fresh cluster."""
    external = os.environ.get(DSN_ENV)
    if external:
        return _use_existing(external)
    pki = make_pki(Path(tempfile.mkdtemp(prefix="pgwarden-tls-")))
    server_tls = pgrun.ServerTLS(pki.server_cert, pki.server_key, pki.ca_file)
    try:
        cluster = pgrun.start_cluster(superuser=SUPERUSER, roles=TEST_ROLES, tls=server_tls)
    except BaseException:
        shutil.rmtree(pki.directory, ignore_errors=True)
        raise
    try:
        cluster.create_database(APP_DATABASE)
    except BaseException:
        cluster.stop()
        shutil.rmtree(pki.directory, ignore_errors=True)
        raise
    return PgServer(
        host=cluster.host,
        port=cluster.port,
        superuser=cluster.superuser,
        unix_dir=cluster.unix_dir,
        bin_dir=cluster.bin_dir,
        managed=True,
        tls=pki if isinstance(cluster, pgrun.LocalCluster) and cluster.tls else None,
        _cluster=cluster,
    )


def _use_existing(dsn: str) -> PgServer:
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
        raise RuntimeError(f"${DSN_ENV} must be a postgresql://user@host:port/db URL, got {dsn!r}")
    try:
        bin_dir: Path | None = pgrun.find_binaries().bin_dir
    except PostgresNotFoundError:
        bin_dir = None
    server = PgServer(
        host=parts.hostname,
        port=parts.port or 5432,
        superuser=unquote(parts.username or SUPERUSER),
        unix_dir=None,
        bin_dir=bin_dir,
        managed=False,
        superuser_password=unquote(parts.password) if parts.password else None,
    )
    _provision(server)
    return server


def _provision(server: PgServer) -> None:
    """Create the test roles and the ``app`` database where they are missing."""
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=10) as conn:
        existing = {row[0] for row in conn.execute("SELECT rolname FROM pg_roles")}
        for role in TEST_ROLES:
            if role.name not in existing:
                conn.execute(role.create_sql())
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (APP_DATABASE,)
        ).fetchone()
        if found is None:
            conn.execute(f"CREATE DATABASE {pgrun.quote_ident(APP_DATABASE)}")
    with psycopg.connect(server.dsn(database=APP_DATABASE), autocommit=True) as conn:
        conn.execute(
            f"GRANT CONNECT, TEMPORARY ON DATABASE {pgrun.quote_ident(APP_DATABASE)} TO PUBLIC; "
            "GRANT ALL ON SCHEMA public TO PUBLIC"
        )
