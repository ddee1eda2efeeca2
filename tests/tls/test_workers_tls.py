"""Workers behind client TLS: with direct TLS accepted next to SSLRequest, each worker's
sniffing listener joins the SO_REUSEPORT group, and TLS clients spread over both workers."""

from __future__ import annotations

import psycopg
import pytest

from tests.e2e.kit import wait_until
from tests.support.proxyproc import ProxyFactory, read_events
from tests.support.tlspair import TestPKI
from tests.tls.proxytls import both_legs, conninfo

pytestmark = pytest.mark.e2e


def test_tls_clients_spread_over_two_workers(
    proxy_factory: ProxyFactory, pki: TestPKI, server_pki: TestPKI
) -> None:
    proxy = proxy_factory(*both_legs(pki, server_pki, "require"), "--workers", "2")
    wait_until(lambda: "all 2 workers ready" in proxy.stderr_text(), 30, "the workers")
    assert proxy.stderr_text().count("listening on ('127.0.0.1'") == 2
    conns = [
        psycopg.connect(conninfo(proxy, pki, channel_binding="disable", application_name=f"t{i}"))
        for i in range(16)
    ]
    try:
        for conn in conns:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()
    proxy.stop()
    workers = {
        w
        for w, directory in ((0, proxy.audit_dir), (1, proxy.audit_dir / "worker-1"))
        for e in read_events(directory)
        if e["type"] == "session_start" and e.get("tls")
    }
    assert workers == {0, 1}, "16 TLS sessions all on one worker (2**-15 by chance)"
