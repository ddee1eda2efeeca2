"""``python -m proxy.healthcheck``: the container's health check, from the same configuration
``pgwarden serve`` reads (``PGWARDEN_*`` variables, ``$PGWARDEN_CONFIG``).

With the admin API on, it asks ``/healthz`` wherever ``admin.listen`` puts it; with the admin
API off (``admin.listen: ""``) it checks that the proxy's own ``listen`` port accepts a
connection (a bare connect-and-close is neither logged nor audited). Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request

from proxy import config
from proxy.errors import PgWardenError

TIMEOUT = 4.0


def _reachable(host: str) -> str:
    """Where to connect for a listener bound to ``host`` (a wildcard means this machine)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def check(cfg: config.Config) -> tuple[bool, str]:
    admin = str(cfg["admin.listen"]).strip()
    if admin:
        endpoint = config.parse_listen(admin)
        host = _reachable(endpoint.host)
        url = f"http://{f'[{host}]' if ':' in host else host}:{endpoint.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                return response.status == 200, f"{url}: {response.status}"
        except (OSError, urllib.error.URLError) as exc:
            return False, f"{url}: {exc}"
    listen = cfg.listen
    try:
        with socket.create_connection((_reachable(listen.host), listen.port), timeout=TIMEOUT):
            return True, f"{listen} accepts connections (admin API off)"
    except OSError as exc:
        return False, f"{listen}: {exc}"


def main() -> int:
    try:
        healthy, detail = check(config.load(None))
    except (PgWardenError, ValueError) as exc:
        print(f"pgwarden healthcheck: {exc}", file=sys.stderr)
        return 1
    print(detail, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
