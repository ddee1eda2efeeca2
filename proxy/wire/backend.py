"""Server→client framing: forward the byte stream, hand out only the messages that matter.

:class:`BackendScanner` is sans-IO. ``feed(data)`` returns the bytes to forward to the client
now and calls ``handle(kind, body, rows)`` for every complete *watched* message, in stream
order; ``rows`` is the number of DataRows forwarded since the previous watched message. A
handler may return replacement bytes for the message (``b""`` swallows it) or None to keep it.

Costs stay linear in the size of a message however it is chunked: an incomplete watched
message is accumulated in one buffer whose needed length is known from its header (the
stream is never rescanned or re-copied), and every other message — DataRow, CopyData,
NoticeResponse, NotificationResponse, anything the relay does not need to read — is forwarded
piece by piece as it arrives. Each watched type has a size limit checked on the header,
before anything is buffered: a server that announces an impossible length is a protocol
error, not an allocation.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.errors import BackendProtocolError
from proxy.wire.framing import fill_header, held_length

# Watched message types and the largest body each may have. Small: fixed-shape replies whose
# size PostgreSQL bounds (tags are < 64 bytes; ParameterDescription holds at most 65535 OIDs).
# Bounded: texts the server may make long (an error or RowDescription) but that the relay must
# read or replace whole.
SMALL_BODY = 1 << 20
BOUNDED_BODY = (1 << 30) - 1
_LIMITS: dict[int, int] = {
    **{k: SMALL_BODY for k in b"ZCSK123ntsIGHWv"},
    **{k: BOUNDED_BODY for k in b"ETRV"},
}
# Passed through unread: DataRow, CopyData, CopyDone, NoticeResponse, NotificationResponse.
_PASSTHROUGH = frozenset(b"DdcNA")
# -1: not a backend message type at all (garbage from the server is a protocol error).
_LIMIT_TABLE = tuple(
    _LIMITS.get(k, 0) if k in _LIMITS or k in _PASSTHROUGH else -1 for k in range(256)
)
PASSTHROUGH_BODY = (1 << 30) - 1

Handler = Callable[[int, bytes, int], "bytes | None"]


class BackendScanner:
    """Incremental scanner for one server connection (auth phase and after)."""

    __slots__ = ("_handle", "_need", "_partial", "_stream_left", "capture", "passthrough")

    def __init__(self, handle: Handler) -> None:
        self._handle = handle
        self._partial = bytearray()  # an incomplete message: header, or header + watched body
        self._need = 0  # total bytes of the watched message in ``_partial`` (0: header only)
        self._stream_left = 0  # bytes of a passed-through message still to come
        # CopyBoth (replication) after startup: relay everything blindly from here on.
        self.passthrough = False
        # While set, what would go to the client is kept here instead (a statement the row
        # guard must decide before the client sees any of its reply).
        self.capture: list[bytes] | None = None

    def hand_over(self, handle: Handler) -> None:
        """Send the watched messages from here on (also the rest of this chunk) to ``handle``:
        the relay core's own method once the session is ready, one call less per message."""
        self._handle = handle

    @property
    def buffered(self) -> int:
        """Bytes held back: an incomplete message the relay must read whole."""
        return len(self._partial)

    def feed(self, data: bytes) -> bytes:
        if self.capture is not None:
            return self._captured(data)
        if self.passthrough:
            return data
        pieces: list[bytes] = []
        if self._stream_left:
            take = min(self._stream_left, len(data))
            self._stream_left -= take
            if take == len(data):
                return data
            pieces.append(data[:take])
            data = data[take:]
        if self._partial:
            data = self._complete_partial(data, pieces)
            if not data:
                return b"".join(pieces) if len(pieces) != 1 else pieces[0]
        self._scan(data, pieces)
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def _captured(self, data: bytes) -> bytes:
        capture = self.capture
        assert capture is not None
        self.capture = None
        try:
            capture.append(self.feed(data))
        finally:
            self.capture = capture  # ended only between chunks (by the relay core)
        return b""

    def _complete_partial(self, data: bytes, pieces: list[bytes]) -> bytes:
        """Add ``data`` to the held message; return what follows it once it is complete."""
        partial = self._partial
        if not self._need:
            # Only part of a header so far: take up to a full header and decide.
            rest = fill_header(partial, data)
            if rest is None:
                return b""
            data = rest
            kind, length = partial[0], held_length(partial)
            limit = self._check(kind, length)
            if not limit:
                # Not watched: forward the header and stream the body.
                if kind == 68:
                    self._handle(68, b"", 1)
                pieces.append(bytes(partial))
                partial.clear()
                self._stream_left = length - 4
                take = min(self._stream_left, len(data))
                self._stream_left -= take
                if take:
                    pieces.append(data[:take])
                return data[take:]
            self._need = length + 1
        missing = self._need - len(partial)
        if len(data) < missing:
            partial += data
            return b""
        partial += data[:missing]
        message = bytes(partial)
        partial.clear()
        self._need = 0
        replacement = self._handle(message[0], message[5:], 0)
        pieces.append(message if replacement is None else replacement)
        return data[missing:]

    def _check(self, kind: int, length: int) -> int:
        """The body limit of a watched type (0 when not watched), after validating ``length``."""
        limit = _LIMIT_TABLE[kind]
        if limit < 0:
            raise BackendProtocolError(f"invalid message type 0x{kind:02x} from server")
        if length < 4:
            raise BackendProtocolError(f"invalid message length {length}")
        if not limit and length - 4 > PASSTHROUGH_BODY:
            raise BackendProtocolError(f"server message of {length - 4} bytes is too large")
        if limit and length - 4 > limit:
            raise BackendProtocolError(
                f"server message {chr(kind)!r} of {length - 4} bytes exceeds {limit} bytes"
            )
        return limit

    def _scan(self, buf: bytes, pieces: list[bytes]) -> None:
        end = len(buf)
        pos = 0
        start = 0  # first byte not yet placed in ``pieces``
        rows = 0
        limits = _LIMIT_TABLE
        while end - pos >= 5:
            kind = buf[pos]
            # (byte by byte: in the compiled build this is plain C, a struct call is not)
            length = (
                (buf[pos + 1] << 24) | (buf[pos + 2] << 16) | (buf[pos + 3] << 8) | buf[pos + 4]
            )
            total = length + 1
            if kind == 68:  # DataRow: the bulk of most replies; count it, pass it through
                if length < 4:
                    self._check(kind, length)
                if end - pos < total:
                    break
                rows += 1
                pos += total
                continue
            limit = limits[kind]
            if limit <= 0:
                if limit < 0 or length < 4:
                    self._check(kind, length)
                if end - pos < total:
                    break
                pos += total
                continue
            if length < 4 or length - 4 > limit:
                self._check(kind, length)
            if end - pos < total:
                break
            # (read each time: a handler may hand the stream on, see :meth:`hand_over`)
            replacement = self._handle(kind, buf[pos + 5 : pos + total], rows)
            rows = 0
            if replacement is not None:
                pieces.append(buf[start:pos])
                if replacement:
                    pieces.append(replacement)
                start = pos + total
            pos += total
        rest = end - pos
        if rest >= 5 and buf[pos] == 68:
            rows += 1  # a DataRow that arrives in pieces counts when its header does
        if rows:
            # DataRows at the end of the chunk: the handler counts them with the next message.
            self._handle(68, b"", rows)
        if rest == 0:
            if start < end:
                pieces.append(buf[start:] if start else buf)
            return
        if rest >= 5:
            kind = buf[pos]
            length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            limit = self._check(kind, length)
            if not limit:
                # Forward what arrived of a passthrough message; stream the rest.
                self._stream_left = length + 1 - rest
                pieces.append(buf[start:] if start else buf)
                return
            self._need = length + 1
        pieces.append(buf[start:pos])
        self._partial += buf[pos:]
