"""Audit trail benchmarks: writer cost per event, and searching a million events.

    python bench/bench_audit.py                # writer numbers + 1,000,000-event search
    python bench/bench_audit.py --events 200000 --keep /tmp/trail

1. *Writer*: submit N realistic query events in batches of B per event-loop turn (the way
   sessions do: one flush per turn), with ``audit.fsync=none`` so the disk is not measured.
   Reports µs per event for sealing alone (serialize + hash + link) and for the whole path
   (submit + seal + one ``os.write`` per turn + callbacks).
2. *Search*: write ``--events`` events with the real writer (100 MB rotation), then time
   ``pgwarden logs`` (as a subprocess, output to /dev/null) for a user + duration filter, a
   ``--grep``, and ``pgwarden verify`` over the same trail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy import config  # noqa: E402
from proxy.audit.chain import Chainer  # noqa: E402
from proxy.audit.trail import AuditTrail  # noqa: E402

USERS = ["alice", "bob", "carol", "dave", "etl", "report", "app", "x"]
STATEMENTS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = {n}",
    "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = {n}",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, {n}, 5, now())",
    "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
    "WHERE o.created_at > now() - interval '1 day' AND c.region = 'eu-{n}' ORDER BY o.total",
]


def make_event(n: int) -> dict[str, Any]:
    statement = STATEMENTS[n % len(STATEMENTS)].format(n=n)
    return {
        "v": 1,
        "type": "query",
        "ts": f"2026-11-26T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.{n % 999999:06d}Z",
        "proxy_id": "bench",
        "session_id": f"s{n % 97:08x}",
        "user": USERS[n % len(USERS)],
        "database": "app",
        "application_name": "pgbench",
        "client_addr": f"10.0.{n % 7}.{n % 250}",
        "client_port": 40000 + n % 20000,
        "statement": statement,
        "protocol": "extended",
        "statement_name": None,
        "portal": None,
        "duration_ms": round((n * 7919 % 100000) / 1000, 3),  # 0..100 ms, spread evenly
        "command_tag": "SELECT 1",
        "rows": 1,
        "sqlstate": None,
        "error": None,
        "tx_status": "I",
        "backend_pid": 1000 + n % 64,
        "command": statement.split(" ", 1)[0],
        "class": "read",
        "tables": ["public.pgbench_accounts"],
        "fingerprint": f"{n % 4:016x}",
        "decision": {"action": "allow", "intended": "allow", "mode": "enforce", "rules": []},
    }


def bench_seal(count: int) -> float:
    events = [make_event(n) | {"seq": n + 1} for n in range(count)]
    chainer = Chainer()
    started = time.perf_counter()
    for start in range(0, count, 64):
        chainer.seal(events[start : start + 64])
    return (time.perf_counter() - started) / count * 1e6


async def _pipeline(directory: Path, count: int, batch: int) -> float:
    cfg = config.defaults().replace(audit__dir=str(directory), audit__fsync="none")
    trail = AuditTrail(cfg, "bench")
    trail.open()
    events = [make_event(n) for n in range(count)]
    released = 0

    def release() -> None:
        nonlocal released
        released += 1

    started = time.perf_counter()
    for start in range(0, count, batch):
        for event in events[start : start + batch]:
            trail.submit(event)
            trail.when_written(release)
        await asyncio.sleep(0)  # one loop turn: the flush runs
    elapsed = time.perf_counter() - started
    await trail.aclose()
    assert released == count
    return elapsed / count * 1e6


def bench_pipeline(count: int, batch: int) -> float:
    directory = Path(tempfile.mkdtemp(prefix="pgwarden-bench-"))
    try:
        return asyncio.run(_pipeline(directory, count, batch))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _generate(directory: Path, count: int) -> None:
    cfg = config.defaults().replace(audit__dir=str(directory), audit__fsync="none")
    trail = AuditTrail(cfg, "bench")
    trail.open()
    for start in range(0, count, 1000):
        for n in range(start, min(count, start + 1000)):
            trail.submit(make_event(n))
        await asyncio.sleep(0)
    await trail.aclose()


def timed(argv: list[str]) -> tuple[float, int]:
    """Seconds a `python -m proxy ...` run took, and the lines it printed."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", *argv], cwd=ROOT, capture_output=True, check=False
    )
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{argv} failed: {proc.stderr.decode()}")
    return elapsed, proc.stdout.count(b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to search")
    parser.add_argument("--writer-events", type=int, default=200_000)
    parser.add_argument("--keep", metavar="DIR", help="write the big trail here and keep it")
    args = parser.parse_args()

    print(f"seal only (serialize + sha256 + link): {bench_seal(args.writer_events):.2f} µs/event")
    for batch in (1, 8, 64):
        per_event = bench_pipeline(args.writer_events, batch)
        print(f"full path, {batch:>2} events per loop turn: {per_event:.2f} µs/event")

    directory = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pgwarden-1m-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        asyncio.run(_generate(directory, args.events))
        size = sum(f.stat().st_size for f in directory.iterdir())
        print(
            f"wrote {args.events} events ({size / 1e6:.0f} MB, "
            f"{len(list(directory.glob('audit*.jsonl')))} files) in "
            f"{time.perf_counter() - started:.1f}s"
        )
        runs = [
            ["logs", str(directory), "--user", "x", "--min-duration", "50", "--format", "json"],
            ["logs", str(directory), "--grep", "region = 'eu-4243'", "--format", "json"],
            ["logs", str(directory), "--min-duration", "99.9", "--format", "json"],
            ["verify", str(directory)],
        ]
        for argv in runs:
            seconds, lines = timed(argv)
            print(f"{seconds:6.2f}s  {lines:>7} lines  pgwarden {' '.join(argv[:1] + argv[2:])}")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    print(
        f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
