"""The batches the trail just wrote, held for the store shipper: shipping without reading back.

The trail hands every written batch (its events and the exact lines) to the shipper; the
shipper keeps them here until the store has them, so in the steady state nothing is read back
from the files or parsed again. The files stay the durable record: whatever is not here — the
events before a start, a batch written in pieces after a failed write, everything past
:attr:`MemoryQueue.max_events` while the store is slow or away — the shipper reads from the
files, and the queue takes batches again once it is empty. It only ever holds one run of
consecutive seqs, so taking from it never skips or repeats an event.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from proxy.store.rows import Batch, joined


class MemoryQueue:
    """Consecutive written batches, at most ``max_events`` events in all."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._batches: deque[Batch] = deque()
        self._events = 0
        self.refused = 0  # events not held (full, or not following the held run)

    @property
    def events(self) -> int:
        return self._events

    @property
    def first_seq(self) -> int | None:
        return self._batches[0].first_seq if self._batches else None

    def wants(self, first_seq: int, count: int) -> bool:
        """Whether :meth:`offer` would hold a batch of ``count`` events from ``first_seq``."""
        if self._events + count > self.max_events:
            return False
        return not self._batches or first_seq == self._batches[-1].last_seq + 1

    def offer(self, batch: Batch) -> bool:
        """Hold ``batch`` if it follows the held run and fits; False (counted) if not."""
        if not self.wants(batch.first_seq, batch.count):
            self.refused += batch.count
            return False
        self._batches.append(batch)
        self._events += batch.count
        return True

    def take(self, seq: int, limit: int) -> Batch | None:
        """Up to ``limit`` consecutive events from ``seq`` on, if the queue holds ``seq``
        (it drops what comes before ``seq``: the store has it). Nothing is removed until
        :meth:`release`, so a batch the store did not take is offered again."""
        self.release(seq - 1)
        if not self._batches or self._batches[0].first_seq > seq:
            return None
        first = self._batches[0]
        if first.count >= limit:
            return first.window(seq, limit)
        parts = [first]
        total = first.count
        for batch in islice(self._batches, 1, None):
            if total + batch.count > limit:
                break
            parts.append(batch)
            total += batch.count
        return joined(parts)

    def release(self, seq: int) -> None:
        """Forget every event up to ``seq``."""
        batches = self._batches
        while batches and batches[0].last_seq <= seq:
            self._events -= batches.popleft().count
        if batches and batches[0].first_seq <= seq:
            rest = batches[0].window(seq + 1, batches[0].count)
            self._events -= batches[0].count - rest.count
            batches[0] = rest
