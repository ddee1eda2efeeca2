"""Benchmark pgwarden against PostgreSQL directly and against PgBouncer, in one run.

    python bench/run_pgbench.py [--quick] [--duration 15] [--clients 1,8,64]
        [--modes simple,extended,prepared]
        [--targets direct,pgbouncer,pgwarden,pgwarden-policy,pgwarden-store]
        [--rounds 2] [--json out.json]

Starts a throwaway PostgreSQL (proxy.pgrun), PgBouncer in session mode and pgwarden, runs
``pgbench -S`` for every mode x client count, alternating targets inside each cell, then a bulk
COPY / wide SELECT test and an idle-connection memory test, and prints tables and target
checks. Everything it starts is stopped again, also on Ctrl-C. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(REPO_ROOT)]

from lib import bulk, idle, markdown, pgbench, procstat, report  # noqa: E402
from lib.results import BulkSample, IdleResult, Results, Sample  # noqa: E402
from lib.services import BenchSetupError, PgBouncer, PgWarden, Target, tail  # noqa: E402

from proxy.pgrun import LocalCluster  # noqa: E402

ALL_TARGETS = (
    "direct",
    "pgbouncer",
    "pgwarden",
    "pgwarden-baseline",
    "pgwarden-policy",
    "pgwarden-store",
)
BASELINE = "pgwarden-baseline"
WORKERS_PREFIX = "pgwarden-w"  # pgwarden-w2: `serve --workers 2`, default config otherwise
STORE_DATABASE = "pgwarden_store"
ALL_MODES = ("simple", "extended", "prepared")
DATABASE = "bench"
SCALE = 10  # pgbench_accounts holds SCALE * 100,000 rows
DEFAULT_POLICY = REPO_ROOT / "policies" / "default.yaml"


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    duration: int
    clients: list[int]
    modes: list[str]
    rounds: int
    bulk_rows: int
    idle_connections: int


FULL = Profile(15, [1, 8, 64], list(ALL_MODES), 2, SCALE * 100_000, 1000)
QUICK = Profile(3, [1, 8], ["simple", "prepared"], 1, 100_000, 200)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="pgbench -S: direct vs PgBouncer (session mode) vs pgwarden, same run"
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run, fewer cells")
    parser.add_argument("--duration", type=int, help="seconds per pgbench run (full: 15)")
    parser.add_argument("--clients", help="comma-separated client counts (full: 1,8,64)")
    parser.add_argument("--modes", help="comma-separated -M modes (full: all three)")
    parser.add_argument(
        "--targets", default=",".join(ALL_TARGETS), help=f"subset of {','.join(ALL_TARGETS)}"
    )
    parser.add_argument("--rounds", type=int, help="runs per target per cell (full: 2)")
    parser.add_argument("--bulk-rows", type=int, help="rows for COPY and wide SELECT (full: 1M)")
    parser.add_argument("--idle", type=int, help="idle connections to hold (full: 1000)")
    parser.add_argument("--skip-bulk", action="store_true", help="leave out COPY / wide SELECT")
    parser.add_argument("--skip-idle", action="store_true", help="leave out the idle test")
    parser.add_argument(
        "--policy", type=Path, default=DEFAULT_POLICY, help="policy for pgwarden-policy"
    )
    parser.add_argument(
        "--pgwarden-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `pgwarden serve` (repeatable), e.g. --pgwarden-arg=--workers=2",
    )
    parser.add_argument(
        "--workers",
        help="comma-separated worker counts: each adds a target pgwarden-wN (default config, "
        "`serve --workers N`), e.g. --workers 2,4 on a machine with cores to spare "
        "(CPU us/tx sums the supervisor and every worker)",
    )
    parser.add_argument("--json", type=Path, help="write all raw numbers here")
    parser.add_argument(
        "--baseline-repo",
        type=Path,
        help="another checkout of pgwarden (e.g. `git worktree add /tmp/base REF`) run as the "
        "pgwarden-baseline target, for before/after in the same run",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only print Markdown tables from the JSON of an earlier run, run nothing",
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    args.duration = args.duration or profile.duration
    args.clients = [int(c) for c in _csv(args.clients)] if args.clients else profile.clients
    args.modes = _csv(args.modes) if args.modes else profile.modes
    args.rounds = args.rounds or profile.rounds
    args.bulk_rows = args.bulk_rows or profile.bulk_rows
    args.idle = args.idle or profile.idle_connections
    args.targets = _csv(args.targets)
    for mode in args.modes:
        if mode not in ALL_MODES:
            parser.error(f"unknown mode {mode!r}")
    for target in args.targets:
        if target not in ALL_TARGETS:
            parser.error(f"unknown target {target!r}")
    # Keep the canonical order so tables always read direct, pgbouncer, pgwarden, policy.
    args.targets = [t for t in ALL_TARGETS if t in args.targets]
    for count in _csv(args.workers) if args.workers else []:
        if not count.isdigit() or not 1 <= int(count) <= 64:
            parser.error(f"--workers takes counts from 1 to 64, got {count!r}")
        args.targets.append(f"{WORKERS_PREFIX}{int(count)}")
    if BASELINE in args.targets and args.baseline_repo is None:
        args.targets.remove(BASELINE)  # only with --baseline-repo
    return args


def _terminate_on_sigterm() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so the cleanup in ``finally`` runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    pgb = subprocess.run(
        ["sh", "-c", "pgbouncer --version 2>/dev/null | head -1"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pgbench": subprocess.run(
            ["pgbench", "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "pgbouncer": pgb or "absent",
        "git": commit,
        "loadavg_start": Path("/proc/loadavg").read_text().strip(),
    }


class Bench:
    """Owns every process the run starts; :meth:`close` stops them all."""

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        self.args = args
        self.scratch = scratch
        self.cluster: LocalCluster | None = None
        self.bouncers: list[PgBouncer] = []
        self.wardens: list[PgWarden] = []
        self.results = Results()
        self.notes: list[str] = []
        self.server_pid: int | None = None  # the postmaster: its tree is PostgreSQL's CPU

    # --- setup ---------------------------------------------------------------------------

    def start_postgres(self) -> Target:
        max_conn = max(200, self.args.idle + 100, max(self.args.clients) + 50)
        idle.raise_fd_limit(4 * max_conn + 1000)  # clients, proxy sockets, backends
        self.cluster = LocalCluster(
            settings={
                "max_connections": str(max_conn),
                "shared_buffers": "256MB",
                # Off for a faster, quieter cluster: the run is read-only except for the COPY-in
                # table, which is UNLOGGED anyway; pgrun already sets fsync=off.
                "autovacuum": "off",
            }
        )
        print(f"starting PostgreSQL (max_connections={max_conn}) ...", file=sys.stderr)
        self.cluster.start()
        pid_file = self.cluster.data_dir / "postmaster.pid"
        self.server_pid = int(pid_file.read_text().split("\n", 1)[0])
        self.cluster.create_database(DATABASE, open_to_all=False)
        self.cluster.create_database(STORE_DATABASE, open_to_all=False)
        direct = Target("direct", self.cluster.host, self.cluster.port, None)
        print(f"pgbench -i -s {SCALE} ...", file=sys.stderr)
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(SCALE), *pgbench.client_args(direct, DATABASE)],
            check=True,
            capture_output=True,
        )
        bulk.psql(direct, DATABASE, "VACUUM ANALYZE")
        return direct

    def start_bouncer(self, pg_port: int, label: str) -> Target:
        bouncer = PgBouncer(self.scratch / f"pgbouncer-{label}", pg_port, self.args.idle)
        self.bouncers.append(bouncer)
        return bouncer.start()

    def start_warden(self, name: str, pg_port: int, label: str) -> tuple[Target, PgWarden]:
        policies = (self.args.policy,) if name == report.POLICY else ()
        extra = list(self.args.pgwarden_arg)
        if name == report.STORE:
            assert self.cluster is not None
            # Central store in a second database of the same cluster: the shipper's COPYs
            # compete for the same two cores, as they would on a small host.
            dsn = f"postgresql://{self.cluster.superuser}@127.0.0.1:{pg_port}/{STORE_DATABASE}"
            extra += ["--audit-sinks", f'[{{type: postgres, dsn: "{dsn}"}}]']
        workers = 1
        if name.startswith(WORKERS_PREFIX):
            workers = int(name.removeprefix(WORKERS_PREFIX))
            extra += ["--workers", str(workers)]
        repo = self.args.baseline_repo if name == BASELINE else REPO_ROOT
        warden = PgWarden(name, self.scratch / f"{name}-{label}", pg_port, policies, extra, repo)
        self.wardens.append(warden)
        print(f"  {shlex.join(warden.command())}", file=sys.stderr)
        return warden.start(workers), warden

    def start_target(self, name: str, direct: Target, label: str) -> Target:
        if name == "direct":
            return direct
        if name == "pgbouncer":
            return self.start_bouncer(direct.port, label)
        return self.start_warden(name, direct.port, label)[0]

    def log_of(self, target: Target) -> str:
        """The tail of a proxy's own log, to explain why it failed."""
        services: list[PgWarden | PgBouncer] = [*self.wardens, *self.bouncers]
        for service in services:
            if service.proc is not None and service.proc.pid == target.pid:
                state = service.proc.poll()
                status = "running" if state is None else f"exited with {state}"
                return f"\n--- {target.name} ({status}) log ---\n{tail(service.log)}"
        return ""

    def stop_target(self, target: Target) -> None:
        services: list[PgWarden | PgBouncer] = [*self.wardens, *self.bouncers]
        for service in services:
            if service.proc is not None and service.proc.pid == target.pid:
                service.stop()

    def close(self) -> None:
        for warden in self.wardens:
            with contextlib.suppress(Exception):
                warden.stop()
        for bouncer in self.bouncers:
            with contextlib.suppress(Exception):
                bouncer.stop()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.stop()

    def _warden_for(self, target: Target) -> PgWarden | None:
        for warden in self.wardens:
            if warden.proc is not None and warden.proc.pid == target.pid:
                return warden
        return None

    # --- pgbench matrix -----------------------------------------------------------------

    def run_matrix(self, targets: list[Target]) -> None:
        args = self.args
        for target in list(targets):  # warm caches and check every target answers
            try:
                pgbench.run(target, DATABASE, "simple", 1, 1, self.scratch)
            except pgbench.PgbenchFailed as exc:
                note = f"{target.name} left out: its warm-up run failed: {exc}{self.log_of(target)}"
                print(note, file=sys.stderr)
                self.notes.append(note)
                targets.remove(target)
        for mode in args.modes:
            for clients in args.clients:
                for round_no in range(args.rounds):
                    # Rotate the order each round so no target always runs first in a cell.
                    shift = round_no % len(targets)
                    for target in targets[shift:] + targets[:shift]:
                        self.results.samples.append(self._one_run(target, mode, clients, round_no))

    def _one_run(self, target: Target, mode: str, clients: int, round_no: int) -> Sample:
        warden = self._warden_for(target)
        if warden is not None:
            warden.prune_rotated_audit()
        before = procstat.usage(target.pid) if target.pid else None
        server_before = procstat.usage(self.server_pid) if self.server_pid else None
        audit_before = warden.audit_bytes() if warden else None
        label = f"{target.name:<16} -M {mode:<8} -c {clients:<3} round {round_no + 1}"
        try:
            run = pgbench.run(target, DATABASE, mode, clients, self.args.duration, self.scratch)
        except pgbench.PgbenchFailed as exc:
            print(f"{label}: FAILED\n{exc}{self.log_of(target)}", file=sys.stderr)
            return Sample(target.name, mode, clients, round_no, None, str(exc)[-500:])
        cpu = rss = audit = server = None
        if target.pid and before is not None:
            after = procstat.usage(target.pid)
            cpu, rss = after.cpu_seconds - before.cpu_seconds, after.rss_kb
        if self.server_pid and server_before is not None:
            server = procstat.usage(self.server_pid).cpu_seconds - server_before.cpu_seconds
        if warden is not None and audit_before is not None:
            audit = warden.audit_bytes() - audit_before
        print(
            f"{label}: {run.tps:9.0f} TPS  p50 {run.p50_us / 1000:.3f} ms  "
            f"p99 {run.p99_us / 1000:.3f} ms"
            + (f"  proxy CPU {cpu:.1f} s" if cpu else "")
            + (f"  PostgreSQL CPU {server:.1f} s" if server is not None else ""),
            file=sys.stderr,
        )
        return Sample(target.name, mode, clients, round_no, run, None, cpu, rss, audit, server)

    # --- bulk ---------------------------------------------------------------------------

    def run_bulk(self, targets: list[Target]) -> None:
        direct = targets[0] if targets[0].name == "direct" else None
        if direct is None:
            self.notes.append("bulk tests skipped: they need the direct target")
            return
        data_file = self.scratch / "copy.data"
        rows = self.args.bulk_rows
        print(f"bulk: preparing {rows} rows for COPY ...", file=sys.stderr)
        bulk.prepare(direct, DATABASE, rows, data_file)
        tests: dict[str, Callable[[Target], bulk.BulkRun]] = {
            "copy_out": lambda t: bulk.copy_out(t, DATABASE, rows),
            "copy_in": lambda t: bulk.copy_in(t, DATABASE, data_file, rows),
            "wide_select": lambda t: bulk.wide_select(t, DATABASE, rows),
        }
        for test, action in tests.items():
            for round_no in range(self.args.rounds):
                shift = round_no % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    try:
                        result = action(target)
                    except bulk.BulkFailed as exc:
                        print(f"bulk {test} {target.name}: FAILED {exc}", file=sys.stderr)
                        self.results.bulk.append(
                            BulkSample(test, target.name, round_no, None, None, str(exc)[-500:])
                        )
                        continue
                    print(
                        f"bulk {test:<12} {target.name:<16} {result.seconds:6.2f} s",
                        file=sys.stderr,
                    )
                    self.results.bulk.append(
                        BulkSample(
                            test, target.name, round_no, result.seconds, result.proxy_cpu_seconds
                        )
                    )
        data_file.unlink(missing_ok=True)

    # --- idle memory ----------------------------------------------------------------------

    def run_idle(self, pg_port: int) -> None:
        names = [t for t in self.args.targets if t not in ("direct",)]
        for name in names:
            print(f"idle: {self.args.idle} connections through a fresh {name}", file=sys.stderr)
            direct = Target("direct", "127.0.0.1", pg_port, None)
            target = self.start_target(name, direct, "idle")
            try:
                self.results.idle.append(measure_idle(target, direct, self.args.idle))
            finally:
                self.stop_target(target)


def _settled_rss(pid: int) -> int:
    """RSS once it stops moving (the proxy may still be finishing session setup)."""
    last = procstat.usage(pid).rss_kb
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = procstat.usage(pid).rss_kb
        if now == last:
            return now
        last = now
    return last


def _client_backends(direct: Target) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    return int(bulk.psql(direct, DATABASE, sql).strip()) - 1  # minus this query's own


def measure_idle(target: Target, direct: Target, count: int) -> IdleResult:
    assert target.pid is not None

    async def work() -> IdleResult:
        fresh = _settled_rss(target.pid)  # type: ignore[arg-type]
        # One session first, so code loaded lazily on the first client counts as baseline
        # rather than as the cost of the first of many idle clients.
        warm = await idle.open_idle(target, 1, "postgres", DATABASE)
        await idle.close_idle(warm)
        baseline = _settled_rss(target.pid)  # type: ignore[arg-type]
        conns = await idle.open_idle(target, count, "postgres", DATABASE)
        try:
            loaded = _settled_rss(target.pid)  # type: ignore[arg-type]
            backends = _client_backends(direct)
        finally:
            await idle.close_idle(conns)
        closed = _settled_rss(target.pid)  # type: ignore[arg-type]
        return IdleResult(target.name, count, fresh, baseline, loaded, closed, backends)

    try:
        return asyncio.run(work())
    except (OSError, asyncio.IncompleteReadError, idle.IdleConnectFailed) as exc:
        return IdleResult(target.name, count, 0, 0, 0, 0, 0, f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pgwarden-bench-"))
    os.chmod(path, 0o755)  # PgBouncer runs as 'postgres' when we are root and reads its ini here
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(markdown.render(json.loads(args.render.read_text())), end="")
        return 0
    _terminate_on_sigterm()
    if "pgwarden-policy" in args.targets and not args.policy.exists():
        print(f"note: {args.policy} does not exist; leaving out pgwarden-policy", file=sys.stderr)
        args.targets.remove("pgwarden-policy")
    info = machine_info()
    command = shlex.join([sys.executable, "bench/run_pgbench.py", *(argv or sys.argv[1:])])
    with scratch_dir() as scratch:
        bench = Bench(args, scratch)
        try:
            direct = bench.start_postgres()
            targets = [bench.start_target(name, direct, "bench") for name in args.targets]
            bench.run_matrix(targets)
            if not args.skip_bulk:
                bench.run_bulk(targets)
            for warden in list(bench.wardens) + list(bench.bouncers):
                warden.stop()
            if not args.skip_idle:
                bench.run_idle(direct.port)
        except BenchSetupError as exc:
            print(f"setup failed: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; cleaning up", file=sys.stderr)
            return 130
        finally:
            bench.close()
        info["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
        print_report(bench, args, info, command)
        if args.json:
            write_json(args.json, bench, args, info, command)
    return 0


def print_report(bench: Bench, args: argparse.Namespace, info: dict[str, str], cmd: str) -> None:
    out = [f"command: {cmd}"]
    out += [f"{key}: {value}" for key, value in info.items()]
    out.append(
        f"pgbench -S, scale {SCALE}, {args.duration} s per run, {args.rounds} round(s) per "
        f"target per cell, -j min(clients, 2)"
    )
    out += report.pgbench_table(bench.results, args.targets, args.modes, args.clients)
    out += report.bulk_table(bench.results.bulk, args.targets)
    out += report.idle_table(bench.results.idle)
    out += ["", "issue 14 targets (informative, never asserted):"]
    out += [
        "  " + line
        for line in report.target_checks(bench.results, args.targets, args.modes, args.clients)
    ]
    out += [f"note: {note}" for note in bench.notes]
    print("\n".join(out))


def write_json(
    path: Path, bench: Bench, args: argparse.Namespace, info: dict[str, str], cmd: str
) -> None:
    cells = [
        dataclasses.asdict(cell)
        for mode in args.modes
        for clients in args.clients
        for cell in report.cell_summaries(bench.results, args.targets, mode, clients).values()
    ]
    payload = {
        "command": cmd,
        "machine": info,
        "settings": {
            "scale": SCALE,
            "duration": args.duration,
            "rounds": args.rounds,
            "clients": args.clients,
            "modes": args.modes,
            "targets": args.targets,
            "bulk_rows": args.bulk_rows,
            "idle_connections": args.idle,
        },
        "cells": cells,
        "samples": [dataclasses.asdict(s) for s in bench.results.samples],
        "bulk": [dataclasses.asdict(b) for b in bench.results.bulk],
        "idle": [
            {**dataclasses.asdict(i), "per_connection_kb": i.per_connection_kb}
            for i in bench.results.idle
        ],
        "checks": report.target_checks(bench.results, args.targets, args.modes, args.clients),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
