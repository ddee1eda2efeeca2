"""``pgwarden demo``: a throwaway PostgreSQL with pgwarden in front of it, in one command.

Starts a private cluster (:mod:`proxy.pgrun`), creates a ``demo`` database with a little data,
prints how to connect, and serves until Ctrl-C. Everything it created is removed on the way
out, except an audit directory the user named with ``--audit-dir``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

from proxy import config, pgrun
from proxy.commands.demo_tls import DemoTLS

DEMO_DATABASE = "demo"
DEMO_USER = pgrun.Role("alice", "scram-sha-256", "alice-pw")
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9187"

DEMO_SQL = """
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    country text NOT NULL
);
CREATE TABLE orders (
    id serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers,
    amount numeric(10, 2) NOT NULL,
    placed_at timestamptz NOT NULL
);
INSERT INTO customers (name, email, country) VALUES
    ('Ada Lovelace', 'ada@example.org', 'GB'),
    ('Grace Hopper', 'grace@example.org', 'US'),
    ('Edsger Dijkstra', 'edsger@example.org', 'NL'),
    ('Barbara Liskov', 'barbara@example.org', 'US'),
    ('Ken Thompson', 'ken@example.org', 'US');
INSERT INTO orders (customer_id, amount, placed_at)
    SELECT 1 + n % 5, round((10 + (n * 37) % 490)::numeric, 2),
           timestamptz '2026-01-01 00:00+00' + n * interval '7 hours'
    FROM generate_series(1, 50) AS n;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO PUBLIC;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO PUBLIC;
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="try pgwarden: a throwaway PostgreSQL with the proxy in front",
        description="Start a private PostgreSQL cluster with a small 'demo' database, run "
        "pgwarden in front of it and print how to connect. Ctrl-C stops everything and removes "
        "what the demo created (an --audit-dir you chose is kept).",
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:6432",
        metavar="HOST:PORT",
        help="where the proxy listens (default 127.0.0.1:6432)",
    )
    parser.add_argument(
        "--admin-listen",
        default=DEFAULT_ADMIN_LISTEN,
        metavar="HOST:PORT",
        help=f"where the admin API listens (default {DEFAULT_ADMIN_LISTEN}; '' turns it off)",
    )
    parser.add_argument(
        "--policy",
        action="append",
        default=None,
        metavar="FILE",
        help="policy file or directory (repeatable; default: the shipped policies/default.yaml)",
    )
    parser.add_argument(
        "--audit-dir",
        default=None,
        metavar="DIR",
        help="keep the audit trail here (default: a temporary directory, deleted on exit)",
    )
    parser.set_defaults(func=run)


def default_policy() -> Path | None:
    """The shipped default policy: in a source checkout, or inside the installed package."""
    checkout = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"
    if checkout.is_file():
        return checkout
    packaged = resources.files("proxy").joinpath("policies", "default.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    return None


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _say(text: str = "") -> None:
    print(text, flush=True)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Until the server installs its own handlers, SIGTERM must still run our cleanup.
    raise KeyboardInterrupt


def _free_endpoint(flag: str, text: str) -> config.Endpoint | None:
    """The address of ``flag``, or None (after saying why) when it is invalid or taken."""
    try:
        endpoint = config.parse_listen(text)
    except ValueError as exc:
        print(f"pgwarden demo: {flag}: {exc}", file=sys.stderr)
        return None
    if not _port_free(endpoint.host, endpoint.port):
        print(
            f"pgwarden demo: {endpoint.host}:{endpoint.port} is in use; pick another with "
            f"{flag} 127.0.0.1:PORT",
            file=sys.stderr,
        )
        return None
    return endpoint


def run(args: argparse.Namespace) -> int:
    listen = _free_endpoint("--listen", args.listen)
    if listen is None:
        return 2
    admin: config.Endpoint | None = None
    if args.admin_listen.strip():
        admin = _free_endpoint("--admin-listen", args.admin_listen)
        if admin is None:
            return 2
    if args.policy:
        policies = [str(p) for p in args.policy]
    else:
        found = default_policy()
        policies = [str(found)] if found else []

    from proxy.server import run_server  # before the cluster: a broken install fails fast

    keep_audit = args.audit_dir is not None
    audit_dir = (
        Path(args.audit_dir) if keep_audit else Path(tempfile.mkdtemp(prefix="pgwarden-demo-"))
    )
    previous_sigterm = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    cluster: pgrun.LocalCluster | pgrun.ContainerCluster | None = None
    served = threading.Event()  # set once run_server has returned
    demo_tls = DemoTLS.create()
    try:
        _say("pgwarden demo: starting a throwaway PostgreSQL ...")
        cluster = pgrun.start_cluster(roles=[DEMO_USER], tls=demo_tls.server_tls())
        cluster.create_database(DEMO_DATABASE)
        cluster.execute(DEMO_SQL, database=DEMO_DATABASE)
        cfg = config.defaults().replace(
            upstream=f"{cluster.host}:{cluster.port}",
            listen=f"{listen.host}:{listen.port}",
            audit__dir=str(audit_dir),
            policies=policies,
            admin__listen=str(admin) if admin else "",
        )
        upstream_tls = isinstance(cluster, pgrun.LocalCluster) and cluster.tls is not None
        cfg = cfg.replace(**demo_tls.config_changes(upstream_tls))
        welcome = _welcome(
            cluster,
            listen,
            audit_dir,
            policies,
            admin,
            args.policy is None,
            demo_tls,
        )
        announcer = threading.Thread(
            target=_announce_when_listening,
            args=(listen, welcome, served),
            name="demo-welcome",
            daemon=True,
        )
        announcer.start()
        signal.signal(signal.SIGTERM, previous_sigterm)
        return run_server(cfg)
    except KeyboardInterrupt:
        return 130
    finally:
        served.set()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up first
        _cleanup(cluster, audit_dir, keep_audit)
        demo_tls.remove()
        signal.signal(signal.SIGTERM, previous_sigterm)


def _announce_when_listening(
    listen: config.Endpoint, welcome: str, served: threading.Event
) -> None:
    """Print the welcome once the proxy accepts connections, so the printed psql command
    works the moment it appears. A bare connect-and-close is neither logged nor audited."""
    host = _client_host(listen)
    deadline = time.monotonic() + 60
    while not served.is_set() and time.monotonic() < deadline:
        try:
            with socket.create_connection((host, listen.port), timeout=1):
                pass
        except OSError:
            served.wait(0.05)
            continue
        print(welcome, flush=True)
        return


def _client_host(listen: config.Endpoint) -> str:
    return "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host


def _welcome(
    cluster: pgrun.LocalCluster | pgrun.ContainerCluster,
    listen: config.Endpoint,
    audit_dir: Path,
    policies: list[str],
    admin: config.Endpoint | None,
    policy_defaulted: bool,
    demo_tls: DemoTLS,
) -> str:
    host = _client_host(listen)
    url = pgrun.libpq_url(host, listen.port, cluster.superuser, DEMO_DATABASE)
    # Authentication is relayed to the server (passthrough) and both legs are TLS, so a
    # SCRAM client must not offer channel binding (docs/tls.md explains the matrix).
    alice = pgrun.libpq_url(host, listen.port, DEMO_USER.name, DEMO_DATABASE, DEMO_USER.password)
    alice += "?channel_binding=disable"
    where = (
        f"(data in {cluster.base_dir})" if isinstance(cluster, pgrun.LocalCluster) else "(Docker)"
    )
    lines = [f"PostgreSQL is running on {cluster.host}:{cluster.port} {where}"]
    if policies:
        lines.append(f"Policies: {', '.join(policies)}")
    elif policy_defaulted:
        lines.append("Policies: none (policies/default.yaml not found): every statement is allowed")
    lines += [
        "",
        "pgwarden is listening. Connect through it with:",
        f'    psql "{url}"',
        f'    psql "{alice}"    # a password user',
        f'    psql "{demo_tls.verify_full_url(url)}"    # TLS, certificate checked',
        "Try: SELECT * FROM customers;  SELECT sum(amount) FROM orders;  DELETE FROM orders;",
        "",
        f"Audit log: {audit_dir}/audit.jsonl",
        f"    pgwarden logs --audit-dir {audit_dir}",
        (
            f"Admin API: http://{_client_host(admin)}:{admin.port}/healthz  /metrics"
            if admin
            else "Admin API: off"
        ),
        "Press Ctrl-C to stop; the demo database is deleted on exit.",
        "",
    ]
    return "\n".join(lines)


def _cleanup(
    cluster: pgrun.LocalCluster | pgrun.ContainerCluster | None, audit_dir: Path, keep: bool
) -> None:
    if cluster is not None:
        cluster.stop()
        _say("pgwarden demo: stopped PostgreSQL and deleted the demo cluster")
    if keep:
        _say(f"pgwarden demo: the audit log is kept in {audit_dir}")
    else:
        shutil.rmtree(audit_dir, ignore_errors=True)
        _say(f"pgwarden demo: deleted the temporary audit log {audit_dir}")
