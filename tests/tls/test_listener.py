"""The sniffing listener: direct TLS next to plaintext on one port, refused by rule."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from proxy.tls.clientleg import secured
from proxy.tls.contexts import TLSContexts, TLSHolder
from proxy.tls.listener import SniffingListener
from proxy.tls.settings import ClientMode, ClientTLS, TLSSettings
from tests.support.tlspair import TestPKI

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    return asyncio.run if request.param == "asyncio" else uvloop.run  # type: ignore[return-value]


class _Echo(asyncio.Protocol):
    """Says whether it was handed a TLS connection, then echoes."""

    def __init__(self, contexts: TLSContexts) -> None:
        self.contexts = contexts

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        tls = transport.get_extra_info("ssl_object") is not None
        if tls:
            secured(transport, self.contexts, direct=True)
        transport.write(b"tls:" if tls else b"plain:")

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _holder(pki: TestPKI) -> TLSHolder:
    leg = ClientTLS(ClientMode.PREFER, str(pki.server_cert), str(pki.server_key))
    return TLSHolder.from_settings(TLSSettings(client=leg))


def _client_ctx(pki: TestPKI, alpn: list[str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def _listening(pki: TestPKI, sniff_timeout: float = 5) -> SniffingListener:
    listener = SniffingListener(
        _Echo, _holder(pki), sniff_timeout=sniff_timeout, handshake_timeout=5
    )
    await listener.start("127.0.0.1", 0)
    return listener


async def _talk(port: int, data: bytes, **kw: Any) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, **kw)
    writer.write(data)
    try:
        async with asyncio.timeout(5):
            return await reader.read(100)
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


def test_plain_and_direct_tls_on_one_port(run: Runner, pki: TestPKI) -> None:
    async def main() -> None:
        listener = await _listening(pki)
        try:
            assert await _talk(listener.port, b"\x00\x00\x00\x08hello") == b"plain:"
            got = await _talk(
                listener.port,
                b"x",
                ssl=_client_ctx(pki, ["postgresql"]),
                server_hostname="localhost",
            )
            assert got.startswith(b"tls:")
            assert listener.refused == 0
        finally:
            await listener.close()

    run(main())


@pytest.mark.parametrize("alpn", [None, ["h2"]])
def test_direct_tls_without_postgresql_alpn_is_refused(
    run: Runner, pki: TestPKI, alpn: list[str] | None
) -> None:
    async def main() -> None:
        listener = await _listening(pki)
        try:
            with pytest.raises((ssl.SSLError, ConnectionError)) as err:
                await _talk(
                    listener.port, b"x", ssl=_client_ctx(pki, alpn), server_hostname="localhost"
                )
            if alpn:
                assert "NO_APPLICATION_PROTOCOL" in str(err.value).upper().replace(" ", "_")
            assert listener.refused == 1
        finally:
            await listener.close()

    run(main())


def test_garbage_and_silence_are_closed(run: Runner, pki: TestPKI) -> None:
    async def main() -> None:
        listener = await _listening(pki, sniff_timeout=0.5)
        try:
            # closed unread, so the client may see a reset rather than an end of file
            with contextlib.suppress(ConnectionResetError):
                assert await _talk(listener.port, b"\x16\x09\x09garbage") == b""
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            async with asyncio.timeout(5):
                assert await reader.read(10) == b""  # closed after the sniff timeout
            writer.close()
            assert listener.refused == 2
        finally:
            await listener.close()

    run(main())
