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


FROM_CONFIG = "<from the config>"  # `--store` without a DSN: the config's store sink


def add_location_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the trail is: ``DIR`` or ``--audit-dir``, else ``-c/--config``'s ``audit.dir``."""
    parser.add_argument(
        "directory", nargs="?", metavar="DIR", help="audit directory (same as --audit-dir)"
    )
    parser.add_argument(
        "--audit-dir",
        metavar="DIR",
        help="audit directory (default: audit.dir of the config and $PGWARDEN_AUDIT_DIR, "
        "else ./audit)",
    )
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="pgwarden configuration whose audit.dir, audit.hmac_key_file and store sink are "
        "used (default: $PGWARDEN_CONFIG)",
    )


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    add_location_arguments(parser)
    add_filter_arguments(parser)


def review_config(args: argparse.Namespace) -> config.Config:
    """The configuration the review command was pointed at (file < environment), loaded once."""
    loaded = getattr(args, "_review_config", None)
    if isinstance(loaded, config.Config):
        return loaded
    loaded = config.load(None, config_file=getattr(args, "config", None))
    args._review_config = loaded
    return loaded


def audit_dir(args: argparse.Namespace, *, require_trail: bool = True) -> Path:
    """The directory to read; :class:`PgWardenError` (exit 2) when it holds no trail."""
    if args.directory and args.audit_dir and args.directory != args.audit_dir:
        raise PgWardenError("give the audit directory once: DIR or --audit-dir, not both")
    chosen = args.directory or args.audit_dir or review_config(args)["audit.dir"]
    path = Path(chosen)
    if not path.is_dir():
        raise PgWardenError(f"no audit directory at {str(path)!r}")
    if require_trail and not trail_files(path):
        raise PgWardenError(f"no audit trail in {path} (expected audit.jsonl or rotated files)")
    return path


def hmac_key_file(args: argparse.Namespace) -> str:
    """``--hmac-key-file``, else the config's ``audit.hmac_key_file`` ("" for none)."""
    return str(getattr(args, "hmac_key_file", None) or review_config(args)["audit.hmac_key_file"])


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
    directory: Path,
    selection: EventFilter,
    *,
    history: set[str] | None = None,
    progress_desc: str = "",
    streams_to_stdout: bool = False,
) -> Iterator[dict[str, Any]]:
    """The events of the trail that the selection keeps, in trail order.

    With ``history``, the trail is read from its very beginning and the fingerprints of query
    events before ``selection.since`` are added to that set (all users, all databases: a shape
    is "new" when nobody ran it before). Without it, files wholly before the window are skipped.
    With ``progress_desc``, a terminal shows a bar of the records read (:mod:`.progress`).
    """
    matches = selection.matches
    whole = history is not None and selection.since is not None
    read = iter_events(directory, since=None if whole else selection.since, until=selection.until)
    if progress_desc:
        from proxy.review.progress import estimate_records, progress

        total = estimate_records(directory, None if whole else selection.since)
        read = progress(read, total=total, desc=progress_desc, streams_to_stdout=streams_to_stdout)
    if whole:
        assert history is not None and selection.since is not None
        events: Iterator[dict[str, Any]] = split_history(read, selection.since, history)
    else:
        events = read
    for event in events:
        if matches(event):
            yield event


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        nargs="?",
        const=FROM_CONFIG,
        metavar="DSN",
        help="read events from the central audit store (PostgreSQL) instead of a directory; "
        "without a DSN, the store sink of the config",
    )
    parser.add_argument(
        "--store-schema",
        metavar="NAME",
        help="schema of the store tables (default: the sink's, else public)",
    )


def store_target(args: argparse.Namespace) -> tuple[str, str] | None:
    """(dsn, schema) of the store to read, or None to read the directory."""
    dsn = getattr(args, "store", None)
    if not dsn:
        return None
    if args.directory or args.audit_dir:
        raise PgWardenError("read events from a directory or --store, not both")
    schema = "public"
    if dsn == FROM_CONFIG:
        sinks = review_config(args)["audit.sinks"]
        if not sinks:
            raise PgWardenError("--store without a DSN needs a config with an audit.sinks store")
        dsn, schema = str(sinks[0]["dsn"]), str(sinks[0].get("schema", "public"))
    return dsn, args.store_schema or schema


def open_events(
    args: argparse.Namespace,
    selection: EventFilter,
    *,
    history: set[str] | None = None,
    progress_desc: str = "",
    streams_to_stdout: bool = False,
) -> Iterator[dict[str, Any]]:
    """The selected events from the directory or, with ``--store``, from the central store.

    ``history`` as in :func:`select_events`; from the store it is one extra query for the query
    events before the window (the store has no cheaper "distinct fingerprints" view yet).
    """
    target = store_target(args)
    if target is None:
        return select_events(
            audit_dir(args),
            selection,
            history=history,
            progress_desc=progress_desc,
            streams_to_stdout=streams_to_stdout,
        )
    from proxy.store.query import iter_store_events

    dsn, schema = target
    if history is not None and selection.since is not None:
        earlier = EventFilter(types=("query",), until=selection.since)
        history.update(
            seen_fingerprints(iter_store_events(dsn, earlier, schema=schema), selection.since)
        )
    events = iter_store_events(dsn, selection, schema=schema)
    if progress_desc:
        from proxy.review.progress import progress

        events = progress(
            events, total=None, desc=progress_desc, streams_to_stdout=streams_to_stdout
        )
    return events
