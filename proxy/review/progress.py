"""A progress bar on stderr for review commands that read many records (tqdm).

Shown only when stderr is a terminal (and, for commands that stream results to stdout, when
stdout is not one, so the bar never tears the output); silent otherwise. It appears only after
a second, so quick runs print nothing extra.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import orjson

from proxy.audit.jsonl import open_binary, read_head
from proxy.audit.reader import files_for

T = TypeVar("T")
DELAY = 1.0  # seconds before a bar appears: quick runs stay quiet


def wanted(*, streams_to_stdout: bool = False) -> bool:
    if not sys.stderr.isatty():
        return False
    return not (streams_to_stdout and sys.stdout.isatty())


def progress(
    items: Iterable[T], *, total: int | None, desc: str, streams_to_stdout: bool = False
) -> Iterator[T]:
    """``items`` unchanged, counted on a bar with records/s (and an ETA when ``total`` is
    known)."""
    if not wanted(streams_to_stdout=streams_to_stdout):
        yield from items
        return
    from tqdm import tqdm

    with tqdm(
        items,
        total=total,
        desc=desc,
        unit=" records",
        unit_scale=True,
        file=sys.stderr,
        delay=DELAY,
        mininterval=0.25,
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        yield from bar


def estimate_records(directory: Path, since: datetime | None) -> int | None:
    """About how many records reading ``directory`` from ``since`` goes through: from the
    first seq of the first file read to the newest seq in ``audit.head``, summed over the
    trails of a set (workers)."""
    from proxy.audit.trailset import trail_dirs

    counts = [_estimate_one(trail, since) for trail in trail_dirs(directory)]
    known = [c for c in counts if c is not None]
    return sum(known) if known else None


def _estimate_one(directory: Path, since: datetime | None) -> int | None:
    head = read_head(directory)
    files = files_for(directory, since)
    if head is None or not files:
        return None
    first = files[0].first_seq
    if first is None:  # only the current file: its first line says where it starts
        try:
            with open_binary(files[0].path) as handle:
                seq = orjson.loads(handle.readline()).get("seq")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(seq, int):
            return None
        first = seq
    return max(head.seq - first + 1, 0)
