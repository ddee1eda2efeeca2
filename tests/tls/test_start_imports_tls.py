"""With TLS on a leg, what SCRAM channel binding needs (``cryptography``) is imported at start,
not at the first login on the event loop; without TLS it is not imported at all
(tests/test_start_imports.py)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.support.loaded import start_loaded
from tests.support.pgcluster import PgServer
from tests.support.tlspair import TestPKI
from tests.tls.proxytls import conninfo

pytestmark = pytest.mark.e2e


def test_tls_serve_imports_cryptography_at_start(
    pg: PgServer, pki: TestPKI, tmp_path: Path
) -> None:
    proxy = start_loaded(
        pg,
        tmp_path / "proxy",
        "--client-tls-mode",
        "prefer",
        "--client-tls-cert-file",
        str(pki.server_cert),
        "--client-tls-key-file",
        str(pki.server_key),
    )
    try:
        assert "cryptography.x509" in proxy.modules()  # before any client logged in
        with psycopg.connect(conninfo(proxy, pki), autocommit=True) as conn:
            assert conn.info.pgconn.ssl_in_use
            assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    finally:
        proxy.stop()
