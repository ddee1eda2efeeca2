"""Splitting a byte stream into typed messages (1 type byte + 4 length bytes + body).

:class:`Framer` is the sans-IO boundary finder for the client→server direction: feed it bytes,
take complete messages out. Limits are checked on the header, before any body is buffered,
and CopyData is handed out in pieces as it arrives instead of being assembled whole.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from proxy.errors import ProtocolError
from proxy.wire import constants as c

_U32 = struct.Struct("!I")

# Emitted for each piece of a streamed message: the raw bytes to forward, no decoded body.
STREAM_PIECE = -1
_VIEW_COPY = 64 * 1024  # messages at least this long are copied out of the buffer via a view


class Framer:
    """Incremental framer. ``messages()`` yields ``(kind, body, raw)``:

    * a complete message: ``kind`` is the type byte, ``body`` the payload, ``raw`` the exact
      bytes received (header included) so an unchanged message is forwarded as it came;
    * a piece of a streamed message (CopyData): ``kind`` is the type byte, ``body`` is None and
      ``raw`` the bytes of this piece.
    """

    __slots__ = (
        "_allowed",
        "_buf",
        "_err",
        "_large_limit",
        "_large_types",
        "_small_limit",
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
        self._buf = bytearray()
        self._err = error
        self._large_limit = large_limit
        self._small_limit = small_limit
        self._allowed = allowed
        self._large_types = large_types
        self._streamed = streamed
        self._stream_left = 0
        self._stream_kind = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held back (never forwarded until complete)."""
        return len(self._buf)

    @property
    def in_stream(self) -> bool:
        return self._stream_left > 0

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes | None, bytes]]:
        """Add ``data`` and yield every message (or streamed piece) now available."""
        if self._stream_left:
            take = min(self._stream_left, len(data))
            self._stream_left -= take
            yield self._stream_kind, None, data[:take]
            data = data[take:]
            if not data:
                return
        if self._buf:
            self._buf += data
            view: bytes | bytearray = self._buf
        else:
            view = data
        pos = 0
        end = len(view)
        while end - pos >= 5:
            kind = view[pos]
            (length,) = _U32.unpack_from(view, pos + 1)
            self._check(kind, length)
            total = length + 1
            if end - pos >= total:
                if total >= _VIEW_COPY and view is self._buf:
                    # One copy, not two (a bytearray slice, then bytes of it): the first
                    # touch of each fresh page of a 6 MB copy costs ~8 ms on the loop.
                    with memoryview(view) as whole:
                        raw = bytes(whole[pos : pos + total])
                else:
                    raw = bytes(view[pos : pos + total])
                yield kind, raw[5:], raw
                pos += total
                continue
            if kind in self._streamed:
                piece = bytes(view[pos:end])
                self._stream_left = total - (end - pos)
                self._stream_kind = kind
                pos = end
                yield kind, None, piece
            break
        if view is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf += view[pos:]

    def _check(self, kind: int, length: int) -> None:
        if self._allowed is not None and kind not in self._allowed:
            raise self._err(f"invalid message type {chr(kind)!r} (0x{kind:02x})")
        if length < 4:
            raise self._err(f"invalid message length {length}")
        if kind in self._streamed:
            limit = c.LARGE_MESSAGE_LIMIT
        elif kind in self._large_types:
            limit = self._large_limit
        else:
            limit = self._small_limit
        if length - 4 > limit:
            raise self._err(
                f"message {chr(kind)!r} of {length - 4} bytes exceeds the limit of {limit} bytes",
                c.SQLSTATE_PROGRAM_LIMIT if kind in self._large_types else None,
            )
