"""Splitting a byte stream into typed messages (1 type byte + 4 length bytes + body).

:class:`Framer` is the sans-IO boundary finder for the client→server direction: feed it bytes,
take complete messages out. Limits are checked on the header, before any body is buffered,
and CopyData is handed out in pieces as it arrives instead of being assembled whole.
"""

from __future__ import annotations

import functools

from proxy.errors import ProtocolError
from proxy.wire import constants as c

Framed = tuple[int, "bytes | None", bytes]


def fill_header(held: bytearray, data: bytes) -> bytes | None:
    """Move what ``held`` lacks of a 5-byte message header from ``data`` into it: what is
    left of ``data``, or None while the header is still incomplete."""
    if len(held) >= 5:
        return data
    take = 5 - len(held)
    held += data[:take]
    return data[take:] if len(held) == 5 else None


def held_length(held: bytearray) -> int:
    """The length field of the header at the start of ``held``."""
    return int.from_bytes(held[1:5], "big")


@functools.lru_cache(maxsize=32)
def _limit_table(
    large_limit: int,
    small_limit: int,
    allowed: frozenset[int] | None,
    large_types: frozenset[int],
    streamed: frozenset[int],
) -> tuple[int, ...]:
    """The largest body of each type byte (-1: a type the peer may not send). One table per
    configuration, shared by every session's framers (256 int objects each: ~10 kB)."""
    return tuple(
        -1
        if allowed is not None and kind not in allowed
        else c.LARGE_MESSAGE_LIMIT
        if kind in streamed
        else large_limit
        if kind in large_types
        else small_limit
        for kind in range(256)
    )


class Framer:
    """Incremental framer. ``feed(data)`` returns the ``(kind, body, raw)`` now available:

    * a complete message: ``kind`` is the type byte, ``body`` the payload, ``raw`` the exact
      bytes received (header included) so an unchanged message is forwarded as it came;
    * a piece of a streamed message (CopyData): ``kind`` is the type byte, ``body`` is None and
      ``raw`` the bytes of this piece.

    A list, not a generator, and headers read byte by byte against a per-type limit table:
    this runs for every client message (in the compiled build it is plain C).
    """

    __slots__ = (
        "_buf",
        "_err",
        "_large_types",
        "_limits",
        "_stream_kind",
        "_stream_left",
        "_streamed",
    )

    def __init__(
        self,
        error: type[ProtocolError],
        *,
        large_limit: int,
        small_limit: int = c.SMALL_MESSAGE_LIMIT,
        allowed: frozenset[int] | None = None,
        large_types: frozenset[int] = c.LARGE_FRONTEND_TYPES,
        streamed: frozenset[int] = c.STREAMED_TYPES,
    ) -> None:
        self._buf = bytearray()  # an incomplete message (never forwarded until complete)
        self._err = error
        self._large_types = large_types
        self._streamed = streamed
        self._stream_left = 0
        self._stream_kind = 0
        self._limits = _limit_table(large_limit, small_limit, allowed, large_types, streamed)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held back (never forwarded until complete)."""
        return len(self._buf)

    @property
    def in_stream(self) -> bool:
        return self._stream_left > 0

    def feed(self, data: bytes) -> list[Framed]:
        """Add ``data``; every message (or streamed piece) now available, in order."""
        out: list[Framed] = []
        if self._stream_left:
            take = min(self._stream_left, len(data))
            self._stream_left -= take
            out.append((self._stream_kind, None, data[:take] if take < len(data) else data))
            data = data[take:]
            if not data:
                return out
        if self._buf:
            data = self._complete(data, out)
        if data:
            self._split(data, out)
        return out

    def _split(self, data: bytes, out: list[Framed]) -> None:
        end = len(data)
        pos = 0
        limits = self._limits
        while end - pos >= 5:
            kind = data[pos]
            length = (
                (data[pos + 1] << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
            )
            limit = limits[kind]
            if limit < 0 or length < 4 or length - 4 > limit:
                self._refuse(kind, length, limit)
            total = length + 1
            if end - pos >= total:
                raw = data if pos == 0 and total == end else data[pos : pos + total]
                out.append((kind, raw[5:], raw))
                pos += total
                continue
            if kind in self._streamed:
                self._stream_left = total - (end - pos)
                self._stream_kind = kind
                out.append((kind, None, data[pos:] if pos else data))
                return
            break
        if pos < end:
            self._buf += data[pos:]

    def _complete(self, data: bytes, out: list[Framed]) -> bytes:
        """Add ``data`` to the held message; what follows it once it is complete (else b"").
        The held bytes are copied once, when the message is complete: linear in its size."""
        buf = self._buf
        rest = fill_header(buf, data)
        if rest is None:
            return b""
        data = rest
        kind, length = buf[0], held_length(buf)
        limit = self._limits[kind]
        if limit < 0 or length < 4 or length - 4 > limit:
            self._refuse(kind, length, limit)
        missing = length + 1 - len(buf)
        if len(data) >= missing:
            # One copy of what is held (a long message's fresh pages cost the loop once each).
            with memoryview(data) as tail:
                raw = b"".join((buf, tail[:missing]))
            buf.clear()
            out.append((kind, raw[5:], raw))
            return data[missing:]
        if kind in self._streamed:
            out.append((kind, None, b"".join((buf, data))))
            buf.clear()
            self._stream_left = missing - len(data)
            self._stream_kind = kind
            return b""
        buf += data
        return b""

    def _refuse(self, kind: int, length: int, limit: int) -> None:
        if limit < 0:
            raise self._err(f"invalid message type {chr(kind)!r} (0x{kind:02x})")
        if length < 4:
            raise self._err(f"invalid message length {length}")
        raise self._err(
            f"message {chr(kind)!r} of {length - 4} bytes exceeds the limit of {limit} bytes",
            c.SQLSTATE_PROGRAM_LIMIT if kind in self._large_types else None,
        )
