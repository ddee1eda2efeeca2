"""A scripted fake PostgreSQL backend: speaks just enough protocol, then misbehaves.

It runs an asyncio server on a background thread so tests stay synchronous. Each accepted
connection runs the ``script`` coroutine with helpers for the few messages a script needs.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

SSL_CODE = 80877103
GSSENC_CODE = 80877104


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def error(fields: dict[str, str]) -> bytes:
    body = b"".join(k.encode() + v.encode() + b"\x00" for k, v in fields.items()) + b"\x00"
    return message(b"E", body)


def login_ok(pid: int = 4242, secret: bytes = b"\x01\x02\x03\x04") -> bytes:
    out = message(b"R", struct.pack("!I", 0))
    for name, value in (
        ("server_version", "15.99"),
        ("client_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("server_encoding", "UTF8"),
    ):
        out += message(b"S", name.encode() + b"\x00" + value.encode() + b"\x00")
    out += message(b"K", struct.pack("!I", pid) + secret)
    return out + message(b"Z", b"I")


@dataclass(slots=True)
class Peer:
    """One connection from the proxy to the fake backend."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    startup: dict[str, str] = field(default_factory=dict)

    async def read_startup(self) -> dict[str, str]:
        """Read the startup packet, answering 'N' to SSLRequest/GSSENCRequest first."""
        while True:
            (length,) = struct.unpack("!I", await self.reader.readexactly(4))
            body = await self.reader.readexactly(length - 4)
            (code,) = struct.unpack_from("!I", body)
            if code in (SSL_CODE, GSSENC_CODE):
                self.writer.write(b"N")
                await self.writer.drain()
                continue
            parts = body[4:].split(b"\x00")
            self.startup = {
                parts[i].decode(): parts[i + 1].decode()
                for i in range(0, len(parts) - 1, 2)
                if parts[i]
            }
            return self.startup

    async def read_message(self) -> tuple[bytes, bytes]:
        head = await self.reader.readexactly(5)
        (length,) = struct.unpack("!I", head[1:])
        return head[:1], await self.reader.readexactly(length - 4)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Script = Callable[[Peer], Awaitable[None]]


class FakeBackend:
    """``with FakeBackend(script) as fake:`` listens on ``fake.port`` until the block ends."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.connections = 0
        self.errors: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(Peer(reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        except BaseException as exc:  # a bug in the script itself: report it to the test
            self.errors.append(exc)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def __enter__(self) -> FakeBackend:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        assert not self.errors, f"fake backend script failed: {self.errors!r}"
