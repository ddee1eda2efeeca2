"""Hold many idle client connections open through a target and see what they cost in memory.

Each connection does a real v3 startup (StartupMessage, trust authentication, parameter
statuses, BackendKeyData) and waits for ReadyForQuery, so the proxy has a live session and an
upstream connection for every client, as an idle application pool would leave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import struct
from dataclasses import dataclass

from lib.services import Target

_PROTOCOL_3_0 = 3 << 16


class IdleConnectFailed(Exception):
    """A client could not complete startup through the target."""


@dataclass(frozen=True, slots=True)
class IdleConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards ``needed`` (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        new_soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = new_soft
    return soft


def _startup_message(user: str, database: str) -> bytes:
    body = struct.pack("!I", _PROTOCOL_3_0)
    for key, value in (("user", user), ("database", database), ("application_name", "idle")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


async def _connect(target: Target, user: str, database: str) -> IdleConnection:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.write(_startup_message(user, database))
    await writer.drain()
    while True:
        header = await reader.readexactly(5)
        kind = header[:1]
        (length,) = struct.unpack("!I", header[1:])
        body = await reader.readexactly(length - 4)
        if kind == b"E":
            raise IdleConnectFailed(body.replace(b"\0", b" ").decode(errors="replace"))
        if kind == b"R" and struct.unpack("!I", body[:4])[0] != 0:
            raise IdleConnectFailed("the target asked for a password; the harness uses trust")
        if kind == b"Z":
            return IdleConnection(reader, writer)


async def open_idle(
    target: Target, count: int, user: str, database: str, parallel: int = 50
) -> list[IdleConnection]:
    """Open ``count`` connections, at most ``parallel`` handshakes at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one() -> IdleConnection:
        async with gate:
            return await _connect(target, user, database)

    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    opened = [o for o in outcomes if isinstance(o, IdleConnection)]
    failures = [o for o in outcomes if not isinstance(o, IdleConnection)]
    if failures:
        await close_idle(opened)
        first = failures[0]
        raise IdleConnectFailed(
            f"{len(failures)} of {count} connections failed, first: {type(first).__name__}: {first}"
        )
    return opened


async def close_idle(connections: list[IdleConnection]) -> None:
    for conn in connections:
        conn.writer.write(b"X\0\0\0\4")  # Terminate, so the server side ends cleanly
        conn.writer.close()
    for conn in connections:
        with contextlib.suppress(ConnectionError, OSError):
            await conn.writer.wait_closed()
