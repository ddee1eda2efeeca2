"""``pgwarden policy replay``: judge recorded statements again under a new policy.

The policy command (``proxy/commands/policy.py``) calls :func:`register_replay` with its own
subparsers, so this reads as ``pgwarden policy replay --policy NEW.yaml [filters] [DIR]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from proxy.commands.options import add_format_argument

FORMATS = ("text", "json")


def register_replay(policy_subparsers: argparse._SubParsersAction[Any]) -> None:
    from proxy.review.source import add_source_arguments, add_store_arguments

    parser = policy_subparsers.add_parser(
        "replay",
        help="re-evaluate recorded statements under a new policy and show what changes",
        description="Re-evaluate every recorded query event (default: the last 7 days) with its "
        "recorded user, database, application and client address, at its recorded time, under "
        "the given policy, and compare with the decision recorded then. Events without statement "
        "text or with text PostgreSQL cannot parse are counted as not judged. Accepts the same "
        "selection flags as `pgwarden logs`.",
    )
    parser.add_argument(
        "--policy",
        dest="replay_policies",
        action="append",
        required=True,
        metavar="FILE",
        help="policy file or directory to judge with (repeatable)",
    )
    add_source_arguments(parser)
    add_store_arguments(parser)
    add_format_argument(parser, FORMATS, "text")
    parser.add_argument(
        "--examples",
        type=_count,
        default=5,
        metavar="N",
        help="examples shown per kind of change (5)",
    )
    parser.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    from proxy.policy.loader import load_policy
    from proxy.review.replay import Replayer
    from proxy.review.source import describe, open_events, window_filter
    from proxy.sql.extract import analyze

    selection = window_filter(args)
    policy = load_policy(args.replay_policies)
    replayer = Replayer(policy, analyze, examples=args.examples)
    replayer.add_all(open_events(args, selection, progress_desc="policy replay"))
    result = replayer.result(
        policies=args.replay_policies,
        since=selection.since,
        until=selection.until,
        filters=describe(selection),
    )
    if args.format == "json":
        import orjson

        sys.stdout.write(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        from proxy.review.render_replay import render_replay_text

        sys.stdout.write(render_replay_text(result))
    return 0


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("cannot be negative")
    return value
