"""``pgwarden report``: a summary of the audit trail over a time window."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.commands.options import add_format_argument

if TYPE_CHECKING:
    from proxy.review.report import Report

FORMATS = ("text", "markdown", "json", "html")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    from proxy.review.source import add_source_arguments, add_store_arguments

    parser = subparsers.add_parser(
        "report",
        help="summarise the audit trail: users, query shapes, errors, blocks, sessions",
        description="Summarise the audit trail over a window (default: the last 7 days): totals, "
        "per user/database/application, top query shapes with latency percentiles, errors by "
        "SQLSTATE, blocks and flags by rule, query shapes seen for the first time, busiest "
        "sessions. Accepts the same selection flags as `pgwarden logs`.",
    )
    add_source_arguments(parser)
    add_store_arguments(parser)
    add_format_argument(parser, FORMATS, "text")
    parser.add_argument(
        "--output", "-o", metavar="FILE", help="write to FILE instead of standard output"
    )
    parser.add_argument(
        "--top", type=_positive, default=10, metavar="N", help="rows in top-N tables (10)"
    )
    parser.add_argument(
        "--no-first-seen",
        dest="first_seen",
        action="store_false",
        help="skip the pass over events before the window that finds new query shapes",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from proxy.review.report import ReportBuilder
    from proxy.review.source import describe, open_events, window_filter

    if args.output:
        check_writable(Path(args.output))  # before minutes of reading, not after
    selection = window_filter(args)
    known: set[str] | None = set() if args.first_seen else None
    builder = ReportBuilder(top=args.top, known_fingerprints=known)
    builder.add_all(open_events(args, selection, history=known, progress_desc="report"))
    report = builder.build(
        since=selection.since, until=selection.until, filters=describe(selection)
    )
    text = render(report, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"report written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def check_writable(path: Path) -> None:
    """Raise PgWardenError unless ``path`` can be written (a new file is removed again)."""
    from proxy.errors import PgWardenError

    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise PgWardenError(
            f"cannot write the report to {str(path)!r}: {exc.strerror or exc}"
        ) from None
    if not existed:
        path.unlink(missing_ok=True)


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        import orjson

        return orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "markdown":
        from proxy.review.render_markdown import render_markdown

        return render_markdown(report)
    if fmt == "html":
        from proxy.review.render_html import render_html

        return render_html(report)
    from proxy.review.render_text import render_text

    return render_text(report)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
