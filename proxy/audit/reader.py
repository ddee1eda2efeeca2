"""Streaming readers of an audit directory: constant memory, rotated and gzipped files included.

* :func:`iter_lines` -- every raw line with its file and line number (for ``verify``);
* :func:`iter_raw` / :func:`iter_events` -- complete records in trail order, torn lines skipped;
* :func:`follow` -- the records appended from now on, across rotations (``logs --follow``).
"""

from __future__ import annotations

import heapq
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

from proxy.audit.jsonl import CURRENT, TrailFile, iter_raw_lines, trail_files
from proxy.audit.trailset import trail_dirs

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


def files_for(directory: str | Path, since: datetime | None) -> list[TrailFile]:
    """The trail files that can hold events at or after ``since``, oldest first."""
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
    upto: Mapping[Path, int] | None = None,
) -> Iterator[bytes]:
    """Complete JSONL records (newline included) in trail order, skipping files that cannot
    hold events at or after ``since``. ``until`` is left to the caller's filter: a long
    statement's event (``ts`` = its start) is written after later-starting ones.

    If the writer rotates while we read, the newly rotated file is read too and records
    already seen (by ``seq``) are not repeated.

    A directory of several workers' trails (:mod:`proxy.audit.trailset`) is read as one:
    each trail in its own order, the trails merged by ``ts``. ``upto`` (trail directory ->
    seq) stops each trail it names after that seq (``logs --follow`` then follows from there).
    """
    del until  # accepted for symmetry; see docstring
    trails = trail_dirs(directory)
    reads = [_iter_one(d, since) for d in trails]
    if upto is not None:
        reads = [_upto(read, upto.get(d)) for read, d in zip(reads, trails, strict=True)]
    if len(reads) == 1:
        return reads[0]
    return heapq.merge(*reads, key=_ts_of)


def _upto(read: Iterator[bytes], last: int | None) -> Iterator[bytes]:
    if last is None:
        yield from read
        return
    for raw in read:
        seq = _seq_of(raw)
        if seq is not None and seq > last:
            return
        yield raw


_TS = re.compile(rb'"ts":\s*"([^"]*)"')


def _ts_of(raw: bytes) -> bytes:
    # The trail's ts format orders as text (proxy.audit.timeparse.iso_z).
    found = _TS.search(raw)
    return found.group(1) if found else b""


def _iter_one(directory: Path, since: datetime | None) -> Iterator[bytes]:
    last_seq = 0
    read: set[int] = set()
    dedupe = False  # only after a rotation raced with us: then parse to skip what we had
    while True:
        for trail_file in files_for(directory, since):
            first = trail_file.first_seq
            if first is not None:
                if first in read:
                    continue
                read.add(first)
            newest = b""
            for raw in iter_raw_lines(trail_file.path):
                if not raw.endswith(b"\n"):
                    continue
                if dedupe and (_seq_of(raw) or last_seq + 1) <= last_seq:
                    continue
                newest = raw
                yield raw
            last_seq = max(last_seq, _seq_of(newest) or 0)
        fresh = [f for f in files_for(directory, since) if f.first_seq not in read]
        if not any(f.first_seq is not None for f in fresh):
            return  # no rotation happened while we read the current file
        dedupe = True


def _seq_of(raw: bytes) -> int | None:
    event = _parse(raw) if raw else None
    seq = event.get("seq") if event is not None else None
    return seq if isinstance(seq, int) else None


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


def _records_after(directory: Path, after: int, before: int | None) -> Iterator[dict[str, Any]]:
    """Intact records with after < seq < before from the rotated files (catching up)."""
    files = trail_files(directory, include_current=False)
    for index, trail_file in enumerate(files):
        following = files[index + 1].first_seq if index + 1 < len(files) else None
        if following is not None and following <= after + 1:
            continue  # the whole file is before what we need
        if (
            before is not None
            and trail_file.first_seq is not None
            and trail_file.first_seq >= before
        ):
            break
        for raw in iter_raw_lines(trail_file.path):
            event = _parse(raw)
            if event is None:
                continue
            seq = event.get("seq")
            if isinstance(seq, int) and seq > after and (before is None or seq < before):
                yield event


def _parse(raw: bytes) -> dict[str, Any] | None:
    if not raw.endswith(b"\n"):
        return None
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def follow(
    directory: str | Path,
    *,
    after_seq: int | None = None,
    poll: float = 0.25,
    stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Events as they are appended, across rotations, until ``stop()`` is true.

    Starts at the end of the current file, or right after ``after_seq`` when given (reading
    rotated files as needed). Rotation is noticed by the inode of ``audit.jsonl`` changing
    (the old file is read to its end first); truncation by the file shrinking. A seq gap
    (several rotations between two polls) is filled from the rotated files.
    """
    base = Path(directory)
    path = base / CURRENT
    last = after_seq
    handle: IO[bytes] | None = None
    inode = -1
    pending = b""
    first_open = True

    def emit(event: dict[str, Any]) -> Iterator[dict[str, Any]]:
        nonlocal last
        seq = event.get("seq")
        if not isinstance(seq, int):
            yield event
            return
        if last is not None and seq <= last:
            return
        if last is not None and seq > last + 1:
            yield from _records_after(base, last, seq)
        last = seq
        yield event

    try:
        while True:
            if handle is None:
                try:
                    handle = path.open("rb")
                except FileNotFoundError:
                    handle = None
                else:
                    inode = os.fstat(handle.fileno()).st_ino
                    pending = b""
                    if first_open and last is None:
                        handle.seek(0, os.SEEK_END)
                    elif first_open and last is not None:
                        head = _parse(handle.readline())
                        handle.seek(0)
                        if head is not None and head.get("seq", 0) > last + 1:
                            for caught_up in _records_after(base, last, head["seq"]):
                                yield from emit(caught_up)
                    first_open = False
            data = handle.read() if handle is not None else b""
            if not data and handle is not None:
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    stat = None
                if stat is None or stat.st_ino != inode:
                    data = handle.read()  # anything written before the rename
                    handle.close()
                    handle = None  # the new audit.jsonl is read from its start
                    if not data:
                        continue
                elif stat.st_size < handle.tell():
                    handle.seek(0)  # truncated in place
                    pending = b""
                    continue
            if data:
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    parsed = _parse(line + b"\n")
                    if parsed is not None:
                        yield from emit(parsed)
                if handle is None:
                    pending = b""
                continue
            if stop is not None and stop():
                return
            time.sleep(poll)
    finally:
        if handle is not None:
            handle.close()


def follow_set(
    after: Mapping[Path, int],
    *,
    poll: float = 0.25,
) -> Iterator[dict[str, Any]]:
    """:func:`follow` for several trails at once (one per worker): each trail's events in
    its own order, after its seq in ``after``, as they arrive."""
    import queue
    import threading

    arrived: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10000)
    done = threading.Event()

    def pump(directory: Path, seq: int) -> None:
        for event in follow(directory, after_seq=seq, poll=poll, stop=done.is_set):
            while not done.is_set():
                try:
                    arrived.put(event, timeout=poll)
                    break
                except queue.Full:
                    continue

    threads = [
        threading.Thread(target=pump, args=(d, seq), daemon=True, name=f"follow {d}")
        for d, seq in after.items()
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            try:
                yield arrived.get(timeout=poll)
            except queue.Empty:
                if not any(t.is_alive() for t in threads):
                    return
    finally:
        done.set()
