"""``audit.write_ahead``: a statement reaches the server only after its dispatch record is in
the trail.

Before a Query, FunctionCall or Execute is forwarded, a compact ``dispatch`` record (who, the
statement as the trail stores it, the decision) is submitted, and the bytes for the server
wait until the trail reports it written (and synced, as ``audit.fsync`` says). Everything
for the server queues behind held bytes, so order is kept; the dispatches of one client read
(a pipeline) and of every session in the same event-loop turn go out in one trail write. The
statement's own record names its dispatch (``dispatch``: the dispatch record's seq); after a
crash the trail closes dispatches that have none (:mod:`proxy.audit.dispatch`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.relay.holdback import HeldOutput, Trail
from proxy.relay.statement import Statement, Via

if TYPE_CHECKING:
    from proxy.audit.events import SessionEvents
    from proxy.gate import Gate


class DispatchGate:
    """Bytes for the server, held until the dispatch records before them are written."""

    __slots__ = ("_out", "_ready", "_submitted", "_trail", "_wake")

    def __init__(self, trail: Trail, wake: Callable[[], None]) -> None:
        self._trail = trail
        self._wake = wake  # called (from the trail's write) when held bytes may go
        self._out = HeldOutput(trail, self._released)
        self._ready: list[bytes] = []
        self._submitted = False  # a dispatch went to the trail since the last forward()

    def dispatch(self, event: dict[str, Any]) -> int:
        """Submit a dispatch record; its seq (which the statement's own record names)."""
        self._trail.submit(event)
        self._submitted = True
        return int(event["seq"])

    def forward(self, data: bytes) -> bytes:
        """``data`` for the server now, or b"" when it must wait (it comes back from
        :meth:`take` after the wake-up)."""
        if not self._submitted and not self._out.holding:
            return data
        self._submitted = False
        if data:
            self._out.hold(data)
        return b""

    def take(self) -> bytes:
        """Bytes released since the last call, in order."""
        if not self._ready:
            return b""
        out = b"".join(self._ready)
        self._ready.clear()
        return out

    @property
    def holding(self) -> bool:
        return self._out.holding

    def _released(self, chunk: bytes) -> None:
        self._ready.append(chunk)
        self._wake()


def dispatch_record(
    events: SessionEvents,
    gate: Gate,
    statement: Statement | None,
    via: Via,
    now_wall: float,
    portal: bytes = b"",
    params: list[Any] | None = None,
) -> dict[str, Any]:
    """The ``dispatch`` record of a statement about to be forwarded (docs/audit-log.md)."""
    event = events.event("dispatch", now_wall)
    event["protocol"] = via.value
    event["backend_pid"] = events.backend_pid
    if statement is None:  # an Execute of a portal pgwarden does not know: the server fails it
        event["statement"] = None
        gate.add_facts(event, None, None)
        return event
    stmt = statement.stmt
    if statement.shown is not None:
        text = statement.shown
    elif stmt is not None:
        text = stmt.text
    else:
        text = statement.text
    gate.record_statement(event, text, stmt, statement.facts)
    gate.add_facts(event, stmt, statement.decision)
    facts = statement.facts
    if facts is not None and len(facts.statements) > 1:
        event["statements"] = len(facts.statements)
    if portal:
        event["portal"] = portal.decode("utf-8", "replace")
    if params is not None:
        event["params"] = params
    return event
