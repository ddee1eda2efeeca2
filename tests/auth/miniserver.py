"""A toy PostgreSQL front end assembled from pgwarden's TLS and SCRAM pieces, for tests
with real clients (libpq through psycopg): the handshake steps the session will take.

It accepts sockets itself (peek for direct TLS), answers SSLRequest from the client-leg
settings, upgrades with ``loop.start_tls``, refuses plaintext in require mode, runs SCRAM
(-PLUS bound to its own certificate), then pretends to be a server that is ready.
"""

from __future__ import annotations

import asyncio
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
from proxy.tls import clientleg, listener
from proxy.tls.contexts import TLSContexts, TLSHolder
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
    def __init__(self, front: MiniFront, contexts: TLSContexts) -> None:
        self.front = front
        self.contexts = contexts  # the generation this connection was accepted under
        self.buf = bytearray()
        self.transport: Any = None
        self.secured: clientleg.SecuredClient | None = None
        self.scram: ScramServer | None = None
        self.phase = "startup"
        self.upgrade: asyncio.Task[None] | None = None

    @property
    def tls(self) -> bool:
        return self.secured is not None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.front.conns.add(self)
        if transport.get_extra_info("ssl_object") is not None:  # direct TLS
            try:
                self.secured = clientleg.secured(transport, self.contexts, direct=True)
            except clientleg.ClientTLSRefused as exc:
                self.front.seen.refusals.append(str(exc))
                transport.close()
                return
            self.front.seen.tls_versions.append(self.secured.facts.version)

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
                answer = b"N" if self.tls else clientleg.answer_ssl_request(self.contexts)
                self.transport.write(answer)
                if answer == b"S":
                    # Decrypted bytes can reach data_received before the upgrade returns:
                    # hold them in this phase (see clientleg.upgrade_client).
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
        try:
            self.secured = await clientleg.upgrade_client(
                self.transport, self, self.contexts, handshake_timeout=5
            )
        except clientleg.ClientTLSRefused as exc:
            self.front.seen.refusals.append(str(exc))
            self.transport.close()
            return
        self.transport = self.secured.transport
        self.front.seen.tls_versions.append(self.secured.facts.version)
        self.phase = "startup"
        self.data_received(b"")

    def _startup(self, startup: StartupMessage) -> None:
        user, database = startup.get("user"), startup.get("database") or startup.get("user")
        settings = self.contexts.settings.client
        host = self.transport.get_extra_info("peername")[0]
        refusal = (
            clientleg.certificate_refusal(settings, self.secured.peer_cert, user)
            if self.secured is not None
            else clientleg.plaintext_refusal(settings, host, user, database)
        )
        if refusal is not None:
            self._fatal(refusal.sqlstate, refusal.message)
            return
        cert = self.secured.own_cert if self.secured is not None else None
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
        holder: TLSHolder,
        secrets: Mapping[str, ScramSecret],
        use_uvloop: bool = False,
    ) -> None:
        self.use_uvloop = use_uvloop  # the proxy runs on uvloop; its start_tls differs
        self.holder = holder
        self.secrets = secrets
        self.seen = Seen()
        self.conns: set[_Conn] = set()
        self.port = 0
        self.listener: listener.SniffingListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.listener = listener.SniffingListener(
            lambda contexts: _Conn(self, contexts),
            self.holder,
            sniff_timeout=5,
            handshake_timeout=5,
        )
        await self.listener.start("127.0.0.1", 0)
        self.port = self.listener.port
        self._ready.set()
        await self._stop.wait()
        await self.listener.close()
        for conn in self.conns:
            conn.transport.close()
        await asyncio.sleep(0.1)

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
