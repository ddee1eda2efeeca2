"""Fixtures for the end-to-end protocol tests: one test body, run direct and through the proxy."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# `tests.support.rawpg` must import whether pytest runs as `pytest` or `python -m pytest`.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.e2e.kit import Target  # noqa: E402


@pytest.fixture(params=["direct", "proxy"])
def target(request: pytest.FixtureRequest, pg: Any) -> Iterator[Target]:
    """Where the client connects: PostgreSQL itself, or the module's shared proxy in front of it.

    Every test using this fixture asserts what PostgreSQL does; the proxy must do the same.
    """
    if request.param == "direct":
        yield Target("direct", pg.host, pg.port, pg.dsn, None, pg.superuser_password)
    else:
        proxy = request.getfixturevalue("proxy")
        yield Target("proxy", proxy.host, proxy.port, proxy.dsn, proxy, pg.superuser_password)
