"""One big statement must not stall the other sessions (issue 8 §4), and big notices relay fast.

Two measurements, each through pgwarden and, for comparison, directly:

1. **Big statement vs. everyone else**: session A sends one ``INSERT … VALUES`` of
   ``--insert-mb`` MB (default 6) while session B runs ``SELECT 1`` in a loop; reports the
   big statement's duration and B's round trips during it (count, p50, p99, worst). Target:
   B's worst round trip under 50 ms through pgwarden.
2. **Big NoticeResponse / ErrorResponse**: ``RAISE NOTICE`` / ``RAISE EXCEPTION`` of
   ``repeat('x', N)`` for N = 1/4, 1/2 and all of ``--notice-mb`` MB (default 16); reports
   seconds per size, so linear relaying shows as a constant seconds-per-MB.

It starts a throwaway PostgreSQL (``proxy.pgrun.LocalCluster``) and ``pgwarden serve`` itself,
unless ``--dsn`` names a running pgwarden (then ``--direct-dsn`` may name its server):

    python bench/bench_bigstatement.py                       # full sizes
    python bench/bench_bigstatement.py --insert-mb 0.05 --notice-mb 0.05   # smoke run
    python bench/bench_bigstatement.py --dsn postgresql://postgres@127.0.0.1:6432/postgres

Run it on a quiet machine: the timings mean nothing while other work shares the cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.lib.services import PgWarden  # noqa: E402
from proxy.pgrun import LocalCluster, libpq_url  # noqa: E402

ROW_TEXT = 80  # characters of payload per VALUES row: rows of ~90 bytes


@dataclass(frozen=True, slots=True)
class BigStatementResult:
    target: str
    statement_bytes: int
    statement_seconds: float
    statement_outcome: str
    probes: int
    p50_ms: float
    p99_ms: float
    worst_ms: float


@dataclass(frozen=True, slots=True)
class RelayResult:
    target: str
    kind: str  # notice | error
    bytes: int
    seconds: float
    seconds_per_mb: float


def insert_statement(size: int) -> str:
    """``INSERT INTO big_t VALUES (1,'xxx…'),(2,'xxx…'),…`` of about ``size`` bytes."""
    row = "'" + "x" * ROW_TEXT + "'"
    parts = []
    total = len("INSERT INTO big_t VALUES ")
    i = 0
    while total < size:
        i += 1
        part = f"({i},{row})"
        parts.append(part)
        total += len(part) + 1
    return "INSERT INTO big_t VALUES " + ",".join(parts)


def big_statement(name: str, dsn: str, size: int) -> BigStatementResult:
    sql = insert_statement(size)
    outcome: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as big, psycopg.connect(dsn, autocommit=True) as b:
        big.execute("create temp table big_t(id int, v text)")
        b.execute("select 1")  # connected and warm before the clock starts

        def send() -> None:
            started = time.perf_counter()
            try:
                big.execute(sql)
                outcome["result"] = f"ok ({big.execute('select count(*) from big_t').fetchone()})"
            except psycopg.Error as exc:
                outcome["result"] = f"{exc.sqlstate}: {str(exc).splitlines()[0][:80]}"
            outcome["seconds"] = time.perf_counter() - started

        thread = threading.Thread(target=send)
        rtts: list[float] = []
        thread.start()
        while thread.is_alive():
            t = time.perf_counter()
            b.execute("select 1").fetchone()
            rtts.append(time.perf_counter() - t)
        thread.join()
    rtts.sort()
    return BigStatementResult(
        name,
        len(sql.encode()),
        outcome["seconds"],
        outcome["result"],
        len(rtts),
        statistics.median(rtts) * 1000 if rtts else 0.0,
        rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1000 if rtts else 0.0,
        rtts[-1] * 1000 if rtts else 0.0,
    )


def relay(name: str, dsn: str, kind: str, size: int) -> RelayResult:
    got: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: got.append(len(diag.message_primary or "")))
        level = "NOTICE" if kind == "notice" else "EXCEPTION"
        sql = f"DO $$ BEGIN RAISE {level} '%', repeat('x', {size}); END $$"
        started = time.perf_counter()
        try:
            conn.execute(sql)
        except psycopg.Error as exc:
            got.append(len(exc.diag.message_primary or ""))
        seconds = time.perf_counter() - started
    if got != [size]:
        raise SystemExit(f"{name}: expected one {kind} of {size} characters, got {got}")
    return RelayResult(name, kind, size, seconds, seconds / (size / 1e6))


def run(targets: dict[str, str], args: argparse.Namespace) -> dict[str, list[Any]]:
    results: dict[str, list[Any]] = {"big_statement": [], "relay": []}
    insert_bytes = int(args.insert_mb * 1e6)
    for name, dsn in targets.items():
        res = big_statement(name, dsn, insert_bytes)
        results["big_statement"].append(res)
        print(
            f"{name:>9}: INSERT of {res.statement_bytes / 1e6:.2f} MB took "
            f"{res.statement_seconds:.2f}s ({res.statement_outcome}); SELECT 1 meanwhile: "
            f"{res.probes} round trips, p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms, "
            f"worst {res.worst_ms:.1f} ms"
        )
    notice_bytes = int(args.notice_mb * 1e6)
    for name, dsn in targets.items():
        for kind in ("notice", "error"):
            for size in (notice_bytes // 4, notice_bytes // 2, notice_bytes):
                res = relay(name, dsn, kind, size)
                results["relay"].append(res)
                print(
                    f"{name:>9}: {kind:6} of {size / 1e6:6.2f} MB relayed in "
                    f"{res.seconds:.3f}s ({res.seconds_per_mb:.3f} s/MB)"
                )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--insert-mb", type=float, default=6.0, help="size of the INSERT (MB)")
    parser.add_argument("--notice-mb", type=float, default=16.0, help="largest notice (MB)")
    parser.add_argument("--dsn", help="a running pgwarden (default: start one)")
    parser.add_argument("--direct-dsn", help="its PostgreSQL, for comparison (with --dsn)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument(
        "--pgwarden-arg", action="append", default=[], help="extra flag for pgwarden serve"
    )
    args = parser.parse_args(argv)

    if args.dsn:
        targets = {"pgwarden": args.dsn}
        if args.direct_dsn:
            targets = {"direct": args.direct_dsn, **targets}
        results = run(targets, args)
    else:
        with tempfile.TemporaryDirectory(prefix="pgwarden-bench-big-") as scratch:
            cluster = LocalCluster()
            cluster.start()
            warden = PgWarden("pgwarden", Path(scratch), cluster.port, extra_args=args.pgwarden_arg)
            try:
                proxy = warden.start()
                targets = {
                    "direct": libpq_url(cluster.host, cluster.port, "postgres", "postgres"),
                    "pgwarden": libpq_url(proxy.host, proxy.port, "postgres", "postgres"),
                }
                results = run(targets, args)
            finally:
                warden.stop()
                cluster.stop()
    if args.json:
        data = {k: [asdict(r) for r in v] for k, v in results.items()}
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
