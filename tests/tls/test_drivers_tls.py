"""pgjdbc and node-postgres with TLS through the live proxy: ``verify-full`` against
pgwarden's throwaway CA on the client leg, ``verify-full`` to the suite's PostgreSQL, in
``passthrough`` and ``proxy`` auth modes, and SCRAM-SHA-256-PLUS where the driver binds.

The drivers run the ``whoami`` scenario of ``tests/drivers`` (current_user, the server's
``pg_stat_ssl`` for its own leg, the backend pid as the driver and the server see it).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import drivers
from tests.support.pgcluster import PASSWORDS, needs_managed_cluster
from tests.support.proxyproc import ProxyFactory, ProxyProcess
from tests.support.tlspair import TestPKI
from tests.tls.proxytls import both_legs

pytestmark = needs_managed_cluster

# pgjdbc's channelBinding property (SCRAM-SHA-256-PLUS) arrived in 42.7.4.
PGJDBC_CHANNEL_BINDING = (42, 7, 4)


@pytest.fixture(scope="module")
def java_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("java-tls")


@pytest.fixture(params=["passthrough", "proxy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def proxied(
    mode: str, proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI, users_file: Path
) -> ProxyProcess:
    extra = (
        ["--auth-mode", "proxy", "--auth-users-file", str(users_file)] if mode == "proxy" else []
    )
    return proxy_factory(*both_legs(pki, server_pki, "require"), *extra)


def _jdbc(proxy: ProxyProcess, pki: TestPKI, user: str, **params: str) -> str:
    query = urllib.parse.urlencode(
        {
            "user": user,
            "password": PASSWORDS[user],
            "ssl": "true",
            "sslmode": "verify-full",
            "sslrootcert": str(pki.ca_file),
            **params,
        }
    )
    return f"jdbc:postgresql://{proxy.host}:{proxy.port}/app?{query}"


def _node(proxy: ProxyProcess, pki: TestPKI, user: str, **extra: Any) -> dict[str, Any]:
    return {
        "host": proxy.host,
        "port": proxy.port,
        "user": user,
        "database": "app",
        "password": PASSWORDS[user],
        "application_name": "node-tls",
        # verify-full: the chain to pgwarden's CA, and the name (pgwarden's certificate
        # names localhost and 127.0.0.1; SNI carries the name)
        "ssl": {
            "ca": pki.ca_file.read_text(),
            "servername": "localhost",
            "rejectUnauthorized": True,
        },
        **extra,
    }


def _started(proxy: ProxyProcess, user: str) -> dict[str, Any]:
    (start,) = proxy.wait_for(lambda e: e["type"] == "session_start" and e["user"] == user)
    assert start["tls"] and start["client_tls"]["protocol"].startswith("TLSv1.")
    assert start["upstream_tls"]
    return start


def _check(result: drivers.Result, user: str) -> None:
    assert result["user"] == user
    assert result["server_ssl"] is True  # the server's own leg, from pg_stat_ssl
    assert result["driver_pid"] == result["server_pid"]


@pytest.mark.parametrize("user", ["alice", "tess"])
def test_pgjdbc_verify_full(
    mode: str, proxied: ProxyProcess, pki: TestPKI, java_workdir: Path, user: str
) -> None:
    result = drivers.run_pgjdbc_url("whoami", _jdbc(proxied, pki, user), "jdbc-tls", java_workdir)
    _check(result, user)
    start = _started(proxied, user)
    assert start["auth_mode"] == mode
    if mode == "proxy":
        assert start["client_auth"] == "SCRAM-SHA-256"  # pgjdbc 42.5 never binds


def test_pgjdbc_rejects_a_certificate_it_cannot_verify(
    proxied: ProxyProcess, pki: TestPKI, server_pki: TestPKI, java_workdir: Path
) -> None:
    # the server's CA is not the one that signed pgwarden's certificate
    url = _jdbc(proxied, pki, "alice", sslrootcert=str(server_pki.ca_file))
    if server_pki.ca_file.read_bytes() == pki.ca_file.read_bytes():
        pytest.fail("the test needs two different CAs")
    with pytest.raises(AssertionError, match=r"PKIX|SSL|certificate"):
        drivers.run_pgjdbc_url("whoami", url, "jdbc-tls", java_workdir)


def test_pgjdbc_channel_binding(
    proxy_factory: ProxyFactory,
    pki: TestPKI,
    server_pki: TestPKI,
    users_file: Path,
    java_workdir: Path,
) -> None:
    version = drivers.pgjdbc_version()
    if version < PGJDBC_CHANNEL_BINDING:
        pytest.skip(
            f"pgjdbc {'.'.join(map(str, version))} (Debian 12's) has no channelBinding "
            "property; SCRAM-SHA-256-PLUS arrived in pgjdbc 42.7.4"
        )
    proxy = proxy_factory(
        *both_legs(pki, server_pki, "require"),
        *("--auth-mode", "proxy", "--auth-users-file", str(users_file)),
    )
    url = _jdbc(proxy, pki, "alice", channelBinding="require")
    _check(drivers.run_pgjdbc_url("whoami", url, "jdbc-tls", java_workdir), "alice")
    assert _started(proxy, "alice")["client_auth"] == "SCRAM-SHA-256-PLUS"


@pytest.mark.parametrize("user", ["alice", "tess"])
def test_node_postgres_verify_full(
    mode: str, proxied: ProxyProcess, pki: TestPKI, user: str
) -> None:
    _check(drivers.run_node_config("whoami", _node(proxied, pki, user)), user)
    start = _started(proxied, user)
    assert start["auth_mode"] == mode
    if mode == "proxy":
        assert start["client_auth"] == "SCRAM-SHA-256"


def test_node_postgres_channel_binding(mode: str, proxied: ProxyProcess, pki: TestPKI) -> None:
    config = _node(proxied, pki, "tess", enableChannelBinding=True)
    if mode == "proxy":
        # bound to pgwarden's certificate; pgwarden binds upstream to the server's
        _check(drivers.run_node_config("whoami", config), "tess")
        assert _started(proxied, "tess")["client_auth"] == "SCRAM-SHA-256-PLUS"
        return
    # passthrough with TLS on both legs: -PLUS is removed from the server's offer, the
    # driver says "I bind, you do not" (gs2 flag y) and the server calls it a downgrade —
    # the matrix in docs/tls.md (node-postgres prints no hint; the audit has the failure).
    with pytest.raises(AssertionError) as info:
        drivers.run_node_config("whoami", config)
    assert "SCRAM channel binding negotiation error" in str(info.value)
    (failure,) = proxied.wait_for(lambda e: e["type"] == "auth_failure")
    assert failure["sqlstate"] == "28000" and failure["user"] == "tess"
