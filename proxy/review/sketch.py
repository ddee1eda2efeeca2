"""A bounded latency histogram with a guaranteed relative accuracy for every quantile.

Durations fall into logarithmic buckets ``(gamma**(i-1), gamma**i]`` with
``gamma = (1 + alpha) / (1 - alpha)``; a quantile is answered with the bucket's value
``2 * gamma**i / (gamma + 1)``, which is within ``alpha`` (relative) of every value in that bucket.
So any reported percentile is within 1 % of the exact nearest-rank percentile, whatever the
number of samples. Memory is one counter per occupied bucket: about 1,200 buckets cover 1 µs to
1 hour, and real workloads occupy a few dozen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)


class LatencySketch:
    """Counts durations in milliseconds; answers quantiles within :data:`RELATIVE_ACCURACY`."""

    __slots__ = ("_buckets", "count", "max", "min", "total", "zero_count")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.zero_count = 0  # durations <= 0 (clock granularity): reported as 0
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if value <= 0.0:
            self.zero_count += 1
            return
        index = math.ceil(math.log(value) / _LOG_GAMMA)
        buckets = self._buckets
        buckets[index] = buckets.get(index, 0) + 1

    def merge(self, other: LatencySketch) -> None:
        for index, n in other._buckets.items():
            self._buckets[index] = self._buckets.get(index, 0) + n
        self.zero_count += other.zero_count
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile (0 < q <= 1), within 1 %; None when empty.

        Clamped to the exact min and max, so p0/p100-like questions are exact.
        """
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        if rank <= self.zero_count:
            return 0.0
        seen = self.zero_count
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                estimate = 2.0 * _GAMMA**index / (_GAMMA + 1.0)
                return min(max(estimate, self.min), self.max)
        return self.max  # unreachable when counts are consistent

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def buckets(self) -> Iterator[tuple[float, float, int]]:
        """(lower, upper, count) per occupied bucket, ascending; zeros as (0, 0, n)."""
        if self.zero_count:
            yield 0.0, 0.0, self.zero_count
        for index in sorted(self._buckets):
            yield _GAMMA ** (index - 1), _GAMMA**index, self._buckets[index]
