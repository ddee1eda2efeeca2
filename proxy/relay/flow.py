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

    __slots__ = ("_pause", "_reasons", "_resume")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause = pause
        self._resume = resume
        self._reasons: set[Pause] = set()

    @property
    def reasons(self) -> frozenset[Pause]:
        return frozenset(self._reasons)

    def hold(self, reason: Pause) -> None:
        if not self._reasons:
            self._pause()
        self._reasons.add(reason)

    def release(self, reason: Pause) -> None:
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons:
                self._resume()
