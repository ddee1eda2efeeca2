"""Client output held back until the audit events it depends on are written.

No client ever sees a result that is not in the audit log: bytes that follow a statement's
completion wait until the trail reports that its event reached the OS (and the disk, with
``audit.fsync=always``). Order is kept: once anything is held, later bytes queue behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from proxy.audit.record import Event


class Trail(Protocol):
    def submit(self, event: Event) -> None: ...

    def when_written(self, callback: Callable[[], None]) -> None: ...


class HeldOutput:
    __slots__ = ("_before_submit", "_held", "_marker", "_released", "_trail", "_write", "sent")

    def __init__(
        self,
        trail: Trail,
        write: Callable[[bytes], None],
        before_submit: Callable[[Event], None] | None = None,
    ) -> None:
        self._trail = trail
        self._before_submit = before_submit
        self._write = write  # writes to the client (or drops, once it is gone)
        self._held: list[bytes] = []
        self._marker = 0
        self._released = 0
        self.sent = 0  # bytes written to the client

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def send(self, data: bytes, events: list[Event] | None, *, wait: bool = True) -> None:
        """Write ``data`` once ``events`` (and everything held before) are in the trail.
        ``wait=False``: the events are submitted but ``data`` does not wait for them (a
        refusal because the trail cannot write must not wait for that very trail)."""
        if events:
            submit = self._trail.submit
            prepare = self._before_submit
            for event in events:
                if prepare is not None and event["type"] == "transaction":
                    prepare(event)
                submit(event)
            if not wait:
                events = None
        if not events and not self._held:
            if data:
                self.sent += len(data)
                self._write(data)
            return
        self.hold(data)

    def hold(self, data: bytes) -> None:
        """Write ``data`` once every event submitted to the trail so far is written."""
        self._held.append(data)
        self._marker += 1
        marker = self._marker
        self._trail.when_written(lambda: self._release(marker))

    def then(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after everything held so far has been written out."""
        if not self._held:
            callback()
            return
        self._marker += 1
        marker = self._marker

        def release_then() -> None:
            self._release(marker)
            callback()

        self._trail.when_written(release_then)

    def _release(self, marker: int) -> None:
        count = marker - self._released
        if count <= 0:
            return
        self._released = marker
        chunk = b"".join(self._held[:count])
        del self._held[:count]
        if chunk:
            self.sent += len(chunk)
            self._write(chunk)
