"""Shared helpers for the end-to-end protocol tests."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from tests.support import rawpg

T = TypeVar("T")
_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Target:
    """An endpoint a client connects to: ``direct`` PostgreSQL or the ``proxy`` in front of it."""

    name: str
    host: str
    port: int
    _dsn: Callable[..., str]
    proxy: Any | None  # ProxyProcess when name == "proxy"
    superuser_password: str | None = None  # set when $PGWARDEN_TEST_DSN needs one

    @property
    def is_proxy(self) -> bool:
        return self.proxy is not None

    def dsn(
        self,
        user: str = "postgres",
        database: str = "postgres",
        password: str | None = None,
        **params: str,
    ) -> str:
        base = self._dsn(user=user, database=database, password=password)
        if not params:
            return str(base)
        sep = "&" if "?" in base else "?"
        return str(base) + sep + "&".join(f"{k}={v}" for k, v in params.items())

    def raw(self, timeout: float = 5.0, **login: Any) -> rawpg.RawConn:
        """A raw connection, logged in unless ``login=False`` is given."""
        do_login = login.pop("login", True)
        conn = rawpg.RawConn(self.host, self.port, timeout)
        if login.get("user", "postgres") == "postgres" and self.superuser_password:
            login.setdefault("password_text", self.superuser_password)
        if do_login:
            conn.login(**login)
        return conn

    def connect(
        self,
        user: str = "postgres",
        database: str = "postgres",
        password: str | None = None,
        **kwargs: Any,
    ) -> psycopg.Connection[Any]:
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(self.dsn(user, database, password), **kwargs)


def unique(prefix: str) -> str:
    """A name unique within this test run (for application_name, tables, channels)."""
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


def wait_until(check: Callable[[], T | None], timeout: float = 10.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}; last={last!r}")


def events_of(proxy: Any, type: str | None = None, **match: Any) -> list[dict[str, Any]]:
    """Audit events of ``type`` whose fields equal ``match``."""
    out = []
    for event in proxy.events(type):
        if all(event.get(k) == v for k, v in match.items()):
            out.append(event)
    return out


def wait_events(
    proxy: Any, count: int, type: str | None = None, timeout: float = 10.0, **match: Any
) -> list[dict[str, Any]]:
    """Wait until at least ``count`` matching events exist; return all matching events."""
    return wait_until(
        lambda: (lambda found: found if len(found) >= count else None)(
            events_of(proxy, type, **match)
        ),
        timeout,
        f"{count} {type or ''} events matching {match}",
    )


def settle(proxy: Any, app: str, quiet: float = 0.5, timeout: float = 10.0) -> list[dict[str, Any]]:
    """All events of application ``app`` once the session ended and nothing new came for a while."""
    wait_events(proxy, 1, "session_end", timeout, application_name=app)
    last: list[dict[str, Any]] = []
    stable_since = time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = events_of(proxy, None, application_name=app)
        if len(now) != len(last):
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            return last
        time.sleep(0.05)
    return last


def readiness(proxy: Any) -> dict[str, Any]:
    """The proxy's /readyz answer (its checks, e.g. ``audit_trail``), ready or not."""
    try:
        with urllib.request.urlopen(proxy.admin_url("/readyz"), timeout=5) as reply:
            return dict(json.load(reply))
    except urllib.error.HTTPError as exc:
        return dict(json.load(exc))


def admin(pg: Any) -> psycopg.Connection[Any]:
    """A direct superuser connection to PostgreSQL, bypassing the proxy."""
    return psycopg.connect(pg.dsn(), autocommit=True, connect_timeout=5)


def backend_gone(pg: Any, pid: int) -> bool:
    with admin(pg) as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where pid = %s", (pid,)
        ).fetchone()
        return row is not None and row[0] == 0


@contextlib.contextmanager
def policy_proxy(pg: Any, directory: Any, policy: str, *flags: str) -> Iterator[Any]:
    """A proxy in front of ``pg`` enforcing the policy text ``policy`` (written into
    ``directory``), with extra serve ``flags``; stopped on exit."""
    from tests.support.proxyproc import ProxyFactory

    path = directory / "policy.yaml"
    path.write_text(policy)
    factory = ProxyFactory(pg, directory)
    try:
        yield factory(*flags, policies=[path])
    finally:
        factory.close()


@contextlib.contextmanager
def scratch_table(pg: Any, prefix: str, rows: int) -> Iterator[str]:
    """A table ``(id int primary key, q int)`` holding ``rows`` rows (id = q = 1…rows),
    dropped on exit."""
    name = unique(prefix)
    with admin(pg) as conn:
        conn.execute(f"create table {name} (id int primary key, q int)")
        conn.execute(f"insert into {name} select g, g from generate_series(1, {rows}) g")
        conn.execute(f"grant all on {name} to public")
    try:
        yield name
    finally:
        with admin(pg) as conn:
            conn.execute(f"drop table if exists {name}")


def sleep_until_cancelled(conn: psycopg.Connection[Any], seconds: int = 30) -> str | None:
    """Run ``pg_sleep(seconds)`` on ``conn``: the SQLSTATE when a cancel ended it, else None
    (for a pool thread while the test cancels)."""
    try:
        conn.execute(f"select pg_sleep({seconds})")
    except psycopg.errors.QueryCanceled as exc:
        return exc.sqlstate
    return None
