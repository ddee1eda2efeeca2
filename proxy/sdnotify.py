"""systemd's readiness protocol (``Type=notify``): a datagram to ``$NOTIFY_SOCKET``.

``READY=1`` once the listeners accept connections, ``RELOADING=1`` … ``READY=1`` around a
SIGHUP reload, ``STOPPING=1`` when shutdown begins, and a ``STATUS=`` line systemctl shows.
Without ``$NOTIFY_SOCKET`` (not started by systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``); True when a socket took them."""
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target or not fields:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target  # abstract namespace
    message = "\n".join(fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError:
        return False  # readiness is a courtesy to the service manager, never a reason to fail
    return True


def reloading() -> bool:
    # systemd (v253+) wants the monotonic time with RELOADING=1, in microseconds.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
