"""The container health check follows admin.listen, and works with the admin API off."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from proxy import config
from proxy.healthcheck import check


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def admin_port() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_asks_healthz_where_admin_listen_is(admin_port: int) -> None:
    cfg = config.defaults().replace(admin__listen=f"0.0.0.0:{admin_port}")  # a moved listener
    assert check(cfg) == (True, f"http://127.0.0.1:{admin_port}/healthz: 200")
    dead = config.defaults().replace(admin__listen=f"127.0.0.1:{closed_port()}")
    healthy, detail = check(dead)
    assert not healthy and "Connection refused" in detail


def test_with_the_admin_api_off_the_proxy_port_is_checked() -> None:
    with socket.socket() as proxy_port:
        proxy_port.bind(("127.0.0.1", 0))
        proxy_port.listen()
        port = proxy_port.getsockname()[1]
        cfg = config.defaults().replace(admin__listen="", listen=f"0.0.0.0:{port}")
        assert check(cfg) == (True, f"0.0.0.0:{port} accepts connections (admin API off)")
    cfg = config.defaults().replace(admin__listen="", listen=f"127.0.0.1:{closed_port()}")
    assert check(cfg)[0] is False
