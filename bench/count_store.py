"""What the central store sink costs per event: instructions in the proxy, CPU in the store.

    python bench/callgrind.py --calls 5000 -- python bench/count_store.py trail --dsn DSN
    python bench/callgrind.py --calls 5000 -- python bench/count_store.py store --dsn DSN
    python bench/count_store.py store --dsn DSN --calls 20000 --profile

Same protocol as bench/count_hot.py (``--calls 0`` and ``--calls N`` under callgrind). Every
case writes N realistic query events (bench/bench_audit.py's) through a real
:class:`~proxy.audit.trail.AuditTrail`, 8 per event-loop turn as from 8 busy clients:

* ``trail`` — the trail alone (JSONL only);
* ``store`` — the trail plus the :class:`~proxy.store.shipper.StoreShipper` of ``--dsn``,
  until the store holds every event.

``store`` minus ``trail`` is what the sink costs the proxy process per event. With
``--server-cpu`` the store's backend CPU per event (utime + stime of the shipper's server
process from ``/proc``; needs the server on this host and permission to read its stat) is
printed too, and ``--profile`` prints the proxy-side cProfile top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

from bench_audit import make_event  # noqa: E402

from proxy import config  # noqa: E402
from proxy.audit.trail import AuditTrail  # noqa: E402
from proxy.store.shipper import StoreShipper  # noqa: E402

CASES = ("trail", "store")
PER_TURN = 8
_TICKS = os.sysconf("SC_CLK_TCK")


def _backend_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def _until(done: Callable[[], bool]) -> None:
    while True:
        if done():
            return
        await asyncio.sleep(0.2)


async def _write(trail: AuditTrail, calls: int) -> None:
    for start in range(0, calls, PER_TURN):
        for n in range(start, min(start + PER_TURN, calls)):
            trail.submit(make_event(n))
        await asyncio.sleep(0)  # one flush per turn, as under load
    done = asyncio.Event()
    trail.when_written(done.set)
    await done.wait()


async def run(case: str, calls: int, dsn: str, server_cpu: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="pgw-count-store-") as tmp:
        sinks = [{"type": "postgres", "dsn": dsn}] if case == "store" else []
        cfg = config.defaults().replace(audit__dir=str(Path(tmp) / "audit"), audit__sinks=sinks)
        trail = AuditTrail(cfg, "bench")
        trail.open()
        shipper = StoreShipper(cfg, trail, "bench") if case == "store" else None
        if shipper is not None:
            await shipper.start()
            await _until(lambda: shipper.healthy)  # connected, migrated: set-up is not counted
        sink = shipper.sinks[0] if shipper is not None else None
        conn = getattr(sink, "_conn", None)
        pid = conn.get_server_pid() if conn is not None else 0
        before = _backend_cpu(pid) if server_cpu and pid else 0.0
        started = time.process_time()
        await _write(trail, calls)
        if shipper is not None:
            await _until(lambda: not shipper.backlog and shipper.stats["shipped"] >= calls)
        proxy_seconds = time.process_time() - started
        if server_cpu and pid and calls and shipper is not None:
            after = _backend_cpu(pid)
            stats = shipper.stats
            print(
                f"store backend: {(after - before) / calls * 1e6:.1f} µs CPU per event;"
                f" proxy process: {proxy_seconds / calls * 1e6:.1f} µs CPU per event"
                f" ({calls} events, {stats['batches']:.0f} batches,"
                f" {stats['read_back']:.0f} read back from the files)",
                file=sys.stderr,
            )
        if shipper is not None:
            await shipper.aclose()
        await trail.aclose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", choices=CASES)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--dsn", default=os.environ.get("PGWARDEN_STORE_DSN", ""))
    ap.add_argument("--server-cpu", action="store_true")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.case == "store" and not args.dsn:
        ap.error("the store case needs --dsn (or PGWARDEN_STORE_DSN)")
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
    asyncio.run(run(args.case, args.calls, args.dsn, args.server_cpu))
    if args.profile:
        profile.disable()
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(35)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
