"""Which requests may reach the admin API at all: ``Host`` must name the configured listener
and ``Origin``, when a browser sends one, must be the API's own.

A web page open in a browser on the admin host can send requests to ``127.0.0.1`` (a form's
``text/plain`` POST needs no preflight) or make a name of its own resolve there (DNS
rebinding). The browser then sends that page's ``Origin``, and with rebinding a ``Host`` the
listener was never configured for: both are refused before any handler runs.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from proxy.admin.auth import LOOPBACK_NAMES, is_loopback

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` values that name the listener (lower case); None for a wildcard listener,
    whose names pgwarden cannot know (the Origin check still applies there)."""
    if host in WILDCARD_HOSTS:
        return None
    names = {host.lower()}
    if is_loopback(host):
        names |= LOOPBACK_NAMES
    return frozenset(_hostport(name, port) for name in names)


def refusal(host_header: str | None, origin: str | None, allowed: frozenset[str] | None) -> str:
    """Why the request is refused ("" when it is not)."""
    host = (host_header or "").strip().lower()
    if not host:
        return "no Host header"
    if allowed is not None and host not in allowed:
        return f"Host {host!r} is not this listener"
    if origin is not None:
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in ("http", "https") or parts.netloc != host:
            return f"cross-origin request (Origin {origin!r})"
    return ""
