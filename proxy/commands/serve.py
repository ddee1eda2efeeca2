"""``pgwarden serve``: run the proxy."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from proxy import config


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the proxy",
        description="Run pgwarden in front of a PostgreSQL server. Every option can also be "
        "set in the YAML config file (--config) or a PGWARDEN_* environment variable; "
        "flags win over the environment, which wins over the file.",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration and policies, print it, and exit",
    )
    # Set by the supervisor of ``workers`` > 1 for each worker process it starts.
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    config.add_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args)
    from proxy import tls

    tls.load(cfg)  # certificate, key and CA files are checked before anything starts
    from proxy.relay import endidentity

    endidentity.load(cfg)  # identity.* as a whole (a pattern for application_name, networks)
    from proxy.auth import passfile
    from proxy.relay import credentials

    credentials.load_users(cfg)  # mode and format, also for --check-config
    credentials.load_settings(cfg)  # the ident map
    if cfg["auth.passfile"]:
        passfile.load(cfg["auth.passfile"])
    if args.check_config:
        return check_config(cfg)
    from proxy.server import run_server

    if args.worker_index is not None:
        from proxy.workers.role import worker_role
        from proxy.workers.supervisor import die_with_parent

        die_with_parent()
        role = worker_role(cfg, args.worker_index, args.run_dir)
        return run_server(role.config, role.role)
    if cfg["workers"] > 1:
        from proxy.workers.supervisor import supervise

        return supervise(cfg, list(getattr(args, "argv", None) or sys.argv[1:]))
    return run_server(cfg)


def check_config(cfg: config.Config) -> int:
    """Exit 2 with one line per problem that would stop ``serve``; else print the values."""
    from proxy import preflight
    from proxy.server import load_policies

    findings = preflight.check(cfg)
    for warning in findings.warnings:
        print(f"pgwarden: warning: {warning}", file=sys.stderr)
    findings.raise_problems()
    policy = load_policies(cfg)
    rules = None
    if cfg["alerts"]:
        from proxy.alerts.rules import load_rules

        rules = load_rules(list(cfg["alerts"]))
    people = None
    if cfg["approvals.approvers_file"]:
        from proxy.approvals.people import load_people

        people = load_people(str(cfg["approvals.approvers_file"]))
    for key in config.SCHEMA:
        print(f"{key.path}: {config.display_value(cfg[key.path])}")
    if policy is not None:
        print(f"# {policy.rule_count} policy rules in {len(policy.files)} files")
    if rules is not None:
        print(f"# {len(rules)} alert rules")
    if people is not None:
        count = len(people)
        print(f"# {count} {'person' if count == 1 else 'people'} in the approvers file")
    print("configuration ok", file=sys.stderr)
    return 0
