"""The proxy's reload (SIGHUP, POST /reload) re-reads the certificate files."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from proxy import config
from proxy.server import ProxyServer
from proxy.tls.peer import tls_facts
from tests.support.tlspair import TestPKI, handshake


class _Trail:
    healthy = True

    def submit(self, event: dict[str, Any]) -> None:
        pass


def test_reload_swaps_certificates_and_reports_bad_ones(pki: TestPKI, tmp_path: Path) -> None:
    import ssl

    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    os.chmod(key, 0o600)
    cfg = config.defaults().replace(
        audit__dir=str(tmp_path / "audit"),
        client_tls__mode="require",
        client_tls__cert_file=str(cert),
        client_tls__key_file=str(key),
    )
    client = ssl.create_default_context(cafile=str(pki.ca_file))

    async def scenario() -> None:
        server = ProxyServer(cfg, _Trail(), None)  # type: ignore[arg-type]
        first = server.tls.current
        assert first.client is not None
        pki.ca.issue("renewed", dns=["localhost"]).write(tmp_path, "live")
        result = await server.reload()
        assert result.ok, result.errors
        second = server.tls.current
        assert second is not first and second.client is not None
        _, obj = handshake(second.client, client)
        assert tls_facts(obj).peer_subject.startswith("CN=renewed")
        key.write_text("not a key")
        result = await server.reload()
        assert not result.ok and "cannot load certificate" in result.errors[0]
        assert server.tls.current is second
        await server.shutdown(0)

    asyncio.run(scenario())
