"""Login rate limiting per client address and per user, pure (time is passed in).

A TLS listener on a public address must not be a password oracle. Every failed login
counts against the client's address and against the user name; past a threshold, each
further attempt waits twice as long as the previous one (up to a ceiling) before it is even
tried. A quiet period (``window`` without failures) forgets the count. A successful login
clears the user's count, not the address's: one valid account must not reset an
attacker's address. IPv6 addresses count per /64 (one host usually owns a whole /64).

The two thresholds differ for a reason: a per-user limit lets anyone slow a user down by
failing on purpose, so it is higher than the per-address one and its delays are shorter.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_failures: int  # failures allowed before delays start
    window: float  # seconds without a failure after which the count is forgotten
    base_delay: float  # first delay, doubled per further failure
    max_delay: float
    max_tracked: int = 100_000  # entries kept (least recently failing dropped first)


PER_ADDRESS = LimitSettings(max_failures=10, window=600.0, base_delay=1.0, max_delay=300.0)
PER_USER = LimitSettings(max_failures=20, window=600.0, base_delay=0.5, max_delay=30.0)


class Limited(Enum):
    NONE = "none"
    ADDRESS = "address"
    USER = "user"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: float  # seconds until an attempt would be allowed (0 when allowed)
    limited_by: Limited


@dataclass(slots=True)
class _Record:
    failures: int
    last: float


class _Table:
    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self.records: OrderedDict[str, _Record] = OrderedDict()

    def _live(self, key: str, now: float) -> _Record | None:
        record = self.records.get(key)
        if record is not None and now - record.last > self.settings.window:
            del self.records[key]
            return None
        return record

    def wait(self, key: str, now: float) -> float:
        record = self._live(key, now)
        s = self.settings
        if record is None or record.failures < s.max_failures:
            return 0.0
        delay: float = min(s.max_delay, s.base_delay * 2.0 ** (record.failures - s.max_failures))
        return max(0.0, record.last + delay - now)

    def fail(self, key: str, now: float) -> None:
        record = self._live(key, now)
        if record is None:
            self.records[key] = _Record(1, now)
            while len(self.records) > self.settings.max_tracked:
                self.records.popitem(last=False)
        else:
            record.failures += 1
            record.last = now
            self.records.move_to_end(key)

    def clear(self, key: str) -> None:
        self.records.pop(key, None)


def address_key(address: str) -> str:
    """The unit an address counts in: itself for IPv4, its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginLimiter:
    def __init__(
        self, per_address: LimitSettings = PER_ADDRESS, per_user: LimitSettings = PER_USER
    ) -> None:
        self._addresses = _Table(per_address)
        self._users = _Table(per_user)
        # With workers (proxy.workers): told of each failure, and of each success that cleared
        # one, so that every worker counts the logins all of them saw.
        self.share: Callable[[str, str, str, float], None] | None = None

    def check(self, address: str, user: str, now: float) -> Verdict:
        """May a login from ``address`` as ``user`` be tried now?"""
        by_address = self._addresses.wait(address_key(address), now)
        by_user = self._users.wait(user, now)
        if by_address <= 0 and by_user <= 0:
            return Verdict(True, 0.0, Limited.NONE)
        if by_address >= by_user:
            return Verdict(False, by_address, Limited.ADDRESS)
        return Verdict(False, by_user, Limited.USER)

    def failed(self, address: str, user: str, now: float, *, shared: bool = False) -> None:
        """A failed login (``shared``: one a sibling worker saw, not told on again)."""
        self._addresses.fail(address_key(address), now)
        self._users.fail(user, now)
        if self.share is not None and not shared:
            self.share("failed", address, user, now)

    def succeeded(self, address: str, user: str, now: float, *, shared: bool = False) -> None:
        had = user in self._users.records
        self._users.clear(user)
        if had and self.share is not None and not shared:
            self.share("succeeded", address, user, now)
