"""``audit.fail_closed``: while the store cannot accept records, new statements are refused
at once with 57P03 instead of waiting.

(The same for a failing local trail is tests/e2e/test_fail_closed.py on the ``ops-failclosed``
branch: it fails until the session stops holding the refusal behind the audit write.)
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.e2e


def test_an_unreachable_store_refuses_new_statements_at_once(proxy_factory: Any) -> None:
    sinks = json.dumps([{"type": "postgres", "dsn": "postgresql://nobody@127.0.0.1:1/x"}])
    proxy = proxy_factory("--audit-fail-closed", "true", "--audit-sinks", sinks)
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.CannotConnectNow):
            conn.execute("select 3")
        assert time.monotonic() - started < 2
