from __future__ import annotations

from pathlib import Path

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
