"""Records of connection attempts that never became a session, rate-limited per address.

Every attempt leaves a record (an unreachable upstream, a login timeout, garbage, a refused
replication or TLS request, a full proxy, a failed login), but a port scan must not be able
to fill the disk: each client address may write ``burst`` such records per ``window``
seconds; what is suppressed beyond that is counted and reported by the address's next
record. Pure: time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _Budget:
    window_start: float
    used: int = 0
    suppressed: int = 0


@dataclass(slots=True)
class AttemptLimiter:
    burst: int = 20
    window: float = 60.0
    max_addresses: int = 10_000
    _budgets: dict[str, _Budget] = field(default_factory=dict)

    def admit(self, address: str, now: float) -> tuple[bool, int]:
        """Whether a record for ``address`` may be written now, and how many were suppressed
        before it (reported by this record, then reset)."""
        budget = self._budgets.get(address)
        if budget is None or now - budget.window_start >= self.window:
            suppressed = budget.suppressed if budget is not None else 0
            if budget is None and len(self._budgets) >= self.max_addresses:
                self._forget_oldest()
            budget = self._budgets[address] = _Budget(now)
            budget.used = 1
            return True, suppressed
        if budget.used < self.burst:
            budget.used += 1
            suppressed, budget.suppressed = budget.suppressed, 0
            return True, suppressed
        budget.suppressed += 1
        return False, 0

    def _forget_oldest(self) -> None:
        oldest = min(self._budgets, key=lambda a: self._budgets[a].window_start)
        del self._budgets[oldest]
