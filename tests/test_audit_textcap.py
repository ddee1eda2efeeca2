"""The stored statement text is capped: the rest becomes its length and SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
import pytest

from proxy import config
from proxy.audit.reader import iter_events
from proxy.audit.textcap import cap_statement
from proxy.audit.trail import AuditTrail
from proxy.audit.verify import verify_trail


def test_short_texts_are_untouched() -> None:
    event = {"statement": "SELECT 1"}
    cap_statement(event, 100)
    assert event == {"statement": "SELECT 1"}
    cap_statement(event, 0)  # 0: no cap
    assert event == {"statement": "SELECT 1"}


def test_a_long_text_keeps_its_start_length_and_hash() -> None:
    text = "SELECT '" + "é" * 1000 + "'"
    event = {"statement": text}
    cap_statement(event, 101)
    kept = event["statement"]
    assert isinstance(kept, str) and text.startswith(kept)
    assert len(kept.encode()) <= 101 and len(kept.encode()) >= 98  # cut at a character
    assert event["statement_truncated"] is True
    assert event["statement_length"] == len(text.encode())
    assert event["statement_sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_a_text_just_at_the_cap_in_bytes_is_kept_whole() -> None:
    text = "é" * 50  # 100 bytes, 50 characters
    event = {"statement": text}
    cap_statement(event, 100)
    assert event == {"statement": text}


def test_the_trail_caps_and_the_chain_covers_it(tmp_path: Path) -> None:
    cfg = config.defaults().replace(
        audit__dir=str(tmp_path), audit__fsync="none", audit__statement_max="1kB"
    )
    trail = AuditTrail(cfg, "p1")
    trail.open()
    huge = "INSERT INTO t VALUES " + ",".join(f"({n})" for n in range(100_000))
    trail.submit({"v": 1, "type": "query", "ts": "2026-11-26T07:40:00.000000Z", "statement": huge})
    trail.close()
    (event,) = iter_events(tmp_path)
    assert len(event["statement"]) == 1000 and event["statement_length"] == len(huge)
    assert sum(p.stat().st_size for p in tmp_path.glob("audit*.jsonl")) < 2000
    assert verify_trail(tmp_path).ok


@pytest.mark.e2e
def test_a_huge_statement_through_the_proxy(proxy_factory: object) -> None:
    proxy = proxy_factory("--audit-statement-max", "4kB")  # type: ignore[operator]
    text = "SELECT length('" + "x" * 2_000_000 + "')"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute(text).fetchone() == (2_000_000,)
    (event,) = proxy.wait_for(lambda e: e.get("statement_truncated") is True)
    assert event["statement"] == text[:4000]
    assert event["statement_length"] == len(text)
    assert event["statement_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    proxy.stop()
    assert max(len(line) for p in Path(proxy.audit_dir).glob("audit*.jsonl")
               for line in p.read_bytes().splitlines()) < 10_000  # fmt: skip
