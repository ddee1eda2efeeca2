"""The ``pgwarden`` command: parse flags and hand over to the library. Nothing else lives here.

Each subcommand lives in its own module under :mod:`proxy.commands` and exposes
``register(subparsers)``; the parser it adds sets ``func`` to a ``run(args) -> int``.
Exit codes: 0 success, 1 a check failed (verify, policy check, failed test cases), 2 bad input
(invalid config, bad flags), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.errors import PgWardenError, SourceError

COMMAND_MODULES = (
    "proxy.commands.serve",
    "proxy.commands.demo",
    "proxy.commands.policy",
    "proxy.commands.logs",
    "proxy.commands.report",
    "proxy.commands.verify",
    "proxy.commands.alerts",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgwarden",
        description="PostgreSQL query-auditing proxy: audit every statement, enforce policies.",
    )
    parser.add_argument("--version", action="version", version=f"pgwarden {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except SourceError as exc:
        for problem in exc.problems:
            print(f"pgwarden: {problem}", file=sys.stderr)
        return 2
    except PgWardenError as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `pgwarden logs | head` closes our stdout early; that is not an error.
        return 0
