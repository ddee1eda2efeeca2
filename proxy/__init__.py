"""pgwarden: a PostgreSQL query-auditing proxy.

The importable package is ``proxy``; the distribution and command are ``pgwarden``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
