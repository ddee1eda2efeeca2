"""What the event loop does, step by step, for one big statement and one big error (issue 8 §4).

Each step of the loop's work for a 6 MB ``INSERT … VALUES`` (received, decoded, analysed in a
worker, recorded) and for a 16 MB ErrorResponse (received, decoded, redacted, recorded) is
timed in-process with ``time.perf_counter`` (best of ``--repeat``; the slow fallbacks once).
Single steps, not throughput: on a shared machine the smallest of several runs is the
honest number. Compare with the worst ``SELECT 1`` round trip of bench_bigstatement.py,
which waits for the longest single step.

    python bench/bench_bigstatement_steps.py
    python bench/bench_bigstatement_steps.py --insert-mb 1 --error-mb 2   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.bench_bigstatement import insert_statement  # noqa: E402
from proxy import config  # noqa: E402
from proxy.audit.trail import AuditTrail  # noqa: E402
from proxy.compiled import build_kind  # noqa: E402
from proxy.errors import FrontendProtocolError  # noqa: E402
from proxy.gate import Gate  # noqa: E402
from proxy.server import run_loop  # noqa: E402
from proxy.sql import extract, recordtext, redact  # noqa: E402
from proxy.sql.facts import ParserSettings  # noqa: E402
from proxy.sql.pool import AnalysisPool, PoolConfig, _Worker  # noqa: E402
from proxy.wire import constants as c  # noqa: E402
from proxy.wire import messages as m  # noqa: E402
from proxy.wire.backend import BackendScanner  # noqa: E402
from proxy.wire.framing import Framer  # noqa: E402

CHUNK = 256 * 1024  # what one read hands the protocol


def timed(name: str, fn: Callable[[], Any], repeat: int) -> Any:
    best = float("inf")
    out = None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    print(f"| {name} | {best * 1000:.1f} |", flush=True)
    return out


def last_chunk(feed: Callable[[bytes], Any], message: bytes) -> float:
    """Seconds the chunk that completes ``message`` takes (the others only append)."""
    chunks = [message[i : i + CHUNK] for i in range(0, len(message), CHUNK)]
    for chunk in chunks[:-1]:
        feed(chunk)
    started = time.perf_counter()
    feed(chunks[-1])
    return time.perf_counter() - started


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--insert-mb", type=float, default=6.0)
    parser.add_argument("--error-mb", type=float, default=16.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    repeat = args.repeat
    print(f"build: {build_kind()}\n\n| step on the loop | ms |\n|---|---:|")

    sql = insert_statement(int(args.insert_mb * 1e6))
    hinted = sql.replace("'xxxxxxxx", "'key=xxxx", 1)  # one word that defeats redact's fast path
    raw = message(b"Q", sql.encode() + b"\x00")

    def framed() -> float:
        framer = Framer(FrontendProtocolError, large_limit=1 << 30, allowed=c.FRONTEND_TYPES)
        return last_chunk(lambda d: list(framer.feed(d)), raw)

    best = min(framed() for _ in range(repeat))
    print(f"| statement: the read that completes it (framing, copies) | {best * 1000:.1f} |")
    body = raw[5:]
    sql_bytes = timed("statement: query_text", lambda: m.query_text(body), repeat)
    settings = ParserSettings()
    timed("statement: decode for the worker", lambda: extract.decode(sql_bytes, settings), repeat)

    async def spawn() -> int:
        started = time.perf_counter()
        worker = await _Worker.start(0)
        took = (time.perf_counter() - started) * 1000
        print(f"| worker process start (first long statement) | {took:.1f} |")
        await worker.stop()
        return 0

    run_loop(spawn())  # on uvloop, as the server runs (asyncio's own loop starts it faster)
    cfg = config.defaults()
    mode, limit = cfg["audit.statement_text"], cfg["audit.statement_max"]
    pool = AnalysisPool(PoolConfig(text_mode=mode, statement_max=limit))

    async def analyse(text: str) -> Any:
        try:
            return (await pool.analyse(text.encode(), settings)).facts
        finally:
            await pool.close()

    facts = asyncio.run(analyse(hinted))
    stmt = facts.statements[0]
    gate = Gate(cfg, None)
    event: dict[str, Any] = {}
    timed(
        "statement: its record's text (made by the worker)",
        lambda: gate.record_statement(event, stmt.text, stmt, facts),
        repeat,
    )
    timed(
        "statement: its record's text, redacted on the loop (no secret-looking word)",
        lambda: recordtext.recorded(sql, None, mode, limit),
        1,
    )
    timed(
        "statement: its record's text, redacted on the loop (one 'key=' word)",
        lambda: recordtext.recorded(hinted, None, mode, limit),
        1,
    )

    text = "x" * int(args.error_mb * 1e6)
    error = message(b"E", b"SERROR\x00VERROR\x00CP0001\x00M" + text.encode() + b"\x00\x00")

    def scanned() -> float:
        scanner = BackendScanner(lambda kind, body, rows: None)
        return last_chunk(scanner.feed, error)

    best = min(scanned() for _ in range(repeat))
    print(f"| error: the read that completes it (scanner, copies) | {best * 1000:.1f} |")
    fields = timed("error: decode_fields", lambda: m.decode_fields(error[5:]), repeat)
    do = f"DO $$ BEGIN RAISE EXCEPTION '%', repeat('x', {len(text)}); END $$"
    redacted = timed(
        "error: redacted for the record (gate.audit_error)",
        lambda: gate.audit_error(fields["M"], do, (), False),
        repeat,
    )
    timed("error: the trail's scrub_event", lambda: redact.scrub_event({"error": redacted}), 1)
    with tempfile.TemporaryDirectory(prefix="pgwarden-bench-steps-") as scratch:
        trail = AuditTrail(cfg.replace(audit__dir=scratch, audit__fsync="none"), "bench")
        trail.open()
        record = {"v": 1, "type": "query", "statement": do, "error": redacted}
        timed("error: its record sealed and written", lambda: trail.submit(dict(record)), 1)
        trail.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
