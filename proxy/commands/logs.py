"""``pgwarden logs``: search the local audit trail (table on a terminal, JSON lines in pipes)."""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from proxy.audit import render
from proxy.audit.filters import EventFilter
from proxy.audit.reader import follow, follow_set, iter_raw
from proxy.audit.recovery import trail_end
from proxy.audit.trailset import trail_dirs
from proxy.commands.options import add_format_argument
from proxy.errors import PgWardenError
from proxy.review.progress import estimate_records, progress, wanted
from proxy.review.source import add_source_arguments, add_store_arguments, audit_dir, store_target


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="search the audit trail (filters, table/json/csv output, --follow)",
        description="Show audit events from an audit directory, oldest first. All filters "
        "must hold; repeating a filter flag means 'any of these values'.",
    )
    add_format_argument(
        parser,
        ("table", "text", "json", "csv"),
        None,
        "output format (text is table; default: table on a terminal, json otherwise)",
    )
    add_store_arguments(parser)
    parser.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new events as they arrive"
    )
    parser.add_argument(
        "--limit", "-n", type=int, metavar="N", help="only the newest N matching events"
    )
    outcome = parser.add_mutually_exclusive_group()
    outcome.add_argument(
        "--rolled-back",
        action="store_const",
        const="rolled_back",
        dest="outcome",
        help="only statements whose effects were rolled back (a transaction event says so)",
    )
    outcome.add_argument(
        "--committed",
        action="store_const",
        const="committed",
        dest="outcome",
        help="only statements that succeeded and whose transaction was not rolled back",
    )
    add_source_arguments(parser)
    parser.set_defaults(func=run)


def _outcomes(directory: Path) -> dict[tuple[str, int], str]:
    """``(session_id, seq) -> outcome`` of every statement a transaction event names (by
    session: each worker's trail has its own seqs, a session lives in one of them)."""
    found: dict[tuple[str, int], str] = {}
    for raw in iter_raw(directory):
        if b'"transaction"' not in raw:
            continue
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("type") == "transaction":
            session = str(event.get("session_id"))
            for seq in event.get("statements") or ():
                # A savepoint's rollback is final even if the enclosing one commits.
                if isinstance(seq, int) and found.get((session, seq)) != "rolled_back":
                    found[(session, seq)] = str(event.get("outcome"))
    return found


def _by_outcome(
    matching: Iterator[tuple[bytes, dict[str, Any]]],
    outcomes: dict[tuple[str, int], str],
    wanted_outcome: str,
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    for raw, event in matching:
        if event.get("type") != "query":
            continue
        seq = event.get("seq")
        outcome = outcomes.get((str(event.get("session_id")), seq if isinstance(seq, int) else -1))
        if wanted_outcome == "rolled_back":
            if outcome == "rolled_back":
                yield raw, event
        elif event.get("sqlstate") is None and outcome in (None, "committed"):
            yield raw, event


def _matching(
    directory: Path, flt: EventFilter, upto: Mapping[Path, int] | None = None
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    loads = orjson.loads
    prefilter = flt.prefilter
    matches = flt.matches
    total = estimate_records(directory, flt.since) if wanted(streams_to_stdout=True) else None
    lines = iter_raw(directory, since=flt.since, until=flt.until, upto=upto)
    for raw in progress(lines, total=total, desc="logs", streams_to_stdout=True):
        if not prefilter(raw):
            continue
        try:
            event = loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and matches(event):
            yield raw, event


class _Output:
    """Writes events in one format to stdout."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.width = shutil.get_terminal_size((160, 24)).columns
        self.binary = getattr(sys.stdout, "buffer", None)
        self.csv = csv.writer(sys.stdout, lineterminator="\n") if fmt == "csv" else None
        self.write: Callable[[bytes, dict[str, Any]], None] = getattr(self, "_" + fmt)

    def start(self) -> None:
        if self.fmt == "table":
            print(render.table_header(self.width))
        elif self.csv is not None:
            self.csv.writerow(render.CSV_COLUMNS)

    def _json(self, raw: bytes, event: dict[str, Any]) -> None:
        if self.binary is not None:
            self.binary.write(raw)  # already one JSON object and a newline
        else:
            sys.stdout.write(raw.decode())

    def _table(self, raw: bytes, event: dict[str, Any]) -> None:
        sys.stdout.write(render.table_row(event, self.width) + "\n")

    def _csv(self, raw: bytes, event: dict[str, Any]) -> None:
        assert self.csv is not None
        self.csv.writerow(render.csv_record(event))

    def flush(self) -> None:
        sys.stdout.flush()
        if self.binary is not None:
            self.binary.flush()


def _from_store(dsn: str, schema: str, flt: EventFilter) -> Iterator[tuple[bytes, dict[str, Any]]]:
    from proxy.store.query import iter_store_events

    for event in iter_store_events(dsn, flt, schema=schema):
        yield orjson.dumps(event) + b"\n", event


def run(args: argparse.Namespace) -> int:
    flt = EventFilter.from_args(args)
    store = store_target(args)
    if store is not None and args.follow:
        raise PgWardenError("--follow reads the local trail; it cannot follow the store")
    if args.outcome and (store is not None or args.follow):
        raise PgWardenError("--rolled-back/--committed read the local trail (without --follow)")
    # An empty directory is fine to follow (the proxy has not written yet), not to search.
    directory = None if store else audit_dir(args, require_trail=not args.follow)
    fmt = {"text": "table", None: "table" if sys.stdout.isatty() else "json"}.get(
        args.format, args.format
    )
    out = _Output(fmt)
    try:
        out.start()
        if directory is None:
            assert store is not None
            _history(_from_store(*store, flt), out, args.limit)
        elif args.outcome:
            matching = _by_outcome(_matching(directory, flt), _outcomes(directory), args.outcome)
            _history(matching, out, args.limit)
        else:
            _from_trail(directory, flt, out, args.limit, args.follow)
        out.flush()
    except BrokenPipeError:
        # The reader (`| head`) went away: not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0


def _from_trail(
    directory: Path, flt: EventFilter, out: _Output, limit: int | None, keep_following: bool
) -> None:
    trails = trail_dirs(directory)
    if keep_following and len(trails) > 1:
        # Several workers' trails: the history up to each trail's end as it is now, then
        # each trail followed from exactly there (nothing twice, nothing missed).
        ends = {trail: trail_end(trail) for trail in trails}
        _history(_matching(directory, flt, ends), out, limit)
        _print_followed(follow_set(ends), flt, out)
        return
    end = trail_end(directory) if keep_following else 0
    printed = _history(_matching(directory, flt), out, limit)
    if not keep_following:
        return
    # Events written while the history was read are either printed already (seq <= printed)
    # or come after `end`; `follow` resumes after the larger of the two.
    _print_followed(follow(directory, after_seq=max(end, printed or 0)), flt, out)


def _print_followed(events: Iterator[dict[str, Any]], flt: EventFilter, out: _Output) -> None:
    for event in events:
        if flt.matches(event):
            raw = orjson.dumps(event) + b"\n" if out.fmt == "json" else b""
            out.write(raw, event)
            out.flush()


def _history(
    matching: Iterator[tuple[bytes, dict[str, Any]]], out: _Output, limit: int | None
) -> int | None:
    """Print the matching events already in the trail; return the seq of the last printed."""
    if limit is not None:
        matching = iter(deque(matching, maxlen=max(limit, 0)))
    last_seq: int | None = None
    for raw, event in matching:
        out.write(raw, event)
        last_seq = event.get("seq", last_seq)
    return last_seq
