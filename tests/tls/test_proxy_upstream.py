"""The live proxy's server leg over TLS (``upstream_tls``), end to end.

``pgwarden serve`` against the suite's PostgreSQL (ssl=on; ``tess`` may only log in over
TLS): the server's own ``pg_stat_ssl`` shows the session encrypted, a certificate that does
not verify or a server that answers ``N`` is a FATAL 08001 to the client (never a silent
downgrade), and cancel requests still reach the backend.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.support import rawpg
from tests.support.pgcluster import PASSWORDS
from tests.support.proxyproc import ProxyFactory, ProxyProcess
from tests.support.tlspair import TestPKI


def _verify_full(proxy_factory: ProxyFactory, ca_file: str) -> ProxyProcess:
    return proxy_factory("--upstream-tls-mode", "verify-full", "--upstream-tls-ca-file", ca_file)


def _plain(proxy: ProxyProcess, user: str) -> str:
    return proxy.dsn(user, "app", PASSWORDS.get(user)) + "?sslmode=disable"


def _login_error(proxy: ProxyProcess, user: str = "alice") -> rawpg.Msg:
    with rawpg.RawConn(proxy.host, proxy.port, timeout=15) as conn:
        conn.send(rawpg.startup({"user": user, "database": "app"}))
        msg = conn.recv()
        assert msg.type == "E", msg
        return msg


def test_verify_full_upstream_is_encrypted_on_the_server(
    proxy_factory: ProxyFactory, server_pki: TestPKI
) -> None:
    proxy = _verify_full(proxy_factory, str(server_pki.ca_file))
    with psycopg.connect(_plain(proxy, "alice"), connect_timeout=10) as conn:
        ssl, version = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone() or (None, None)
    assert ssl is True and version in ("TLSv1.2", "TLSv1.3")
    (start,) = proxy.wait_for(lambda e: e["type"] == "session_start" and e["user"] == "alice")
    assert start["tls"] is False  # the client leg is plaintext here
    up = start["upstream_tls"]
    assert up["protocol"] == version and up["cipher"]
    assert up["peer_subject"].startswith("CN=pgwarden") and len(up["peer_fingerprint"]) == 64


def test_hostssl_only_role_logs_in_through_a_tls_upstream(
    proxy_factory: ProxyFactory, server_pki: TestPKI
) -> None:
    plain = proxy_factory()  # upstream_tls disable: the server's hostssl-only rule refuses
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf"):
        psycopg.connect(_plain(plain, "tess"), connect_timeout=10).close()
    proxy = _verify_full(proxy_factory, str(server_pki.ca_file))
    with psycopg.connect(_plain(proxy, "tess"), connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("tess",)
    start = proxy.wait_for(lambda e: e["type"] == "session_start" and e["user"] == "tess")
    assert start[0]["upstream_tls"] is not None


def test_unverifiable_server_certificate_is_fatal_08001(
    proxy_factory: ProxyFactory, server_pki: TestPKI
) -> None:
    proxy = _verify_full(proxy_factory, str(server_pki.other_ca_file))
    msg = _login_error(proxy)
    fields = msg.fields()
    assert (fields["S"], fields["C"]) == ("FATAL", "08001")
    assert "certificate verify failed" in fields["M"]
    assert "certificate verify failed" in proxy.stderr_text()  # the operator sees why
    assert not proxy.events("session_start")


@pytest.fixture
def refusing_server() -> Iterator[int]:
    """A TCP server that answers every SSLRequest with 'N' (a server without TLS)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                if conn.recv(8):
                    conn.sendall(b"N")
                    conn.recv(100)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.parametrize("mode", ["require", "verify-full"])
def test_server_refusing_tls_is_fatal_08001_never_a_downgrade(
    proxy_factory: ProxyFactory, refusing_server: int, server_pki: TestPKI, mode: str
) -> None:
    proxy = proxy_factory(
        "--upstream",
        f"127.0.0.1:{refusing_server}",
        "--upstream-tls-mode",
        mode,
        "--upstream-tls-ca-file",
        str(server_pki.ca_file),
    )
    fields = _login_error(proxy).fields()
    assert (fields["S"], fields["C"]) == ("FATAL", "08001")
    assert f"answered N to SSLRequest) and upstream_tls.mode is {mode}" in fields["M"]


def test_cancel_reaches_a_backend_behind_a_tls_upstream(
    proxy_factory: ProxyFactory, server_pki: TestPKI
) -> None:
    proxy = _verify_full(proxy_factory, str(server_pki.ca_file))
    with psycopg.connect(_plain(proxy, "tess"), connect_timeout=10, autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert time.monotonic() - started < 15
        assert conn.execute("SELECT 1").fetchone() == (1,)
