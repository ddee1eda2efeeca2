"""Looking at a new connection's first bytes before any transport owns the socket.

Direct TLS cannot be told apart once an asyncio transport has read the bytes (they cannot be
put back for the TLS engine), so the decision is taken on the accepted socket itself, with
``MSG_PEEK``: nothing is consumed. The socket is then handed to
``loop.connect_accepted_socket(factory, sock, ssl=context_or_None)``, which runs the TLS
handshake natively (uvloop) for a direct-TLS client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from proxy.tls.clientleg import accepts_direct_tls
from proxy.tls.contexts import TLSContexts, TLSHolder
from proxy.tls.sniff import (
    MAX_CLIENT_HELLO,
    ClientHello,
    ClientHelloError,
    FirstBytes,
    alpn_refusal,
    classify,
    parse_client_hello,
)

logger = logging.getLogger("pgwarden.tls")

# A ClientHello usually arrives in one or two segments; re-peek this often until complete.
_REPEEK_INTERVAL = 0.005


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def peek_first_byte(sock: socket.socket) -> bytes:
    """The first byte the client sent (b'' when it closed without sending). The caller
    bounds the wait with its login timeout."""
    await _readable(sock)
    return sock.recv(1, socket.MSG_PEEK)


async def peek_client_hello(sock: socket.socket) -> ClientHello:
    """The complete ClientHello of a direct-TLS client, without consuming it.

    Raises :class:`~proxy.tls.sniff.ClientHelloError` for bytes that are not one, and
    ConnectionError when the client leaves first. The caller bounds it with a timeout."""
    while True:
        await _readable(sock)
        data = sock.recv(MAX_CLIENT_HELLO + 4096, socket.MSG_PEEK)
        if not data:
            raise ConnectionError("the client closed during its TLS ClientHello")
        hello = parse_client_hello(data)
        if hello is not None:
            return hello
        # The socket stays readable while incomplete data waits (peek consumes nothing):
        # wait a moment for the rest instead of spinning.
        await asyncio.sleep(_REPEEK_INTERVAL)


ProtocolFactory = Callable[[TLSContexts], asyncio.BaseProtocol]


class SniffingListener:
    """A TCP listener that serves direct TLS next to plaintext/SSLRequest connections.

    Used instead of ``loop.create_server`` when ``clientleg.accepts_direct_tls`` holds. Each
    accepted socket is peeked (never read): a TLS ClientHello is checked against the ALPN
    rule and handed over with ``ssl=``, anything else is handed over as is. ``factory``
    gets the contexts generation the connection was accepted under, so the certificate it
    presents and the one SCRAM-PLUS binds to are the same even across a reload.
    """

    def __init__(
        self,
        factory: ProtocolFactory,
        holder: TLSHolder,
        *,
        sniff_timeout: float,
        handshake_timeout: float,
    ) -> None:
        self.factory = factory
        self.holder = holder
        self.sniff_timeout = sniff_timeout
        self.handshake_timeout = handshake_timeout
        self.refused = 0  # connections closed here (bad ALPN, garbage, timeout)
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(
        self, host: str, port: int, backlog: int = 1024, *, reuse_port: bool = False
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # one of several workers on this address (proxy.workers)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
        self._sock = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept(sock))

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            task = loop.create_task(self._hand_over(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _hand_over(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        contexts = self.holder.current
        direct = False
        try:
            async with asyncio.timeout(self.sniff_timeout):
                first = await peek_first_byte(conn)
                if classify(first) is FirstBytes.TLS:
                    if not accepts_direct_tls(contexts):
                        raise ClientHelloError("direct TLS is not accepted")
                    refusal = alpn_refusal(await peek_client_hello(conn), direct=True)
                    if refusal is not None:
                        conn.send(refusal.alert)
                        raise ClientHelloError(refusal.reason)
                    direct = True
        except (ClientHelloError, OSError, TimeoutError) as exc:
            # Nothing was served on this socket; PostgreSQL also closes without a word.
            self.refused += 1
            logger.info("closing a connection before its startup: %s", exc)
            conn.close()
            return
        try:
            await loop.connect_accepted_socket(
                lambda: self.factory(contexts),
                conn,
                ssl=contexts.client if direct else None,
                ssl_handshake_timeout=self.handshake_timeout if direct else None,
            )
        except (ssl.SSLError, OSError) as exc:
            self.refused += 1
            logger.info("direct TLS handshake failed: %s", exc)
            conn.close()

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
