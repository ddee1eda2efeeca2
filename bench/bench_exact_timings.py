"""What ``audit.exact_timings`` costs a batch client (issue 9 §1).

With exact timings pgwarden asks the server to flush after every Execute, so each pipelined
statement's completion is seen when it is produced. This runs asyncpg ``executemany`` (a
pipeline of Bind/Execute and one Sync) through two pgwarden processes, one with the setting
and one without, alternating, and directly, and reports rows per second and the ratio:

    python bench/bench_exact_timings.py [--rows 5000] [--rounds 5]

It starts a throwaway PostgreSQL and both proxies itself. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(REPO_ROOT)]

import asyncpg  # noqa: E402
from lib.services import PgWarden  # noqa: E402

from proxy.pgrun import LocalCluster  # noqa: E402


async def _batch(dsn: str, rows: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("create temp table t (id int, v text)")
        values = [(i, f"value {i}") for i in range(rows)]
        started = time.perf_counter()
        await conn.executemany("insert into t values ($1, $2)", values)
        return time.perf_counter() - started
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgw-exact-") as scratch:
        base = Path(scratch)
        cluster = LocalCluster()
        cluster.start()
        wardens: list[PgWarden] = []
        try:
            port = cluster.port
            plain = PgWarden("pgwarden", base / "plain", port)
            exact = PgWarden(
                "pgwarden-exact", base / "exact", port, (), ["--audit-exact-timings", "true"]
            )
            wardens = [plain, exact]
            targets = {
                "direct": f"postgresql://{cluster.superuser}@127.0.0.1:{port}/postgres",
            }
            for warden in wardens:
                target = warden.start()
                user = cluster.superuser
                targets[warden.name] = f"postgresql://{user}@127.0.0.1:{target.port}/postgres"
            seconds: dict[str, list[float]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, dsn in targets.items():
                    seconds[name].append(asyncio.run(_batch(dsn, args.rows)))
        finally:
            for warden in wardens:
                warden.stop()
            cluster.stop()
    print(f"asyncpg executemany of {args.rows} rows, {args.rounds} rounds (median):")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        print(f"  {name:<16} {args.rows / median:10.0f} rows/s  ({median * 1000:.1f} ms)")
    ratio = medians["pgwarden"] / medians["pgwarden-exact"]
    print(f"  exact timings: {ratio:.2f}x the throughput without them")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
