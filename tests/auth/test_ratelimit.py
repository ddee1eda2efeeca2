"""Login rate limiting, with time passed in."""

from __future__ import annotations

from proxy.auth.ratelimit import Limited, LimitSettings, LoginLimiter, address_key

ADDR = LimitSettings(max_failures=3, window=60.0, base_delay=1.0, max_delay=8.0)
USER = LimitSettings(max_failures=5, window=60.0, base_delay=0.5, max_delay=2.0)


def test_backoff_doubles_after_the_threshold_and_caps() -> None:
    limiter = LoginLimiter(ADDR, USER)
    t = 1000.0
    for _ in range(3):
        assert limiter.check("10.0.0.1", "alice", t).allowed
        limiter.failed("10.0.0.1", "alice", t)
    verdict = limiter.check("10.0.0.1", "alice", t)
    assert not verdict.allowed and verdict.limited_by is Limited.ADDRESS
    assert verdict.retry_after == 1.0
    assert limiter.check("10.0.0.1", "alice", t + 1.0).allowed
    waits = []
    for _ in range(6):
        limiter.failed("10.0.0.1", "bob", t)
        waits.append(limiter.check("10.0.0.1", "bob", t).retry_after)
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert limiter.check("10.0.0.2", "carol", t).allowed  # other addresses are unaffected


def test_quiet_window_forgets() -> None:
    limiter = LoginLimiter(ADDR, USER)
    for _ in range(5):
        limiter.failed("10.0.0.1", "alice", 0.0)
    assert not limiter.check("10.0.0.1", "alice", 1.0).allowed
    assert limiter.check("10.0.0.1", "alice", 61.0).allowed


def test_per_user_limit_across_addresses() -> None:
    limiter = LoginLimiter(ADDR, USER)
    for i in range(5):
        limiter.failed(f"10.0.1.{i}", "alice", 0.0)
    verdict = limiter.check("10.9.9.9", "alice", 0.0)
    assert not verdict.allowed and verdict.limited_by is Limited.USER
    assert verdict.retry_after == 0.5
    assert limiter.check("10.9.9.9", "bob", 0.0).allowed


def test_success_clears_the_user_but_not_the_address() -> None:
    limiter = LoginLimiter(ADDR, USER)
    for _ in range(5):
        limiter.failed("10.0.0.1", "alice", 0.0)
    limiter.succeeded("10.0.0.1", "alice", 0.0)
    verdict = limiter.check("10.0.0.2", "alice", 0.0)
    assert verdict.allowed
    assert not limiter.check("10.0.0.1", "mallory", 0.0).allowed


def test_ipv6_counts_per_64_and_mapped_v4_as_v4() -> None:
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff") == "2001:db8::/64"
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key("not an address") == "not an address"
    limiter = LoginLimiter(ADDR, USER)
    for i in range(3):
        limiter.failed(f"2001:db8::{i + 1}", f"u{i}", 0.0)
    assert not limiter.check("2001:db8::99", "x", 0.0).allowed


def test_memory_is_bounded() -> None:
    small = LimitSettings(
        max_failures=1, window=60.0, base_delay=1.0, max_delay=1.0, max_tracked=10
    )
    limiter = LoginLimiter(small, small)
    for i in range(100):
        limiter.failed(f"10.1.{i // 256}.{i % 256}", f"user{i}", 0.0)
    assert len(limiter._addresses.records) == 10 and len(limiter._users.records) == 10
    assert not limiter.check("10.1.0.99", "user99", 0.0).allowed  # the newest are kept
