"""pgwarden's upstream connections: SSLRequest, verify-full, never a silent downgrade.

Against the suite's PostgreSQL (ssl=on, a hostssl-only role) and against scripted servers
for what a real one does not do (answer 'N', inject plaintext, direct TLS without ALPN).
Each scenario runs on asyncio and on uvloop: the session runs on uvloop, whose start_tls
and set_protocol are separate implementations.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy.config import Upstream
from proxy.tls.contexts import upstream_context
from proxy.tls.settings import UpstreamMode, UpstreamTLS
from proxy.tls.upstream import UpstreamTLSError, open_upstream, send_cancel
from proxy.wire.startup import encode_cancel
from tests.support import rawpg
from tests.support.pgcluster import PgServer
from tests.support.tlspair import TestPKI
from tests.tls.pgproto import PgClient

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    return asyncio.run if request.param == "asyncio" else uvloop.run  # type: ignore[return-value]


def _settings(mode: str, **kw: Any) -> UpstreamTLS:
    return UpstreamTLS(UpstreamMode(mode), **kw)


async def _open(upstream: Upstream, settings: UpstreamTLS) -> Any:
    ctx = upstream_context(settings) if settings.mode.attempts_tls else None
    async with asyncio.timeout(10):
        return await open_upstream(PgClient, upstream, settings, ctx, handshake_timeout=5)


def test_verify_full_to_postgres_is_encrypted(
    run: Runner, pg: PgServer, server_pki: TestPKI
) -> None:
    settings = _settings("verify-full", ca_file=str(server_pki.ca_file))

    async def main() -> None:
        link = await _open(Upstream(pg.host, pg.port), settings)
        assert link.tls is not None and link.tls.version in ("TLSv1.2", "TLSv1.3")
        assert link.tls.peer_subject.startswith("CN=pgwarden")
        assert link.server_certificate == ssl.PEM_cert_to_DER_cert(
            server_pki.server_cert.read_text()
        )
        await link.protocol.login("postgres")
        assert (
            await link.protocol.scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
            == "t"
        )
        await link.protocol.close()

    run(main())


def test_hostssl_only_role_logs_in_through_tls_only(
    run: Runner, pg: PgServer, server_pki: TestPKI
) -> None:
    """``cecil`` authenticates by client certificate on a hostssl line (as Cloud SQL's
    TRUSTED_CLIENT_CERTIFICATE_REQUIRED); plaintext is rejected by the server."""
    with_cert = _settings(
        "verify-full",
        ca_file=str(server_pki.ca_file),
        cert_file=str(server_pki.cecil_cert),
        key_file=str(server_pki.cecil_key),
    )

    async def main() -> None:
        link = await _open(Upstream(pg.host, pg.port), with_cert)
        assert (b"R", b"\x00\x00\x00\x00") in await link.protocol.login("cecil")
        assert await link.protocol.scalar("select current_user") == "cecil"
        await link.protocol.close()
        plain = await _open(Upstream(pg.host, pg.port), _settings("disable"))
        plain.protocol.send(rawpg.startup({"user": "cecil", "database": "postgres"}))
        refused = await plain.protocol.until(b"E")
        assert b"28000" in refused[-1][1] and b"no encryption" in refused[-1][1]
        await plain.protocol.close()

    run(main())


def test_wrong_host_name_or_ca_fails_verify_full(
    run: Runner, pg: PgServer, server_pki: TestPKI
) -> None:
    async def main() -> None:
        wrong_name = _settings(
            "verify-full", ca_file=str(server_pki.ca_file), server_name="db.example.com"
        )
        with pytest.raises(UpstreamTLSError, match="certificate verify failed: Hostname mismatch"):
            await _open(Upstream(pg.host, pg.port), wrong_name)
        wrong_ca = _settings("verify-full", ca_file=str(server_pki.other_ca_file))
        with pytest.raises(UpstreamTLSError, match="certificate verify failed"):
            await _open(Upstream(pg.host, pg.port), wrong_ca)
        # verify-ca accepts the right chain under any name
        ok = _settings("verify-ca", ca_file=str(server_pki.ca_file), server_name="db.example.com")
        link = await _open(Upstream(pg.host, pg.port), ok)
        assert link.tls is not None
        await link.protocol.close()

    run(main())


def test_prefer_uses_tls_when_offered(run: Runner, pg: PgServer, server_pki: TestPKI) -> None:
    async def main() -> None:
        link = await _open(Upstream(pg.host, pg.port), _settings("prefer"))
        assert link.tls is not None
        await link.protocol.login("postgres")
        await link.protocol.close()

    run(main())


def test_cancel_over_tls(run: Runner, pg: PgServer, server_pki: TestPKI) -> None:
    settings = _settings("verify-full", ca_file=str(server_pki.ca_file))

    async def main() -> None:
        link = await _open(Upstream(pg.host, pg.port), settings)
        msgs = await link.protocol.login("postgres")
        key = next(body for kind, body in msgs if kind == b"K")
        pid, secret = struct.unpack("!I", key[:4])[0], key[4:]
        link.protocol.send(rawpg.query("select pg_sleep(30)"))
        await asyncio.sleep(0.3)
        async with asyncio.timeout(5):
            await send_cancel(
                encode_cancel(pid, secret),
                Upstream(pg.host, pg.port),
                settings,
                upstream_context(settings),
            )
        reply = await link.protocol.until(b"Z", within=5)
        errors = [body for kind, body in reply if kind == b"E"]
        assert errors and b"57014" in errors[0]
        await link.protocol.close()

    run(main())


# ---------------------------------------------------------------- scripted servers


async def _serve(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    **kw: Any,
) -> tuple[asyncio.Server, Upstream]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, **kw)
    port = server.sockets[0].getsockname()[1]
    return server, Upstream("127.0.0.1", port)


def _answering(answer: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(8) == struct.pack("!II", 8, 80877103)
        writer.write(answer)
        await writer.drain()
        try:
            await reader.read(100)
        finally:
            writer.close()

    return handler


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_server_answering_n_is_refused_when_tls_is_required(run: Runner, mode: str) -> None:
    async def main() -> None:
        server, upstream = await _serve(_answering(b"N"))
        async with server:
            with pytest.raises(UpstreamTLSError, match=f"answered N to SSLRequest.*mode is {mode}"):
                await _open(upstream, _settings(mode))

    run(main())


def test_prefer_falls_back_to_plaintext_on_n(run: Runner) -> None:
    async def main() -> None:
        got = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(8)
            writer.write(b"N")
            got.set_result(await reader.readexactly(4))
            writer.close()

        server, upstream = await _serve(handler)
        async with server:
            link = await _open(upstream, _settings("prefer"))
            assert link.tls is None and isinstance(link.protocol, PgClient)
            link.protocol.send(b"next")  # the caller's protocol owns the connection now
            assert await asyncio.wait_for(got, 5) == b"next"
            await link.protocol.close()

    run(main())


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SX", "unencrypted data after its SSL response"),
        (b"E\x00\x00\x00\x08oops", "answered the SSLRequest with an error"),
        (b"Z", "invalid answer to SSLRequest"),
        (b"", "closed the connection before answering"),
    ],
)
def test_bad_answers_are_errors(run: Runner, answer: bytes, message: str) -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(8)
            writer.write(answer)
            await writer.drain()
            writer.close()

        server, upstream = await _serve(handler)
        async with server:
            with pytest.raises(Exception, match=message):
                await _open(upstream, _settings("prefer"))

    run(main())


def _direct_server_ctx(pki: TestPKI, alpn: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if alpn:
        ctx.set_alpn_protocols(["postgresql"])
    return ctx


@pytest.mark.parametrize("alpn", [True, False])
def test_direct_tls_needs_alpn(run: Runner, pki: TestPKI, alpn: bool) -> None:
    async def main() -> None:
        first = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # no SSLRequest on a direct connection: the first plaintext is the startup packet
            first.set_result(await reader.read(4))
            writer.close()

        server, upstream = await _serve(handler, ssl=_direct_server_ctx(pki, alpn))
        async with server:
            settings = _settings("verify-full", ca_file=str(pki.ca_file), direct=True)
            if not alpn:
                with pytest.raises(UpstreamTLSError, match="did not negotiate ALPN"):
                    await _open(upstream, settings)
                return
            link = await _open(upstream, settings)
            assert link.tls is not None and link.tls.alpn == "postgresql"
            link.protocol.send(b"\x00\x00\x00\x08")
            assert await asyncio.wait_for(first, 5) == b"\x00\x00\x00\x08"
            await link.protocol.close()

    run(main())


def test_unix_socket_upstream_is_plaintext(run: Runner, pg: PgServer, tmp_path: Path) -> None:
    if pg.unix_dir is None:
        pytest.skip("no Unix socket")

    async def main() -> None:
        upstream = Upstream("", pg.port, pg.unix_dir)
        link = await _open(upstream, _settings("prefer"))
        assert link.tls is None
        await link.protocol.login("postgres")
        await link.protocol.close()

    run(main())


def test_plaintext_after_s_in_a_later_segment_is_caught() -> None:
    """CVE-2021-23222 when the injected bytes arrive as a separate read before TLS starts
    (the 'SX' case above is the same bytes in one read). Fed synchronously: the network
    cannot produce this interleaving on demand."""
    from proxy.tls.upstream import _Negotiator

    class _Transport:
        paused = False

        def pause_reading(self) -> None:
            self.paused = True

    async def main() -> None:
        negotiator = _Negotiator()
        transport = _Transport()
        negotiator.connection_made(transport)  # type: ignore[arg-type]
        negotiator.data_received(b"S")
        assert transport.paused and not negotiator.plaintext_after_answer()
        negotiator.data_received(b"INJECTED")
        assert negotiator.plaintext_after_answer()

    asyncio.run(main())
