"""The TLS side of ``pgwarden demo``: a throwaway CA, PostgreSQL with ssl=on, TLS offered to
clients (``prefer``: plaintext still works) with the printed ``sslmode=verify-full``
command, and ``verify-full`` to the demo's PostgreSQL."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from proxy import pgrun
from proxy.tls.certs import DemoPKI, make_demo_pki


@dataclass(frozen=True, slots=True)
class DemoTLS:
    pki: DemoPKI

    @classmethod
    def create(cls) -> DemoTLS:
        return cls(make_demo_pki(Path(tempfile.mkdtemp(prefix="pgwarden-demo-tls-"))))

    def server_tls(self) -> pgrun.ServerTLS:
        return pgrun.ServerTLS(self.pki.server_cert, self.pki.server_key, self.pki.ca_file)

    def config_changes(self, upstream_has_tls: bool) -> dict[str, str]:
        """``Config.replace`` arguments: TLS offered to clients, verify-full upstream (when
        the cluster runs with ssl=on: not the Docker fallback)."""
        changes = {
            "client_tls__mode": "prefer",
            "client_tls__cert_file": str(self.pki.proxy_cert),
            "client_tls__key_file": str(self.pki.proxy_key),
        }
        if upstream_has_tls:
            changes["upstream_tls__mode"] = "verify-full"
            changes["upstream_tls__ca_file"] = str(self.pki.ca_file)
        return changes

    def verify_full_url(self, url: str) -> str:
        """``url`` with libpq's parameters for a checked TLS connection."""
        root = quote(str(self.pki.ca_file), safe="/")
        return f"{url}?sslmode=verify-full&sslrootcert={root}"

    def remove(self) -> None:
        shutil.rmtree(self.pki.directory, ignore_errors=True)
