"""TLS on both legs: settings, contexts, the client leg's answers, direct-TLS detection and
the upstream connection. See docs/tls.md for what is wired into the live proxy."""

from __future__ import annotations

from proxy.config import Config
from proxy.errors import ConfigError, SourceProblem
from proxy.tls import settings as _settings
from proxy.tls.contexts import TLSHolder

# The settings the running session honours. Until the handshake uses this package, any
# other value is refused at start-up rather than silently ignored (a proxy that says it
# requires TLS and then serves plaintext is worse than one that refuses to start).
# The handshake adds each key here as it wires it.
WIRED: dict[str, frozenset[str]] = {
    "client_tls.mode": frozenset(
        {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
    ),
    "upstream_tls.mode": frozenset({"disable", "prefer", "require", "verify-ca", "verify-full"}),
    "auth.mode": frozenset({"passthrough", "proxy", "cert"}),
}


def refuse_unwired(cfg: Config) -> None:
    problems = [
        SourceProblem(
            "",
            0,
            0,
            f"{cfg[key]} is not served by this version's session yet (issue 11: the "
            "handshake does not call proxy.tls/proxy.auth); see docs/tls.md",
            key,
        )
        for key, allowed in WIRED.items()
        if cfg[key] not in allowed
    ]
    if problems:
        raise ConfigError(problems)


def load(cfg: Config) -> TLSHolder:
    """Check the TLS settings of ``cfg`` and build both contexts (ConfigError otherwise)."""
    return TLSHolder.from_settings(_settings.load(cfg))
