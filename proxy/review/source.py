"""Where review commands get their events: the audit directory today, the central store later.

``report`` and ``policy replay`` accept the same selection flags as ``logs``
(:func:`proxy.audit.filters.add_filter_arguments`) plus the directory, given as a positional
argument or ``--audit-dir`` (falling back to ``PGWARDEN_AUDIT_DIR`` and the config default).
Everything downstream consumes an ``Iterable[dict]``, so a store-backed source only has to
replace :func:`select_events`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy import config
from proxy.audit.filters import EventFilter, add_filter_arguments
from proxy.audit.jsonl import trail_files
from proxy.audit.reader import iter_events
from proxy.errors import PgWardenError
from proxy.review.report import seen_fingerprints, split_history

DEFAULT_WINDOW = timedelta(days=7)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory", nargs="?", metavar="DIR", help="audit directory (same as --audit-dir)"
    )
    parser.add_argument(
        "--audit-dir",
        metavar="DIR",
        help="audit directory (default: $PGWARDEN_AUDIT_DIR, else the config default ./audit)",
    )
    add_filter_arguments(parser)


def audit_dir(args: argparse.Namespace) -> Path:
    """The directory to read; :class:`PgWardenError` (exit 2) when it holds no trail."""
    if args.directory and args.audit_dir and args.directory != args.audit_dir:
        raise PgWardenError("give the audit directory once: DIR or --audit-dir, not both")
    key = next(k for k in config.SCHEMA if k.path == "audit.dir")
    chosen = args.directory or args.audit_dir or os.environ.get(key.env_name) or key.default
    path = Path(chosen)
    if not path.is_dir():
        raise PgWardenError(f"audit directory not found: {path}")
    if not trail_files(path):
        raise PgWardenError(f"no audit trail in {path} (expected audit.jsonl or rotated files)")
    return path


def window_filter(args: argparse.Namespace, now: datetime | None = None) -> EventFilter:
    """The selection from the flags, with ``--since`` defaulting to :data:`DEFAULT_WINDOW` ago."""
    selection = EventFilter.from_args(args)
    if selection.since is None:
        selection = dataclasses.replace(
            selection, since=(now or datetime.now(UTC)) - DEFAULT_WINDOW
        )
    if (
        selection.until is not None
        and selection.since is not None
        and selection.until < selection.since
    ):
        raise PgWardenError("--until is earlier than --since")
    return selection


def describe(selection: EventFilter) -> tuple[str, ...]:
    """The non-time conditions as flags, for report headers (``--user alice``)."""
    out: list[str] = []
    for f in dataclasses.fields(EventFilter):
        if not f.init or f.name in ("since", "until"):
            continue
        value = getattr(selection, f.name)
        flag = "--" + {"min_duration_ms": "min-duration", "types": "type"}.get(f.name, f.name)
        if value is True:
            out.append(flag)
        elif isinstance(value, tuple):
            out.extend(f"{flag} {v}" for v in value)
        elif value not in (None, False):
            out.append(f"{flag} {value}")
    return tuple(out)


def select_events(
    directory: Path, selection: EventFilter, *, history: set[str] | None = None
) -> Iterator[dict[str, Any]]:
    """The events of the trail that the selection keeps, in trail order.

    With ``history``, the trail is read from its very beginning and the fingerprints of query
    events before ``selection.since`` are added to that set (all users, all databases: a shape
    is "new" when nobody ran it before). Without it, files wholly before the window are skipped.
    """
    matches = selection.matches
    if history is not None and selection.since is not None:
        events = split_history(iter_events(directory), selection.since, history)
    else:
        events = iter_events(directory, since=selection.since, until=selection.until)
    for event in events:
        if matches(event):
            yield event


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="DSN",
        help="read events from the central audit store (PostgreSQL) instead of a directory",
    )
    parser.add_argument(
        "--store-schema",
        default="public",
        metavar="NAME",
        help="schema of the store tables (default public)",
    )


def open_events(
    args: argparse.Namespace, selection: EventFilter, *, history: set[str] | None = None
) -> Iterator[dict[str, Any]]:
    """The selected events from the directory or, with ``--store``, from the central store.

    ``history`` as in :func:`select_events`; from the store it is one extra query for the query
    events before the window (the store has no cheaper "distinct fingerprints" view yet).
    """
    dsn = getattr(args, "store", None)
    if not dsn:
        return select_events(audit_dir(args), selection, history=history)
    if args.directory or args.audit_dir:
        raise PgWardenError("read events from a directory or --store, not both")
    from proxy.store.query import iter_store_events

    schema = args.store_schema
    if history is not None and selection.since is not None:
        earlier = EventFilter(types=("query",), until=selection.since)
        history.update(
            seen_fingerprints(iter_store_events(dsn, earlier, schema=schema), selection.since)
        )
    return iter_store_events(dsn, selection, schema=schema)
