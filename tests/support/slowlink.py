"""A TCP relay in front of PostgreSQL that holds every CancelRequest back for a while.

PostgreSQL closes a cancel connection only after it has signalled the backend, and drivers
rely on that: libpq's ``PQcancel`` waits for the close "so that our cancel does not zap the
next command instead of the one we meant to cancel"; pgjdbc and asyncpg wait for it too. On
loopback the window between "cancel sent" and "server acted" is a millisecond, so a proxy that
reports the cancel done too early loses only a race. Behind this link the window is
``delay`` seconds for every client alike, direct or through pgwarden, which turns that race
into a deterministic outcome: a cancel that lands on the statement after the one it was
meant for.

Everything else is relayed byte for byte, except that the link refuses TLS and GSS
encryption itself (answers ``N``). The relay is a subprocess
(``python -m tests.support.slowlink UPSTREAM_HOST UPSTREAM_PORT DELAY LOG``): psycopg2 holds the
GIL in ``PQcancel``, so a relay thread in the test process would deadlock with it. It prints
its port, then appends one line to LOG per CancelRequest it relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import struct
import subprocess
import sys
from pathlib import Path

from tests.support.rawpg import CANCEL_CODE, GSSENC_CODE, SSL_CODE

_CHUNK = 1 << 16


class SlowCancelLink:
    """``host:port`` relays to ``upstream``; CancelRequests wait ``delay`` seconds first."""

    host = "127.0.0.1"

    def __init__(self, upstream_host: str, upstream_port: int, delay: float, log: Path) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "tests.support.slowlink",
            upstream_host,
            str(upstream_port),
            str(delay),
            str(log),
        ]
        self.log = log
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> SlowCancelLink:
        self.log.write_text("")
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        # Its stdin is a pipe from us: when this process goes away, however, so does the link.
        self._proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root
        )
        assert self._proc.stdout is not None
        poller = select.poll()  # not select(): the test process may hold fds past 1024
        poller.register(self._proc.stdout, select.POLLIN)
        line = self._proc.stdout.readline() if poller.poll(30_000) else ""
        if not line.strip().isdigit():
            self.stop()
            raise AssertionError(f"the slow link did not start (said {line!r})")
        self.port = int(line)
        return self

    @property
    def cancels_relayed(self) -> int:
        return len(self.log.read_text().splitlines())

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        if self._proc is not None:
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()


async def _serve(upstream: tuple[str, int], delay: float, log: Path) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
            while True:
                # Startup-phase packets have no type byte: length, then a code.
                header = await reader.readexactly(8)
                length, code = struct.unpack("!ii", header)
                if code in (SSL_CODE, GSSENC_CODE):
                    # Refused here, as a server without TLS does: what crosses the link stays
                    # readable, so a CancelRequest (libpq 17+ sends one over TLS if it may) is
                    # seen for what it is.
                    writer.write(b"N")
                    continue
                if code == CANCEL_CODE:
                    await asyncio.sleep(delay)
                    with log.open("a") as f:
                        f.write("cancel\n")
                    up_writer.write(header + await reader.readexactly(max(length - 8, 0)))
                else:
                    up_writer.write(header)
                break
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    server = await asyncio.start_server(handle, SlowCancelLink.host, 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # EOF: the test process is gone
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await stop.wait()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (a closed cancel socket must reach the client)."""
    try:
        while chunk := await src.read(_CHUNK):
            dst.write(chunk)
            await dst.drain()
    finally:
        with contextlib.suppress(OSError):
            dst.close()


def main(argv: list[str]) -> None:
    host, port, delay, log = argv
    asyncio.run(_serve((host, int(port)), float(delay), Path(log)))


if __name__ == "__main__":
    main(sys.argv[1:])
