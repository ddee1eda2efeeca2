"""Back-pressure with counted reasons (DESIGN.md rule 6).

Reading from one side stops while *any* reason holds and resumes only when none does: the
audit queue draining must not resume a client whose upstream buffer is still full.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum


class Pause(Enum):
    UPSTREAM_FULL = "upstream write buffer full"
    CLIENT_FULL = "client write buffer full"
    AUDIT_FULL = "audit queue full"
    STALLED = "waiting for the server to settle the session's settings"


class ReadGate:
    """Pauses and resumes reading one transport by reason."""

    __slots__ = ("_held", "_pause", "_resume")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause = pause
        self._resume = resume
        self._held = 0  # a bit per reason (a set per gate cost 216 bytes per idle session)

    def holds(self, reason: Pause) -> bool:
        return bool(self._held & _BIT[reason])

    def hold(self, reason: Pause) -> None:
        if not self._held:
            self._pause()
        self._held |= _BIT[reason]

    def release(self, reason: Pause) -> None:
        bit = _BIT[reason]
        if self._held & bit:
            self._held &= ~bit
            if not self._held:
                self._resume()


_BIT: dict[Pause, int] = {reason: 1 << i for i, reason in enumerate(Pause)}
