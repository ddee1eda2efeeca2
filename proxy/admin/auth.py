"""Who may use the admin API: a bearer token, always.

``admin.token_file`` names it. Without one, a token is generated at the first start into
``<audit.dir>/admin.token`` (mode 0600) and re-used on later starts; the log names the path.
A listener on a non-loopback address needs an explicit ``admin.token_file``. Failed attempts
are rate-limited per client address (:class:`FailureLimiter`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import stat
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from proxy.errors import ConfigError, SourceProblem

log = logging.getLogger("pgwarden.admin")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
GENERATED_TOKEN = "admin.token"
MIN_TOKEN = 16


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token(token_file: str, host: str) -> str | None:
    """The token (None: no auth); raises ConfigError for an unusable file or an open listener
    on a non-loopback address."""
    if not token_file:
        if not is_loopback(host):
            raise ConfigError([SourceProblem(
                "admin.listen", 0, 0,
                f"the admin API on non-loopback address {host!r} needs admin.token_file",
                "admin.listen",
            )])  # fmt: skip
        return None
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([SourceProblem(token_file, 0, 0, f"cannot read admin token: {exc}",
                                         "admin.token_file")]) from None  # fmt: skip
    if len(token) < MIN_TOKEN:
        raise ConfigError([SourceProblem(
            token_file, 0, 0, "the admin token must be at least 16 characters", "admin.token_file"
        )])  # fmt: skip
    return token


def bearer_ok(header: str | None, token: str) -> tuple[bool, str]:
    """(accepted, reason if not) for an ``Authorization`` header; constant-time compare."""
    if not header:
        return False, "missing Authorization header"
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False, "Authorization is not a Bearer token"
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        return False, "wrong token"
    return True, ""


@dataclass(frozen=True, slots=True)
class AdminToken:
    token: str
    path: str
    generated: bool  # created at this start


def resolve_token(token_file: str, host: str, audit_dir: str) -> AdminToken:
    """The admin token: ``admin.token_file``'s, else the generated one in the audit directory
    (created now, mode 0600, when it does not exist yet)."""
    token = load_token(token_file, host)
    if token is not None:
        return AdminToken(token, token_file, False)
    path = Path(audit_dir) / GENERATED_TOKEN
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("admin token file %s is readable by others (mode %o)", path, mode)
        existing = load_token(str(path), host)
        assert existing is not None
        return AdminToken(existing, str(path), False)
    except OSError as exc:
        raise ConfigError([SourceProblem(
            str(path), 0, 0, f"cannot create the admin token: {exc.strerror or exc}",
            "admin.token_file",
        )]) from None  # fmt: skip
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return AdminToken(token, str(path), True)


class FailureLimiter:
    """At most ``limit`` failed authentications per client address per ``window`` seconds;
    past that the address is refused (429) until the window has passed."""

    def __init__(self, limit: int = 10, window: float = 60.0, addresses: int = 10000) -> None:
        self.limit = limit
        self.window = window
        self.addresses = addresses
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def blocked(self, address: str, now: float | None = None) -> float:
        """Seconds until ``address`` may try again (0: it may)."""
        now = time.monotonic() if now is None else now
        failures = self._recent(address, now)
        if failures is None or len(failures) < self.limit:
            return 0.0
        return max(0.0, failures[0] + self.window - now)

    def failed(self, address: str, now: float | None = None) -> int:
        """Record a failure; returns the number within the window."""
        now = time.monotonic() if now is None else now
        failures = self._recent(address, now)
        if failures is None:
            if len(self._failures) >= self.addresses:  # bounded memory under a scan
                self._failures.pop(next(iter(self._failures)))
            failures = self._failures[address] = deque()
        failures.append(now)
        return len(failures)
