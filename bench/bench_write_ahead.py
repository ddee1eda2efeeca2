"""What ``audit.write_ahead`` costs (issue 10 §6), with ``audit.fsync`` none and always.

With write-ahead each statement's dispatch record is written (and, with ``audit.fsync:
always``, fsynced) before the statement is forwarded, so every statement waits for one more
trail write. This runs ``pgbench -S`` (one small SELECT per transaction) against four pgwarden
processes — write-ahead off/on by fsync none/always — and directly, alternating the targets
inside each cell, and reports TPS, p50/p99 latency, the proxy's CPU per transaction and the
ratio of each write-ahead target to the same fsync setting without it:

    python bench/bench_write_ahead.py [--duration 10] [--clients 1,8] [--modes simple,extended]
    python bench/bench_write_ahead.py --quick --targets pgwarden,pgwarden-wa   # smoke run

It starts a throwaway PostgreSQL (pgbench -i -s 1) and the proxies itself, and deletes them
afterwards. Run it on a quiet machine: the numbers are only comparable inside one run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(REPO_ROOT)]

from lib import pgbench, procstat  # noqa: E402
from lib.services import PgWarden, Target  # noqa: E402

from proxy.pgrun import LocalCluster  # noqa: E402

DATABASE = "bench"
# (name, write_ahead, fsync)
VARIANTS = (
    ("pgwarden", False, "none"),
    ("pgwarden-wa", True, "none"),
    ("pgwarden-fsync", False, "always"),
    ("pgwarden-wa-fsync", True, "always"),
)
BASE_OF = {"pgwarden-wa": "pgwarden", "pgwarden-wa-fsync": "pgwarden-fsync"}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per pgbench run")
    parser.add_argument("--clients", default="1,8", help="client counts, comma-separated")
    parser.add_argument("--modes", default="simple,extended", help="pgbench -M modes")
    parser.add_argument("--rounds", type=int, default=2, help="runs per target and cell")
    parser.add_argument(
        "--targets",
        default="direct," + ",".join(name for name, _, _ in VARIANTS),
        help="which of direct and the pgwarden variants to run",
    )
    parser.add_argument("--quick", action="store_true", help="1 s runs, 1 client, simple, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.clients, args.modes, args.rounds = 1.0, "1", "simple", 1
    args.clients = [int(c) for c in str(args.clients).split(",")]
    args.modes = str(args.modes).split(",")
    args.targets = str(args.targets).split(",")
    known = {"direct", *(name for name, _, _ in VARIANTS)}
    if unknown := set(args.targets) - known:
        parser.error(f"unknown target(s) {sorted(unknown)}; known: {sorted(known)}")
    return args


def _cell(
    targets: list[Target], mode: str, clients: int, args: argparse.Namespace, scratch: Path
) -> dict[str, dict[str, float]]:
    """Median TPS, p50, p99 and proxy CPU µs/tx per target, targets alternating per round."""
    runs: dict[str, list[tuple[float, float, float, float]]] = {t.name: [] for t in targets}
    for round_number in range(args.rounds):
        shift = round_number % len(targets)
        for target in targets[shift:] + targets[:shift]:
            before = procstat.usage(target.pid).cpu_seconds if target.pid else 0.0
            run = pgbench.run(target, DATABASE, mode, clients, args.duration, scratch)
            after = procstat.usage(target.pid).cpu_seconds if target.pid else 0.0
            cpu_us = (after - before) * 1e6 / run.transactions if run.transactions else 0.0
            runs[target.name].append((run.tps, run.p50_us, run.p99_us, cpu_us))
    out = {}
    for name, values in runs.items():
        tps, p50, p99, cpu = (statistics.median(column) for column in zip(*values, strict=True))
        out[name] = {"tps": tps, "p50_ms": p50 / 1000, "p99_ms": p99 / 1000, "cpu_us": cpu}
    return out


def _print(cell: dict[str, dict[str, float]], mode: str, clients: int) -> None:
    print(f"\npgbench -S -M {mode} -c {clients}")
    header = f"{'target':<18} {'TPS':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/tx':>10}"
    print(f"  {header}  vs same fsync")
    for name, row in cell.items():
        base = BASE_OF.get(name)
        known = base is not None and base in cell and cell[base]["tps"] > 0
        ratio = f"{row['tps'] / cell[base]['tps']:.2f}x" if known and base else ""
        print(
            f"  {name:<18} {row['tps']:9.0f} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} "
            f"{row['cpu_us']:10.1f}  {ratio}"
        )


def main() -> int:
    args = _args()
    with tempfile.TemporaryDirectory(prefix="pgw-wa-") as scratch_dir:
        scratch = Path(scratch_dir)
        cluster = LocalCluster(settings={"autovacuum": "off"})
        cluster.start()
        wardens: list[PgWarden] = []
        try:
            cluster.create_database(DATABASE, open_to_all=False)
            direct = Target("direct", cluster.host, cluster.port, None)
            subprocess.run(
                ["pgbench", "-i", "-q", "-s", "1", *pgbench.client_args(direct, DATABASE)],
                check=True,
                capture_output=True,
            )
            targets = [direct] if "direct" in args.targets else []
            for name, write_ahead, fsync in VARIANTS:
                if name not in args.targets:
                    continue
                flags = ["--audit-write-ahead", str(write_ahead).lower(), "--audit-fsync", fsync]
                warden = PgWarden(name, scratch / name, cluster.port, (), flags)
                wardens.append(warden)
                targets.append(warden.start())
            for mode in args.modes:
                for clients in args.clients:
                    _print(_cell(targets, mode, clients, args, scratch), mode, clients)
                    for warden in wardens:
                        warden.prune_rotated_audit()
        finally:
            for warden in wardens:
                warden.stop()
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
