"""kill -9 mid-load: the audit trail holds every statement whose result a client received."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.kit import unique, wait_until

pytestmark = pytest.mark.e2e

CLIENTS = 4


def _worker(dsn: str, client: int, received: list[int], stop: threading.Event) -> None:
    """Run `select <id>` until the proxy dies; record every id whose result came back."""
    try:
        with psycopg.connect(
            dsn, autocommit=True, connect_timeout=5, cursor_factory=psycopg.ClientCursor
        ) as conn:
            n = 0
            while not stop.is_set():
                ident = client * 1_000_000 + n
                row = conn.execute(f"select {ident} as durable_id").fetchone()
                assert row == (ident,)
                received.append(ident)
                n += 1
    except psycopg.OperationalError:
        return  # the proxy was killed


def _read_trail(audit_dir: Path) -> list[dict[str, Any]]:
    """Parse every audit line; only the very last line of a file may be torn."""
    events: list[dict[str, Any]] = []
    files = sorted(p for p in audit_dir.rglob("*.jsonl") if p.is_file())
    assert files, f"no audit files in {audit_dir}"
    for path in files:
        lines = path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                is_last = number == len(lines) or (number == len(lines) - 1 and not lines[-1])
                assert is_last, f"{path}:{number} does not parse and is not the torn last line"
    return events


def test_kill_9_mid_load(proxy_factory: Any) -> None:
    proxy = proxy_factory()
    app = unique("durable")
    dsn = proxy.dsn() + ("&" if "?" in proxy.dsn() else "?") + f"application_name={app}"
    stop = threading.Event()
    received: list[list[int]] = [[] for _ in range(CLIENTS)]
    threads = [
        threading.Thread(target=_worker, args=(dsn, i, received[i], stop), daemon=True)
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    wait_until(lambda: sum(len(r) for r in received) >= 800, 30, "800 statements under load")
    proxy.kill()
    killed_at = time.monotonic()
    for t in threads:
        t.join(10)
    stop.set()
    assert not any(t.is_alive() for t in threads), "a client hung after the proxy died"
    assert time.monotonic() - killed_at < 10
    got = {i for r in received for i in r}
    events = _read_trail(Path(proxy.audit_dir))
    logged = set()
    for e in events:
        if e.get("type") == "query" and "durable_id" in str(e.get("statement")):
            logged.add(int(e["statement"].split()[1]))
    missing = sorted(got - logged)
    assert not missing, (
        f"{len(missing)} of {len(got)} statements whose results reached a client "
        f"are not in the audit trail, e.g. {missing[:5]}"
    )
    seqs = [e["seq"] for e in events if "seq" in e]
    assert seqs == list(range(1, len(seqs) + 1)), "seq must be gapless from 1"
