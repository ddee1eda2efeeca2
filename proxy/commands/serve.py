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
    config.add_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args)
    from proxy import tls

    tls.load(cfg)  # certificate, key and CA files are checked before anything starts
    tls.refuse_unwired(cfg)
    if args.check_config:
        from proxy.server import load_policies

        policy = load_policies(cfg)
        rules = None
        if cfg["alerts"]:
            from proxy.alerts.rules import load_rules

            rules = load_rules(list(cfg["alerts"]))
        for key in config.SCHEMA:
            print(f"{key.path}: {config.display_value(cfg[key.path])}")
        if policy is not None:
            print(f"# {policy.rule_count} policy rules in {len(policy.files)} files")
        if rules is not None:
            print(f"# {len(rules)} alert rules")
        print("configuration ok", file=sys.stderr)
        return 0
    from proxy.server import run_server

    return run_server(cfg)
