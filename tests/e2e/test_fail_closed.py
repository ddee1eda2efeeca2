"""``audit.fail_closed``: while the audit trail (or the store) cannot accept records, new
statements are refused at once with 57P03 instead of waiting; sessions work again afterwards.

The local trail is made to fail with RLIMIT_FSIZE on the proxy process (CPython ignores
SIGXFSZ, so writes past the limit fail with EFBIG, as on a full disk), then the limit is lifted.
"""

from __future__ import annotations

import json
import resource
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import readiness

pytestmark = pytest.mark.e2e


def test_a_failing_trail_refuses_new_statements_at_once(proxy_factory: Any) -> None:
    proxy = proxy_factory("--audit-fail-closed", "true")
    running = psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5)
    other = psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5)
    try:
        assert running.execute("select 1").fetchone() == (1,)
        assert other.execute("select 2").fetchone() == (2,)
        size = (proxy.audit_dir / "audit.jsonl").stat().st_size
        # Only the soft limit: lifting it again needs no privilege.
        resource.prlimit(proxy.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
        result: dict[str, Any] = {}

        def run() -> None:  # forwarded while the trail still looked healthy: it must finish
            result["row"] = running.execute("select pg_sleep(0.2), 'ran'").fetchone()

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 15
        while readiness(proxy)["checks"]["audit_trail"]:
            assert time.monotonic() < deadline, "the trail never failed"
            time.sleep(0.05)
        refused: list[BaseException] = []

        def refuse() -> None:
            try:
                other.execute("select 3")
            except psycopg.Error as exc:
                refused.append(exc)

        asker = threading.Thread(target=refuse)
        asker.start()
        asker.join(2)
        told_at_once = not asker.is_alive()
        resource.prlimit(proxy.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        asker.join(30)
        assert told_at_once, "the refusal waited for the audit write that cannot happen"
        assert refused and isinstance(refused[0], psycopg.errors.CannotConnectNow), refused
        thread.join(30)
        assert result.get("row") == ("", "ran")
        assert other.execute("select 4").fetchone() == (4,)  # usable once the sink is back
    finally:
        running.close()
        other.close()
    statements = {e.get("statement"): e for e in proxy.events("query")}
    assert statements["select 3"]["sqlstate"] == "57P03"
    assert statements["select 3"]["decision"]["rules"][0]["id"] == "audit-unavailable"


def test_an_unreachable_store_refuses_new_statements_at_once(proxy_factory: Any) -> None:
    sinks = json.dumps([{"type": "postgres", "dsn": "postgresql://nobody@127.0.0.1:1/x"}])
    proxy = proxy_factory("--audit-fail-closed", "true", "--audit-sinks", sinks)
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.CannotConnectNow):
            conn.execute("select 3")
        assert time.monotonic() - started < 2
