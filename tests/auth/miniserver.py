"""A toy PostgreSQL front end assembled from pgwarden's TLS and SCRAM pieces, for tests
with real clients (libpq through psycopg): the handshake steps the session will take.

It accepts sockets itself (peek for direct TLS), answers SSLRequest from the client-leg
settings, upgrades with ``loop.start_tls``, refuses plaintext in require mode, runs SCRAM
(-PLUS bound to its own certificate), then pretends to be a server that is ready.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvloop

from proxy.auth.scram import ScramSecret
from proxy.auth.scram_server import ScramServer
from proxy.errors import AuthenticationError, ProtocolError
from proxy.tls import clientleg, listener, sniff
from proxy.tls.contexts import TLSContexts
from proxy.wire import messages as m
from proxy.wire import sasl
from proxy.wire.startup import SSLRequest, StartupMessage, parse_startup, startup_length


@dataclass
class Seen:
    """What the toy server observed, for assertions."""

    mechanisms: list[str] = field(default_factory=list)
    tls_versions: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


class _Conn(asyncio.Protocol):
    def __init__(self, front: MiniFront, direct: bool) -> None:
        self.front = front
        self.buf = bytearray()
        self.transport: Any = None
        self.tls = direct
        self.scram: ScramServer | None = None
        self.phase = "startup"
        self.upgrade: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.front.conns.add(self)
        if self.tls:
            obj = transport.get_extra_info("ssl_object")
            refusal = sniff.negotiated_alpn_refusal(obj.selected_alpn_protocol(), direct=True)
            if refusal is not None:
                self.front.seen.refusals.append(refusal.reason)
                transport.close()
                return
            self.front.seen.tls_versions.append(obj.version())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._step()
        except (ProtocolError, AuthenticationError) as exc:
            self._fatal(getattr(exc, "sqlstate", "08P01"), str(exc))

    def _fatal(self, sqlstate: str, text: str) -> None:
        self.front.seen.refusals.append(text)
        self.transport.write(m.error_response(sqlstate, text, severity="FATAL"))
        self.transport.close()
        self.phase = "closed"

    def _step(self) -> None:
        while self.phase == "startup":
            length = startup_length(self.buf)
            if length is None or len(self.buf) < length:
                return
            packet = bytes(self.buf[:length])
            del self.buf[:length]
            request = parse_startup(packet)
            if isinstance(request, SSLRequest):
                if self.buf:
                    raise ProtocolError("unexpected data after an encryption request")
                answer = clientleg.answer_ssl_request(self.front.contexts)
                self.transport.write(answer)
                if answer == b"S":
                    # Decrypted bytes can reach data_received before start_tls returns to
                    # _upgrade (TLS 1.3 clients send Finished and the startup packet
                    # together): hold them until the upgrade is done, or they would be
                    # answered in plaintext on the old transport.
                    self.phase = "upgrading"
                    self.transport.pause_reading()
                    self.upgrade = asyncio.get_running_loop().create_task(self._upgrade())
                    return
                continue
            assert isinstance(request, StartupMessage)
            self._startup(request)
        while self.phase in ("sasl-initial", "sasl-final") and len(self.buf) >= 5:
            kind = self.buf[0]
            (length,) = struct.unpack_from("!I", self.buf, 1)
            if len(self.buf) < 1 + length:
                return
            body = bytes(self.buf[5 : 1 + length])
            del self.buf[: 1 + length]
            if kind != ord("p"):
                raise ProtocolError("expected a password message")
            assert self.scram is not None
            if self.phase == "sasl-initial":
                self.transport.write(self.scram.initial_response(body))
                self.phase = "sasl-final"
            else:
                final = self.scram.final_response(body)
                self.front.seen.logins.append(self.scram.user)
                self.transport.write(final + sasl.authentication_ok() + self._ready_messages())
                self.phase = "ready"
        if self.phase == "ready" and self.buf[:1] == b"X":
            self.transport.close()

    async def _upgrade(self) -> None:
        ctx = self.front.contexts.client
        assert ctx is not None
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(
                self.transport, self, ctx, server_side=True, ssl_handshake_timeout=5
            )
        except (ssl.SSLError, ConnectionError) as exc:
            self.front.seen.refusals.append(f"handshake: {exc}")
            return
        obj = self.transport.get_extra_info("ssl_object")
        refusal = sniff.negotiated_alpn_refusal(obj.selected_alpn_protocol(), direct=False)
        if refusal is not None:
            self.front.seen.refusals.append(refusal.reason)
            self.transport.close()
            return
        self.tls = True
        self.front.seen.tls_versions.append(obj.version())
        self.phase = "startup"
        self.data_received(b"")

    def _startup(self, startup: StartupMessage) -> None:
        user, database = startup.get("user"), startup.get("database") or startup.get("user")
        settings = self.front.contexts.settings.client
        host = self.transport.get_extra_info("peername")[0]
        refusal = (
            clientleg.certificate_refusal(settings, self.transport.get_extra_info("peercert"), user)
            if self.tls
            else clientleg.plaintext_refusal(settings, host, user, database)
        )
        if refusal is not None:
            self._fatal(refusal.sqlstate, refusal.message)
            return
        cert = self.front.own_cert_der if self.tls else None
        self.scram = ScramServer(user, self.front.secrets.get(user), server_cert=cert)
        self.front.seen.mechanisms = self.scram.mechanisms
        self.transport.write(self.scram.sasl_request())
        self.phase = "sasl-initial"

    @staticmethod
    def _ready_messages() -> bytes:
        params = [
            ("server_version", "15.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("standard_conforming_strings", "on"),
            ("integer_datetimes", "on"),
            ("DateStyle", "ISO, MDY"),
        ]
        out = b"".join(
            m.message(ord("S"), k.encode() + b"\x00" + v.encode() + b"\x00") for k, v in params
        )
        return out + m.backend_key_data(1234, b"abcd") + m.ready_for_query(ord("I"))


class MiniFront:
    def __init__(
        self,
        contexts: TLSContexts,
        secrets: Mapping[str, ScramSecret],
        own_cert_der: bytes,
        use_uvloop: bool = False,
    ) -> None:
        self.use_uvloop = use_uvloop  # the proxy runs on uvloop; its start_tls differs
        self.contexts = contexts
        self.secrets = secrets
        self.own_cert_der = own_cert_der
        self.seen = Seen()
        self.conns: set[_Conn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._ready.set()
        accept = loop.create_task(self._accept(sock))
        await self._stop.wait()
        accept.cancel()
        sock.close()
        for conn in self.conns:
            conn.transport.close()
        await asyncio.sleep(0.1)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            task = loop.create_task(self._sniff(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _sniff(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):
            first = await listener.peek_first_byte(conn)
            if sniff.classify(first) is sniff.FirstBytes.TLS:
                if not clientleg.accepts_direct_tls(self.contexts):
                    self.seen.refusals.append("direct TLS not accepted")
                    conn.close()
                    return
                hello = await listener.peek_client_hello(conn)
                refusal = sniff.alpn_refusal(hello, direct=True)
                if refusal is not None:
                    self.seen.refusals.append(refusal.reason)
                    conn.send(refusal.alert)
                    conn.close()
                    return
                await loop.connect_accepted_socket(
                    lambda: _Conn(self, True), conn, ssl=self.contexts.client
                )
                return
        await loop.connect_accepted_socket(lambda: _Conn(self, False), conn)

    @contextmanager
    def running(self) -> Iterator[MiniFront]:
        def run() -> None:
            self._loop = uvloop.new_event_loop() if self.use_uvloop else asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())
            self._loop.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._ready.wait(5)
        try:
            yield self
        finally:
            assert self._loop is not None and self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(5)
