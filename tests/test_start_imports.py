"""A plain ``pgwarden serve`` (default configuration, the shipped policy, admin API on)
imports nothing it does not use: the console, TLS's ``cryptography``, the store, the review
tools, sqlparse come in when they are configured or first asked for. Each is megabytes of a
fresh process (docs/benchmarks.md, idle memory); this test fails when one is imported at start
again. The proxy is the real process after real traffic (tests/support/loaded.py)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.support.loaded import LoadedProxy, imported, start_loaded
from tests.support.pgcluster import PgServer
from tests.support.proxyproc import REPO_ROOT

pytestmark = pytest.mark.e2e

# What a plain relay never needs (each: what brings it in when it is needed).
UNUSED = (
    "cryptography",  # TLS on a leg (SCRAM channel binding)
    "jinja2",  # the web console's pages
    "markupsafe",
    "proxy.console.app",  # the console itself, built at its first request
    "proxy.console.data",
    "proxy.review",  # reports and the console's overview
    "proxy.audit.reader",  # reading the trail back: review tools, alert priming
    "proxy.store",  # audit.sinks
    "asyncpg",  # the store, catalog.dsn, EXPLAIN in the console
    "sqlparse",  # display only (policy render)
    "proxy.alerts",  # alerts files
    "proxy.workers",  # serve --workers
    "proxy.tls.certs",  # the demo's throwaway CA
    "logging.handlers",  # the syslog anchor
    "hypothesis",
)


def _get(proxy: LoadedProxy, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(proxy.admin_url(path), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_plain_serve_imports_only_what_a_relay_uses(pg: PgServer, tmp_path: Path) -> None:
    proxy = start_loaded(pg, tmp_path / "proxy", policies=[REPO_ROOT / "policies/default.yaml"])
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM pg_temp.nothing")  # blocked by the shipped policy
        assert _get(proxy, "/healthz") == (200, b"ok\n")
        status, metrics = _get(proxy, "/metrics")
        assert status == 200 and b"pgwarden_build_info" in metrics
        modules = proxy.modules()
        assert "proxy.session" in modules and "pglast" in modules  # the list is the server's
        assert imported(modules, UNUSED) == []

        # The console is still there: its first request builds it (and only then imports it).
        status, page = _get(proxy, "/console/login")
        assert status == 200 and b"<form" in page
        assert {"jinja2", "proxy.console.app"} <= proxy.modules()
        assert _get(proxy, "/console/static/console.css")[0] == 200
        status, _ = _get(proxy, "/console/statements")
        assert status == 200  # after a redirect to the login page, which urllib follows
    finally:
        proxy.stop()
