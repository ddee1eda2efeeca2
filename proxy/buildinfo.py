"""What this pgwarden is: for ``--version``, the ``pgwarden_build_info`` metric and the
start-up log line, so an operator can tell which build answered."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

from proxy import __version__


@functools.cache
def build_info() -> dict[str, str]:
    """``version`` of pgwarden, ``python``, and ``pglast`` (whose libpg_query is the grammar)."""
    try:
        pglast = metadata.version("pglast")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        pglast = "unknown"
    return {"version": __version__, "python": platform.python_version(), "pglast": pglast}


def version_line() -> str:
    info = build_info()
    return f"pgwarden {info['version']} (Python {info['python']}, pglast {info['pglast']})"
