"""The demo's TLS pieces: the configuration they produce is valid and verifies."""

from __future__ import annotations

import ssl

from proxy import config, tls
from proxy.commands import demo_tls
from proxy.tls.peer import tls_facts
from tests.support.tlspair import handshake


def test_demo_tls_configuration_loads_and_verifies() -> None:
    made = demo_tls.DemoTLS.create()
    try:
        cfg = config.defaults().replace(**made.config_changes(upstream_has_tls=True))
        holder = tls.load(cfg)  # files exist, the key is private, modes are consistent
        current = holder.current
        assert current.client is not None and current.upstream is not None
        client = ssl.create_default_context(cafile=str(made.pki.ca_file))
        client.set_alpn_protocols(["postgresql"])
        for name in ("localhost", "127.0.0.1"):
            _, obj = handshake(current.client, client, name)
            assert tls_facts(obj).peer_subject.startswith("CN=pgwarden")
        url = made.verify_full_url("postgresql://alice@127.0.0.1:6432/demo")
        assert url == (
            "postgresql://alice@127.0.0.1:6432/demo?sslmode=verify-full"
            f"&sslrootcert={made.pki.ca_file}"
        )
        docker = made.config_changes(upstream_has_tls=False)
        assert "upstream_tls__mode" not in docker
    finally:
        made.remove()
    assert not made.pki.directory.exists()
