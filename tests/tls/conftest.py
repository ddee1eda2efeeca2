from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.support.pgcluster import PgServer
from tests.support.tlspair import TestPKI, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def server_pki(pg: PgServer) -> TestPKI:
    """The CA and certificates of the suite's PostgreSQL (ssl=on)."""
    if pg.tls is None:
        pytest.skip("the suite's PostgreSQL was not started with ssl=on by the suite")
    return pg.tls


@pytest.fixture
def users_file(pg: PgServer, tmp_path: Path) -> Path:
    """The server's SCRAM secrets of alice and tess, in a users file (mode 0600)."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('alice', 'tess')"
        ).fetchall()
    path = tmp_path / "users.txt"
    path.write_text("".join(f'"{name}" "{secret}"\n' for name, secret in rows))
    path.chmod(0o600)
    return path
