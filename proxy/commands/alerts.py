"""``pgwarden alerts``: check alert rules, and replay recorded events through them."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    from proxy.commands.options import add_format_argument
    from proxy.review.source import add_source_arguments, add_store_arguments

    parser = subparsers.add_parser(
        "alerts",
        help="check alert rules, or see which alerts recorded traffic would have fired",
        description="Work with alert rules (YAML files or directories of them).",
    )
    sub = parser.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)

    check = sub.add_parser(
        "check",
        help="validate alert-rule files (every problem as file:line:col)",
        description="Validate alert rules; exit 0 when valid, 2 with every problem listed.",
    )
    check.add_argument("--rules", "-r", action="append", required=True, metavar="PATH",
                       help="alert-rule file or directory (repeatable)")  # fmt: skip
    check.set_defaults(func=run_check)

    test = sub.add_parser(
        "test",
        help="replay recorded events through alert rules",
        description="Replay recorded audit events (an audit directory, or the central store "
        "with --store) through alert rules, using each event's ts as the clock, and print "
        "which alerts would have fired and when. Nothing is delivered. The selection flags "
        "(same as `pgwarden logs`) choose the events replayed.",
    )
    test.add_argument("--rules", "-r", action="append", required=True, metavar="PATH",
                      help="alert-rule file or directory (repeatable)")  # fmt: skip
    add_store_arguments(test)
    add_format_argument(test, ("text", "json"), "text", "output format (json: one alert per line)")
    add_source_arguments(test)
    test.set_defaults(func=run_test)


def run_check(args: argparse.Namespace) -> int:
    from proxy.alerts.rules import load_rules, rule_files

    rules = load_rules(args.rules)
    files = rule_files(args.rules)
    print(f"{len(rules)} alert rule(s) in {len(files)} file(s): ok")
    for rule in rules:
        kind = rule.threshold.text if rule.threshold else str(rule.condition)
        by = f" by {rule.by}" if rule.by else ""
        print(f"  {rule.id}: {kind}{by} [{rule.severity}] ({rule.source})")
    return 0


def run_test(args: argparse.Namespace) -> int:
    import orjson

    from proxy.alerts.replay import format_table, replay
    from proxy.alerts.rules import load_rules
    from proxy.audit.filters import EventFilter
    from proxy.review.source import open_events

    rules = load_rules(args.rules)
    fired = []
    events = open_events(
        args,
        EventFilter.from_args(args),
        progress_desc="alerts test",
        streams_to_stdout=args.format == "json",
    )
    for alert in replay(rules, events):
        if args.format == "json":
            sys.stdout.write(orjson.dumps(alert).decode() + "\n")
        fired.append(alert)
    if args.format != "json":
        if fired:
            print(format_table(fired))
        print(f"{len(fired)} alert(s) would have fired", file=sys.stderr)
    return 0
