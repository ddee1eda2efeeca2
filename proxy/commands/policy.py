"""``pgwarden policy check|test``: validate policy files and see what they decide."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.commands.options import add_format_argument
from proxy.commands.policy_replay import register_replay
from proxy.errors import SourceError

if TYPE_CHECKING:
    from proxy.policy.cases import Case
    from proxy.policy.engine import Policy


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    policy_subparsers = add_policy_parser(subparsers)
    register_check(policy_subparsers)
    register_test(policy_subparsers)
    register_replay(policy_subparsers)


def add_policy_parser(
    subparsers: argparse._SubParsersAction[Any],
) -> argparse._SubParsersAction[Any]:
    parser = subparsers.add_parser(
        "policy",
        help="check, test and replay policy files",
        description="Validate policy files and show what they decide for a statement.",
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    policy_subparsers: argparse._SubParsersAction[Any] = parser.add_subparsers(
        dest="policy_command", metavar="SUBCOMMAND"
    )
    return policy_subparsers


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def register_check(policy_subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = policy_subparsers.add_parser(
        "check",
        help="validate policy files",
        description="Validate policy files (and what they include). Prints every problem as "
        "file:line:col: message and exits 1 when there is any.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="policy file or directory")
    parser.set_defaults(func=run_check)


def register_test(policy_subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = policy_subparsers.add_parser(
        "test",
        help="show the decision for a statement, or run a cases file",
        description="Evaluate SQL against the policy and explain the decision: every matched "
        "rule with its file:line and the facts that made it match. With --cases, run a file "
        "of cases and exit 1 when any expectation fails.",
    )
    parser.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="FILE",
        help="policy file or directory (repeatable)",
    )
    parser.add_argument("--user", help="user name (default: app)")
    parser.add_argument("--database", help="database name (default: app)")
    parser.add_argument("--application", help="application_name (default: empty)")
    parser.add_argument("--client-addr", help="client IP address, or 'unix' (default: 127.0.0.1)")
    parser.add_argument("--identity", help="end identity behind the role (default: none)")
    parser.add_argument(
        "--identity-source",
        choices=("certificate", "proxy_user", "client_supplied"),
        help="where --identity came from (default: certificate)",
    )
    parser.add_argument("--at", metavar="ISO-TIME", help="evaluate at this time (no offset: UTC)")
    parser.add_argument("--cases", metavar="CASES.yaml", help="run the cases in this file")
    parser.add_argument(
        "--file",
        "-f",
        dest="sql_file",
        metavar="FILE",
        help="read the SQL from FILE ('-': standard input) instead of the SQL argument",
    )
    add_format_argument(parser, ("text", "json"), "text", "output format (json: machine-readable)")
    parser.add_argument("sql", nargs="?", metavar="SQL", help="the SQL text to evaluate")
    parser.set_defaults(func=run_test)


def _print_problems(exc: SourceError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)


def run_check(args: argparse.Namespace) -> int:
    from proxy.errors import PolicyError
    from proxy.policy.loader import load_policy

    try:
        policy = load_policy(args.files)
    except PolicyError as exc:
        _print_problems(exc)
        return 1
    print(f"ok: {policy.rule_count} rules in {len(policy.files)} files")
    return 0


def run_test(args: argparse.Namespace) -> int:
    from proxy.policy import cases as policy_cases
    from proxy.policy.loader import load_policy

    given = [x for x in (args.cases, args.sql, args.sql_file) if x is not None]
    if len(given) != 1:
        print("pgwarden policy test: give one of SQL, -f FILE or --cases FILE", file=sys.stderr)
        return 2
    as_json = args.format == "json"
    try:
        policy = load_policy(args.policy)
    except SourceError as exc:
        _print_problems(exc)
        return 2
    if args.cases is not None:
        try:
            cases = policy_cases.load_cases(args.cases)
        except SourceError as exc:
            _print_problems(exc)
            return 2
        return _run_cases(policy, cases, as_json=as_json)
    try:
        at = policy_cases.parse_time(args.at) if args.at else None
    except ValueError:
        print(f"pgwarden policy test: bad --at time {args.at!r} (use ISO-8601)", file=sys.stderr)
        return 2
    if args.identity_source and not args.identity:
        print("pgwarden policy test: --identity-source needs --identity", file=sys.stderr)
        return 2
    identity = policy_cases.make_identity(
        args.user,
        args.database,
        args.application,
        args.client_addr,
        end_identity=args.identity,
        identity_source=args.identity_source,
    )
    from proxy.policy import render

    sql = args.sql if args.sql is not None else _read_sql(args.sql_file)
    facts = policy_cases.default_analyzer()(sql)
    explanation = policy.explain(identity, facts, at)
    if as_json:
        print(json.dumps(render.explanation_json(explanation), indent=2))
    else:
        sys.stdout.write(render.explanation_text(explanation))
    return 0


def _read_sql(path: str) -> str:
    """The SQL of ``-f``: a file's text, or standard input for ``-``."""
    from proxy.errors import PgWardenError

    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PgWardenError(f"cannot read SQL from {path!r}: {reason}") from None


def _run_cases(policy: Policy, cases: Sequence[Case], *, as_json: bool) -> int:
    from proxy.policy import render
    from proxy.policy.cases import default_analyzer, run_case

    analyze = default_analyzer()
    failed = 0
    for case in cases:
        result = run_case(policy, case, analyze)
        failed += not result.ok
        if as_json:
            print(json.dumps(render.case_json(result)))
        else:
            print(render.case_line(result))
    total = len(cases)
    summary = f"{total - failed} passed, {failed} failed, {total} cases"
    # With --json stdout is one object per line; the summary goes where people look.
    print(summary, file=sys.stderr if as_json else sys.stdout)
    return 1 if failed else 0
