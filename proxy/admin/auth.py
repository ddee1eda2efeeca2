"""Who may use the admin API: a bearer token from ``admin.token_file``.

Without a token file the API is open, which is only allowed on a loopback address: pgwarden
refuses to start an unauthenticated admin listener anyone else can reach.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from proxy.errors import ConfigError, SourceProblem

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


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
    if len(token) < 16:
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
