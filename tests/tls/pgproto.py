"""A minimal asyncio Protocol speaking v3 to PostgreSQL, for tests of upstream links."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from tests.support import rawpg


class PgClient(asyncio.Protocol):
    """Collects server messages; ``await until(b"Z")`` returns them up to that type."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.changed = asyncio.Event()
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.changed.set()

    async def close(self) -> None:
        """Close and wait until the transport is gone (uvloop refuses to close a loop
        whose handles are still closing)."""
        assert self.transport is not None
        self.transport.close()
        async with asyncio.timeout(10):
            while not self.closed:
                self.changed.clear()
                await self.changed.wait()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _take(self) -> tuple[bytes, bytes] | None:
        if len(self.buf) < 5:
            return None
        (length,) = struct.unpack_from("!I", self.buf, 1)
        if len(self.buf) < 1 + length:
            return None
        kind, body = bytes(self.buf[:1]), bytes(self.buf[5 : 1 + length])
        del self.buf[: 1 + length]
        return kind, body

    async def until(self, kind: bytes, within: float = 10) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        async with asyncio.timeout(within):
            while True:
                msg = self._take()
                if msg is None:
                    if self.closed:
                        raise ConnectionError(f"closed; got {out!r}")
                    self.changed.clear()
                    await self.changed.wait()
                    continue
                out.append(msg)
                if msg[0] == kind:
                    return out

    async def login(self, user: str, database: str = "postgres") -> list[tuple[bytes, bytes]]:
        self.send(rawpg.startup({"user": user, "database": database}))
        return await self.until(b"Z")

    async def scalar(self, sql: str) -> str | None:
        self.send(rawpg.query(sql))
        for kind, body in await self.until(b"Z"):
            if kind == b"E":
                raise AssertionError(body)
            if kind == b"D":
                (size,) = struct.unpack_from("!i", body, 2)
                return None if size < 0 else body[6 : 6 + size].decode()
        return None
