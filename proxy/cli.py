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

from proxy.buildinfo import version_line
from proxy.errors import PgWardenError, SourceError

COMMANDS = {
    "serve": "proxy.commands.serve",
    "demo": "proxy.commands.demo",
    "policy": "proxy.commands.policy",
    "logs": "proxy.commands.logs",
    "report": "proxy.commands.report",
    "verify": "proxy.commands.verify",
    "alerts": "proxy.commands.alerts",
    "approvals": "proxy.commands.approvals",
    "users": "proxy.commands.users",
}
COMMAND_MODULES = tuple(COMMANDS.values())


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``only``) one with just the named command, so running a command
    imports only what it needs (serve must not pay for the report renderer, and so on)."""
    parser = argparse.ArgumentParser(
        prog="pgwarden",
        description="PostgreSQL query-auditing proxy: audit every statement, enforce policies.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    args.argv = argv  # as given: serve's supervisor starts its workers with the same flags
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
    except OSError as exc:
        # A file that cannot be read or written, a full disk, a refused connection: the
        # operator needs the reason and the path, not a traceback.
        print(f"pgwarden: {os_error_text(exc)}", file=sys.stderr)
        return 2


def os_error_text(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else exc.filename
        return f"{target}: {reason}"
    return reason
