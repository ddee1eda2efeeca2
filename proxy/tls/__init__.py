"""TLS on both legs: settings, contexts, the client leg's answers, direct-TLS detection and
the upstream connection. docs/tls.md describes them and what the live proxy does."""

from __future__ import annotations

from proxy.config import Config
from proxy.tls import settings as _settings
from proxy.tls.contexts import TLSHolder


def load(cfg: Config) -> TLSHolder:
    """Check the TLS settings of ``cfg`` and build both contexts (ConfigError otherwise)."""
    return TLSHolder.from_settings(_settings.load(cfg))
