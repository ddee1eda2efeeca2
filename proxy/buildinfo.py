"""What this pgwarden is: for ``--version``, the ``pgwarden_build_info`` metric and the
start-up log line, so an operator can tell which build answered."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

from proxy import __version__
from proxy.compiled import build_kind


@functools.cache
def build_info() -> dict[str, str]:
    """``version`` of pgwarden, ``python``, ``pglast`` (whose libpg_query is the grammar), and
    ``build``: whether the hot modules run compiled (mypyc) or as pure Python."""
    try:
        pglast = metadata.version("pglast")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        pglast = "unknown"
    return {
        "version": __version__,
        "python": platform.python_version(),
        "pglast": pglast,
        "build": build_kind(),
    }


def version_line() -> str:
    info = build_info()
    return (
        f"pgwarden {info['version']} ({info['build']}, Python {info['python']}, "
        f"pglast {info['pglast']})"
    )
