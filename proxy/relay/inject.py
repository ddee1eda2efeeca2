"""Requests pgwarden sends the server on its own, between the client's messages, sans-IO.

The row guard wraps a statement in ``SAVEPOINT``/``RELEASE`` (or ``BEGIN``/``COMMIT``); a
review hold asks the server ``SHOW``-like questions. The server answers these requests in
order with everything else, so an :class:`Injector` is only given one when every reply the
client is owed has arrived (the caller drains first): from then on, each server message
belongs to the injected requests until their last reply. They are consumed here and never
reach the client.

Two forms, chosen by the caller:

* **simple** — one Query message, answered by its completions and a ReadyForQuery. Only
  where a Query from the client is at hand anyway (it drops the unnamed statement and
  portal, as the client's own Query does).
* **extended** — Parse / Bind / Close / Execute / Close of a statement and portal named
  ``pgwarden_inject`` plus a Flush, and no Sync: the client's unnamed statement and portal,
  its pipeline and its implicit transaction are left alone. An error here makes the server
  discard everything up to the client's next Sync (used on purpose to fail a transaction).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from enum import Enum

from proxy.errors import BackendProtocolError
from proxy.wire import messages as m

NAME = b"pgwarden_inject"


class Owes(Enum):
    """One reply an injected request still owes."""

    PARSE_COMPLETE = 49  # '1'
    BIND_COMPLETE = 50  # '2'
    CLOSE_COMPLETE = 51  # '3'
    COMPLETION = 67  # 'C' (or 'I' for an empty query, or 'E')
    READY = 90  # 'Z': the end of a simple request


@dataclass(frozen=True, slots=True)
class Injected:
    """A request of pgwarden's own. ``fails``: it is meant to fail (the error ends it)."""

    sql: str
    simple: bool
    fails: bool = False
    sync: bool = False  # a bare Sync: ends the server's discarding after an injected error


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server answered one injected request."""

    request: Injected
    tag: str = ""
    error: dict[str, str] | None = None
    status: int = 0  # the ReadyForQuery status, for a simple request
    rows: int = 0  # DataRows the server sent (their bytes are the caller's to read)

    @property
    def ok(self) -> bool:
        return self.error is None


_EXTENDED_OWES = (
    Owes.PARSE_COMPLETE,
    Owes.BIND_COMPLETE,
    Owes.CLOSE_COMPLETE,
    Owes.COMPLETION,
    Owes.CLOSE_COMPLETE,
)
_SIMPLE_OWES = (Owes.COMPLETION, Owes.READY)


def encode(request: Injected) -> bytes:
    """The wire bytes of ``request``."""
    if request.sync:
        return m.SYNC
    if request.simple:
        return m.query(request.sql)
    if request.fails:
        # A statement that fails to parse: nothing is created, the error ends it.
        return m.parse(NAME, request.sql) + m.FLUSH
    return b"".join(
        (
            m.parse(NAME, request.sql),
            m.message(66, NAME + b"\x00" + NAME + b"\x00" + b"\x00\x00" * 3),  # Bind
            # The statement is closed before it runs: an error in it leaves nothing behind.
            m.message(67, b"S" + NAME + b"\x00"),  # Close statement
            m.message(69, NAME + b"\x00" + struct.pack("!I", 0)),  # Execute
            m.message(67, b"P" + NAME + b"\x00"),  # Close portal
            m.FLUSH,
        )
    )


class Injector:
    """The replies owed to injected requests, in order; :meth:`on_message` consumes them."""

    __slots__ = ("_error", "_owes", "_requests", "_rows", "_tag")

    def __init__(self) -> None:
        self._requests: deque[Injected] = deque()
        self._owes: deque[Owes] = deque()  # what the first request still owes
        self._tag = ""
        self._error: dict[str, str] | None = None
        self._rows = 0

    @property
    def busy(self) -> bool:
        return bool(self._requests)

    def send(self, *requests: Injected) -> bytes:
        """Queue ``requests`` and return their bytes for the server."""
        if not self._requests and requests:
            self._owes.extend(_owed(requests[0]))
        self._requests.extend(requests)
        return b"".join(encode(r) for r in requests)

    def on_message(self, kind: int, body: bytes, rows: int) -> Answer | None:
        """Consume one watched server message owed to an injected request; the request's
        :class:`Answer` once its last reply is in, else None."""
        if not self._requests:
            raise BackendProtocolError("no injected request is waiting for a reply")
        self._rows += rows
        request = self._requests[0]
        owes = self._owes
        if kind == 69:  # ErrorResponse
            self._error = m.decode_fields(body)
            if request.simple:
                while owes[0] is not Owes.READY:
                    owes.popleft()
                return None
            # The server now discards everything up to a Sync, what else was injected too.
            answer = self._finish(0)
            self._requests.clear()
            owes.clear()
            return answer
        if kind == 84 or kind == 110 or kind == 116:
            return None  # RowDescription / NoData / ParameterDescription: nothing owed
        expected = owes[0]
        if kind == 67 or kind == 73:
            # A simple request may hold several statements: the last tag is its answer.
            if expected is not Owes.COMPLETION and not request.simple:
                raise BackendProtocolError("unexpected CommandComplete for pgwarden's request")
            self._tag = m.decode_command_tag(body) if kind == 67 else ""
            if expected is not Owes.COMPLETION:
                return None
        elif expected.value != kind:
            raise BackendProtocolError(
                f"unexpected {chr(kind)!r} from server while it answers pgwarden's own request"
            )
        owes.popleft()
        if owes:
            return None
        return self._finish(body[0] if kind == 90 and len(body) == 1 else 0)

    def _finish(self, status: int) -> Answer:
        request = self._requests.popleft()
        answer = Answer(request, self._tag, self._error, status, self._rows)
        self._tag = ""
        self._error = None
        self._rows = 0
        if self._requests:
            self._owes.extend(_owed(self._requests[0]))
        return answer


def _owed(request: Injected) -> tuple[Owes, ...]:
    if request.sync:
        return (Owes.READY,)
    if request.simple:
        return _SIMPLE_OWES
    if request.fails:
        return (Owes.COMPLETION,)  # its ErrorResponse
    return _EXTENDED_OWES
