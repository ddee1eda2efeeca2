"""TLS on both legs vs plaintext: direct, PgBouncer and pgwarden in one run (issue 11).

    python bench/bench_tls.py [--duration 15] [--clients 1,8] [--modes simple,extended]
        [--connect-duration 10] [--connect-clients 1,8] [--rounds 2] [--json out.json]
    python bench/bench_tls.py --quick        # smoke run: 2 s per run, 1 client, scale 1

Starts a throwaway PostgreSQL with ``ssl=on`` (certificates of a throwaway CA from
``proxy.tls.certs``, valid for 127.0.0.1) and six targets, each plaintext and TLS:

* ``direct`` / ``direct-tls`` — PostgreSQL itself, the client with ``sslmode=disable`` /
  ``sslmode=verify-full``;
* ``pgbouncer`` / ``pgbouncer-tls`` — PgBouncer in session mode, ``server_tls_sslmode =
  disable`` / ``client_tls_sslmode = require`` with its certificate and ``server_tls_sslmode =
  verify-full`` against the CA;
* ``pgwarden`` / ``pgwarden-tls`` — ``pgwarden serve`` with full auditing, ``upstream_tls.mode
  disable`` / ``client_tls.mode require`` with its certificate and ``upstream_tls.mode
  verify-full`` against the CA.

Before measuring, each target is checked to be what its name says: the client's ``sslmode``
(disable or verify-full) must work, and ``pg_stat_ssl`` on the server must show the
connection it serves encrypted exactly for the TLS targets.

Then, targets alternating inside each cell (``--rounds`` times, the first target rotating):

1. **steady state** — ``pgbench -S -M MODE -c C -T DURATION``: TPS, p50/p99, proxy CPU µs per
   transaction (its process tree) and PostgreSQL's;
2. **handshake cost** — ``pgbench -S -C`` (a new connection, with its TLS handshakes, for
   every transaction): connections per second, p50/p99 from pgbench's log, and CPU µs per
   connection. PgBouncer keeps its server connections between clients (in session mode
   too), so its rows pay the client leg's handshake only; pgwarden and direct start a new
   backend (and, with TLS, a second handshake) for every connection.

Each line shows ``x plain`` (the TLS target over its plaintext twin), ``x direct`` and ``x pgb``
(over direct / PgBouncer with the same TLS). Run it on a quiet machine: the numbers are only
comparable inside one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pwd
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(REPO_ROOT)]

from lib import bulk, pgbench, procstat  # noqa: E402
from lib.report import _fmt, _ratio  # noqa: E402
from lib.results import Results, Sample, summarize  # noqa: E402
from lib.services import PgBouncer, PgWarden, Target  # noqa: E402

from proxy.pgrun import LocalCluster, ServerTLS  # noqa: E402
from proxy.tls.certs import DemoPKI, make_demo_pki  # noqa: E402

DATABASE = "bench"
KINDS = ("direct", "pgbouncer", "pgwarden")
CONNECT = "connect-"  # mode prefix of the handshake runs (pgbench -C)


@dataclass(frozen=True, slots=True)
class Variant:
    """One target: a kind, plaintext or TLS, and how pgbench reaches it."""

    kind: str
    tls: bool
    target: Target
    conninfo: str  # the database argument of pgbench/psql: dbname plus the sslmode

    @property
    def name(self) -> str:
        return self.target.name


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per pgbench -S")
    parser.add_argument("--clients", default="1,8", help="client counts, comma-separated")
    parser.add_argument("--modes", default="simple,extended", help="pgbench -M modes")
    parser.add_argument(
        "--connect-duration", type=float, default=10.0, help="seconds per pgbench -S -C"
    )
    parser.add_argument("--connect-clients", default="1,8", help="client counts for -C")
    parser.add_argument("--rounds", type=int, default=2, help="runs per target and cell")
    parser.add_argument(
        "--scale", type=int, default=10, help="pgbench -i -s (10: as run_pgbench.py)"
    )
    parser.add_argument("--json", type=Path, help="write every raw number here")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 s, 1 client, simple, one round, scale 1"
    )
    args = parser.parse_args()
    if args.quick:
        args.duration = args.connect_duration = 2.0
        args.clients = args.connect_clients = "1"
        args.modes, args.rounds, args.scale = "simple", 1, 1
    args.clients = [int(c) for c in str(args.clients).split(",")]
    args.connect_clients = [int(c) for c in str(args.connect_clients).split(",")]
    args.modes = str(args.modes).split(",")
    for mode in args.modes:
        if mode not in ("simple", "extended", "prepared"):
            parser.error(f"unknown mode {mode!r}")
    return args


def _give_to_postgres(directory: Path) -> None:
    """PgBouncer runs as the ``postgres`` OS user when we are root: it must read its key."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam("postgres")
    for path in (directory, *directory.iterdir()):
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _conninfo(tls: bool, pki: DemoPKI) -> str:
    if tls:
        return f"dbname={DATABASE} sslmode=verify-full sslrootcert={pki.ca_file}"
    return f"dbname={DATABASE} sslmode=disable"


def _pgbouncer_tls(tls: bool, pki: DemoPKI) -> dict[str, str]:
    if not tls:
        # PgBouncer's default server_tls_sslmode is prefer: the plaintext twin must say so.
        return {"server_tls_sslmode": "disable"}
    return {
        "client_tls_sslmode": "require",
        "client_tls_cert_file": str(pki.proxy_cert),
        "client_tls_key_file": str(pki.proxy_key),
        "server_tls_sslmode": "verify-full",
        "server_tls_ca_file": str(pki.ca_file),
    }


def _pgwarden_tls(tls: bool, pki: DemoPKI) -> list[str]:
    if not tls:
        return ["--client-tls-mode", "disable", "--upstream-tls-mode", "disable"]
    return [
        "--client-tls-mode",
        "require",
        "--client-tls-cert-file",
        str(pki.proxy_cert),
        "--client-tls-key-file",
        str(pki.proxy_key),
        "--upstream-tls-mode",
        "verify-full",
        "--upstream-tls-ca-file",
        str(pki.ca_file),
    ]


def _check(variant: Variant) -> None:
    """The target is what its name says: the server sees its connection encrypted exactly
    when the variant is TLS (and the client's sslmode, disable or verify-full, worked)."""
    sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    seen = bulk.psql(variant.target, variant.conninfo, sql).strip()
    if seen != ("t" if variant.tls else "f"):
        raise SystemExit(f"{variant.name}: the server's pg_stat_ssl says ssl={seen!r}")


@dataclass(frozen=True, slots=True)
class Context:
    """What every run needs besides its cell."""

    scratch: Path
    server_pid: int  # the postmaster: its tree is PostgreSQL's CPU


def _sample(
    variant: Variant, mode: str, clients: int, round_no: int, seconds: float, context: Context
) -> Sample:
    connect = mode.startswith(CONNECT)
    target = variant.target
    before = procstat.usage(target.pid).cpu_seconds if target.pid else None
    server_before = procstat.usage(context.server_pid).cpu_seconds
    label = f"{variant.name:<14} {mode:<16} -c {clients:<3} round {round_no + 1}"
    try:
        run = pgbench.run(
            target,
            variant.conninfo,
            mode.removeprefix(CONNECT),
            clients,
            seconds,
            context.scratch,
            connect_each=connect,
        )
    except pgbench.PgbenchFailed as exc:
        print(f"{label}: FAILED\n{exc}", file=sys.stderr)
        return Sample(variant.name, mode, clients, round_no, None, str(exc)[-500:])
    cpu = procstat.usage(target.pid).cpu_seconds - before if before is not None else None
    server = procstat.usage(context.server_pid).cpu_seconds - server_before
    print(f"{label}: {run.tps:9.0f} {'conn/s' if connect else 'TPS'}", file=sys.stderr)
    return Sample(variant.name, mode, clients, round_no, run, None, cpu, None, None, server)


def _cells(variants: list[Variant], args: argparse.Namespace, context: Context) -> Results:
    for variant in variants:  # warm caches (the proxy's code paths, the server's pages)
        pgbench.run(variant.target, variant.conninfo, "simple", 1, 1, context.scratch)
    results = Results()
    cells = [(mode, c, args.duration) for mode in args.modes for c in args.clients]
    cells += [(CONNECT + "simple", c, args.connect_duration) for c in args.connect_clients]
    for mode, clients, seconds in cells:
        for round_no in range(args.rounds):
            shift = round_no % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                results.samples.append(_sample(variant, mode, clients, round_no, seconds, context))
    return results


def table(results: Results, variants: list[Variant], mode: str, clients: int) -> list[str]:
    connect = mode.startswith(CONNECT)
    unit = "conn" if connect else "tx"
    cells = {v.name: summarize(results.samples, v.name, mode, clients) for v in variants}
    by = {(v.kind, v.tls): cells[v.name] for v in variants}
    title = (
        f"handshake: pgbench -S -C -M {mode.removeprefix(CONNECT)} (a new connection per "
        "transaction)"
        if connect
        else f"steady state: pgbench -S -M {mode}"
    )
    lines = [
        "",
        f"== {title}, {clients} client{'s' if clients != 1 else ''}",
        f"{'target':<15}{unit + '/s':>9}{'x plain':>8}{'x direct':>9}{'x pgb':>7}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'CPU us/' + unit:>13}{'PG us/' + unit:>12}",
    ]
    for variant in variants:
        cell = cells[variant.name]
        if cell.runs == 0:
            lines.append(f"{variant.name:<15}  no successful run ({cell.errors} failed)")
            continue
        plain = by.get((variant.kind, False)) if variant.tls else None
        direct = by.get(("direct", variant.tls)) if variant.kind != "direct" else None
        bouncer = by.get(("pgbouncer", variant.tls)) if variant.kind == "pgwarden" else None
        lines.append(
            f"{variant.name:<15}{_fmt(cell.tps, '9.0f')}"
            f"{_fmt(_ratio(cell.tps, plain.tps if plain else None), '8.2f')}"
            f"{_fmt(_ratio(cell.tps, direct.tps if direct else None), '9.2f')}"
            f"{_fmt(_ratio(cell.tps, bouncer.tps if bouncer else None), '7.2f')}"
            f"{_fmt(cell.p50_us / 1000 if cell.p50_us else None, '8.3f')}"
            f"{_fmt(cell.p99_us / 1000 if cell.p99_us else None, '8.3f')}"
            f"{_fmt(cell.proxy_cpu_us_per_tx, '13.1f')}"
            f"{_fmt(cell.server_cpu_us_per_tx, '12.1f')}"
            + (f"  ({cell.errors} failed)" if cell.errors else "")
        )
    return lines


def main() -> int:
    args = _args()
    command = shlex.join([sys.executable, "bench/bench_tls.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory(prefix="pgw-tls-") as scratch_dir:
        scratch = Path(scratch_dir)
        os.chmod(scratch, 0o755)  # PgBouncer (as postgres) reads its ini and key below it
        pki = make_demo_pki(scratch / "pki")
        _give_to_postgres(pki.directory)
        cluster = LocalCluster(
            settings={"autovacuum": "off", "max_connections": "300"},
            tls=ServerTLS(pki.server_cert, pki.server_key, pki.ca_file),
        )
        print("starting PostgreSQL with ssl=on ...", file=sys.stderr)
        cluster.start()
        services: list[PgBouncer | PgWarden] = []
        try:
            if cluster.tls is None:
                raise SystemExit("these PostgreSQL binaries were built without TLS")
            pid_file = cluster.data_dir / "postmaster.pid"
            context = Context(scratch, int(pid_file.read_text().split("\n", 1)[0]))
            cluster.create_database(DATABASE, open_to_all=False)
            direct = Target("direct", cluster.host, cluster.port, None)
            print(f"pgbench -i -s {args.scale} ...", file=sys.stderr)
            init = ["pgbench", "-i", "-q", "-s", str(args.scale)]
            subprocess.run(
                [*init, *pgbench.client_args(direct, DATABASE)],
                check=True,
                capture_output=True,
            )
            variants: list[Variant] = []
            for kind in KINDS:
                for tls in (False, True):
                    name = kind + ("-tls" if tls else "")
                    if kind == "direct":
                        target = Target(name, direct.host, direct.port, None)
                    elif kind == "pgbouncer":
                        bouncer = PgBouncer(
                            scratch / name, cluster.port, 100, name, _pgbouncer_tls(tls, pki)
                        )
                        services.append(bouncer)
                        target = bouncer.start()
                    else:
                        warden = PgWarden(
                            name, scratch / name, cluster.port, (), _pgwarden_tls(tls, pki)
                        )
                        services.append(warden)
                        print(f"  {shlex.join(warden.command())}", file=sys.stderr)
                        target = warden.start()
                    variants.append(Variant(kind, tls, target, _conninfo(tls, pki)))
            for variant in variants:
                _check(variant)
            results = _cells(variants, args, context)
        finally:
            for service in services:
                service.stop()
            cluster.stop()
    modes = [*args.modes, CONNECT + "simple"]
    out = [f"command: {command}"]
    for mode in modes:
        for clients in args.connect_clients if mode.startswith(CONNECT) else args.clients:
            out += table(results, variants, mode, clients)
    print("\n".join(out))
    if args.json:
        payload = {
            "command": command,
            "samples": [dataclasses.asdict(s) for s in results.samples],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
