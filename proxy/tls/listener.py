"""Looking at a new connection's first bytes before any transport owns the socket.

Direct TLS cannot be told apart once an asyncio transport has read the bytes (they cannot be
put back for the TLS engine), so the decision is taken on the accepted socket itself, with
``MSG_PEEK``: nothing is consumed. The socket is then handed to
``loop.connect_accepted_socket(factory, sock, ssl=context_or_None)``, which runs the TLS
handshake natively (uvloop) for a direct-TLS client.
"""

from __future__ import annotations

import asyncio
import socket

from proxy.tls.sniff import MAX_CLIENT_HELLO, ClientHello, parse_client_hello

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
