"""Suite-wide fixtures: the PostgreSQL server (``pg``) and pgwarden in front of it.

* ``pg`` (session): a cluster started through :mod:`proxy.pgrun`, or ``$PGWARDEN_TEST_DSN``.
  Roles: ``postgres`` (superuser, trust), ``alice`` (SCRAM, "alice-pw"), ``bob`` (md5,
  "bob-pw"), ``carol`` (cleartext password, "carol-pw"), ``dave`` (trust); database ``app``.
* ``proxy_factory`` (function): ``proxy_factory(*flags, policies=(), config_text=None,
  env=None)`` starts ``python -m proxy serve`` against ``pg``; see tests/support/proxyproc.py.
* ``proxy`` (module): one proxy without policies, shared by a test module.

Every test that uses ``pg`` (directly or through another fixture) is marked ``e2e``, so
``pytest -m "not e2e"`` runs the tiers that need no PostgreSQL.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from proxy import pgrun  # noqa: E402
from tests.support import pgcluster  # noqa: E402
from tests.support.pgcluster import PgServer  # noqa: E402
from tests.support.proxyproc import ProxyFactory, ProxyProcess  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # The 120 s per-test timeout in pyproject.toml only works with pytest-timeout loaded; a
    # hung proxy must fail its test, not stall the whole run.
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError(
            "pytest-timeout is required (pip install -e '.[test]'): it enforces per-test timeouts"
        )

    # Also declared in pyproject.toml; repeated so the marks exist whatever the rootdir.
    config.addinivalue_line("markers", "e2e: needs a real PostgreSQL (added to users of `pg`)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")

    # A CI job killed with SIGTERM should still tear down: turn it into an interruption, which
    # pytest handles by running fixture finalizers and pytest_unconfigure.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "pg" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


def pytest_unconfigure(config: pytest.Config) -> None:
    # Even after an interrupted run, no PostgreSQL started by this process outlives it.
    for cluster in pgrun.live_clusters():
        cluster.stop()


@pytest.fixture(scope="session", autouse=True)
def _stop_clusters_at_exit() -> Iterator[None]:
    """Set up first, torn down last: stops any cluster a failing fixture left running."""
    yield
    for cluster in pgrun.live_clusters():
        cluster.stop()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    server = pgcluster.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy_factory(pg: PgServer, tmp_path: Path) -> Iterator[ProxyFactory]:
    factory = ProxyFactory(pg, tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def proxy(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    factory = ProxyFactory(pg, tmp_path_factory.mktemp("proxy"))
    try:
        yield factory()
    finally:
        factory.close()


@pytest.fixture(scope="module")
def store_server() -> Iterator[pgrun.LocalCluster]:
    """A second PostgreSQL server, just for the central store, that tests may pause."""
    cluster = pgrun.LocalCluster(binaries=pgrun.find_binaries())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
