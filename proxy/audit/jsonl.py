"""The audit directory's layout: which files hold the trail, in which order, and how to open them.

``audit.jsonl`` is the file being written. When it rotates it is renamed to
``audit-<UTC yyyymmddThhmmss>-<first seq, 12 digits>.jsonl`` (optionally gzipped afterwards to
``….jsonl.gz``). The time in the name is the moment of rotation, so every event in a rotated
file has a ``ts`` at or before it; the first seq orders the files and tells verification
where each file's chain must begin.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, cast

import orjson

CURRENT = "audit.jsonl"
HEAD = "audit.head"
_ROTATED = re.compile(r"audit-(\d{8}T\d{6})-(\d+)\.jsonl(\.gz)?")


@dataclass(frozen=True, slots=True)
class TrailFile:
    """One file of the trail. ``first_seq`` and ``rotated_at`` are None for the current file."""

    path: Path
    first_seq: int | None
    rotated_at: datetime | None

    @property
    def is_current(self) -> bool:
        return self.first_seq is None

    @property
    def gzipped(self) -> bool:
        return self.path.name.endswith(".gz")


def rotated_name(rotated_at: datetime, first_seq: int) -> str:
    return f"audit-{rotated_at.astimezone(UTC):%Y%m%dT%H%M%S}-{first_seq:012d}.jsonl"


def parse_rotated_name(name: str) -> tuple[datetime, int, bool] | None:
    """(rotation time, first seq, gzipped) for a rotated file name, else None."""
    match = _ROTATED.fullmatch(name)
    if not match:
        return None
    when = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return when, int(match.group(2)), bool(match.group(3))


def trail_files(directory: str | Path, *, include_current: bool = True) -> list[TrailFile]:
    """The trail's files oldest first: rotated ones by first seq, then ``audit.jsonl``.

    While a rotated file is being gzipped both the plain and the ``.gz`` file exist; the
    plain one is listed (it is complete; the ``.gz`` may not be yet).
    """
    base = Path(directory)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    rotated: dict[int, TrailFile] = {}
    for name in names:
        parsed = parse_rotated_name(name)
        if parsed is None:
            continue
        when, first, gz = parsed
        if first not in rotated or not gz:
            rotated[first] = TrailFile(base / name, first, when)
    files = [rotated[first] for first in sorted(rotated)]
    if include_current and (base / CURRENT).exists():
        files.append(TrailFile(base / CURRENT, None, None))
    return files


@dataclass(frozen=True, slots=True)
class Head:
    """``audit.head``: the newest record the writer reported written. ``mac`` is set when
    the trail is HMAC-keyed (see :func:`proxy.audit.chain.head_mac`)."""

    seq: int
    hash: str
    mac: str | None = None


def read_head(directory: str | Path) -> Head | None:
    """The contents of ``audit.head``, or None when it is missing or unreadable."""
    try:
        raw = (Path(directory) / HEAD).read_bytes()
    except OSError:
        return None
    try:
        head = orjson.loads(raw)
        mac = head.get("mac")
        return Head(int(head["seq"]), str(head["hash"]), str(mac) if mac is not None else None)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def head_exists(directory: str | Path) -> bool:
    return (Path(directory) / HEAD).exists()


def open_binary(path: Path) -> IO[bytes]:
    """Open a trail file for reading bytes, gunzipping ``.gz`` files transparently."""
    if path.name.endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb", buffering=1 << 20)


def iter_raw_lines(path: Path) -> Iterator[bytes]:
    """Every line of ``path`` as written, the newline included (a torn last line has none)."""
    try:
        handle = open_binary(path)
    except FileNotFoundError:
        # Gzip finished between listing and opening: read the compressed twin instead.
        twin = path.with_name(path.name + ".gz")
        if path.name.endswith(".gz") or not twin.exists():
            return
        handle = open_binary(twin)
    with handle:
        yield from handle


def last_line(path: Path, limit: int = 1 << 20) -> bytes:
    """The last line of a plain file (with its newline if it has one), read from the end."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return b""
        chunk = 4096
        while True:
            start = max(0, size - chunk)
            handle.seek(start)
            data = handle.read(size - start)
            cut = data.rfind(b"\n", 0, len(data) - 1)
            if cut >= 0 or start == 0 or chunk >= limit:
                return data[cut + 1 :]
            chunk *= 4
