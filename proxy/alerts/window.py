"""Bounded memory for alert rules: sliding windows per group, and first-seen pairs.

Memory stays bounded whatever the traffic: a group's window never holds more than the
threshold count (reaching it fires and empties the window), and the number of groups (and of
remembered (user, fingerprint) pairs) is capped with least-recently-used eviction. An
evicted group merely starts counting from zero again; an evicted pair may be reported as new
once more — both documented trade-offs of bounded memory.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

MAX_GROUPS = 10_000  # per rule
MAX_PAIRS = 100_000  # per new_fingerprint rule


@dataclass(frozen=True, slots=True)
class WindowHit:
    """The threshold was reached: the events (seq, when) that made it."""

    count: int
    seqs: tuple[int, ...]
    first_at: float
    last_at: float


class SlidingWindows:
    """``count >= N in W`` per group, with a cooldown after each hit."""

    def __init__(self, count: int, window: float, cooldown: float, max_groups: int = MAX_GROUPS):
        self.count = count
        self.window = window
        self.cooldown = cooldown
        self.max_groups = max_groups
        self._groups: OrderedDict[str, deque[tuple[float, int]]] = OrderedDict()
        self._quiet_until: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, group: str, at: float, seq: int) -> WindowHit | None:
        """Record one matching event at time ``at``; a :class:`WindowHit` when it fires."""
        quiet = self._quiet_until.get(group)
        if quiet is not None:
            if at < quiet:
                return None
            del self._quiet_until[group]
        events = self._groups.get(group)
        if events is None:
            events = deque(maxlen=self.count)
            self._groups[group] = events
            if len(self._groups) > self.max_groups:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(group)
        events.append((at, seq))
        horizon = at - self.window
        while events and events[0][0] <= horizon:
            events.popleft()
        if len(events) < self.count:
            return None
        hit = WindowHit(len(events), tuple(s for _, s in events), events[0][0], at)
        del self._groups[group]  # the next alert needs a fresh set of events
        if self.cooldown > 0:
            self._quiet_until[group] = at + self.cooldown
            if len(self._quiet_until) > self.max_groups:
                self._quiet_until.popitem(last=False)
        return hit


class FirstSeen:
    """Remembers pairs (e.g. user and query fingerprint); tells whether one is new."""

    def __init__(self, max_pairs: int = MAX_PAIRS) -> None:
        self.max_pairs = max_pairs
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, pair: tuple[str, str]) -> bool:
        """True the first time ``pair`` is seen (or first since it was evicted)."""
        if pair in self._seen:
            self._seen.move_to_end(pair)
            return False
        self._seen[pair] = None
        if len(self._seen) > self.max_pairs:
            self._seen.popitem(last=False)
        return True
