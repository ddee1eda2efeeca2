from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tlspair import TestPKI, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(Path(tmp_path_factory.mktemp("auth-pki")))
