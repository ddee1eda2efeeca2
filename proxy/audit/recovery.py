"""Where the chain stands when a trail is reopened: the last intact record on disk.

A crash (or a full disk) can leave the current file ending in a torn line: bytes without a
trailing newline, or not JSON. Such a line is never appended to; the writer rotates the file
as it is and continues the chain from the last intact record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.chain import GENESIS
from proxy.audit.jsonl import CURRENT, iter_raw_lines, trail_files


@dataclass(frozen=True, slots=True)
class ChainState:
    last_seq: int = 0
    last_hash: str = GENESIS


@dataclass(frozen=True, slots=True)
class CurrentFile:
    size: int
    first_record: dict[str, Any] | None  # None when empty or unreadable
    last_record: dict[str, Any] | None  # the last intact record
    torn: bool  # ends with a torn line


def _record(raw: bytes) -> dict[str, Any] | None:
    if not raw.endswith(b"\n"):
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("seq"), int) and "hash" in value:
        return value
    return None


def _tail_records(path: Path, size: int) -> tuple[dict[str, Any] | None, bool]:
    """(last intact record, whether the file ends torn), reading backwards from the end."""
    chunk = 1 << 16
    with path.open("rb") as handle:
        while True:
            start = max(0, size - chunk)
            handle.seek(start)
            data = handle.read(size - start)
            lines = data.split(b"\n")
            # lines[-1] is what follows the last newline: empty unless the file ends torn.
            torn = lines[-1] != b""
            complete = lines[:-1] if start == 0 else lines[1:-1]
            for index in range(len(complete) - 1, -1, -1):
                record = _record(complete[index] + b"\n")
                if record is not None:
                    return record, torn or index != len(complete) - 1
                torn = True  # an unreadable complete line at the end counts as torn
            if start == 0:
                return None, torn
            chunk *= 8


def inspect_current(directory: Path) -> CurrentFile | None:
    path = directory / CURRENT
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return CurrentFile(0, None, None, False)
    with path.open("rb") as handle:
        first = _record(handle.readline())
    last, torn = _tail_records(path, size)
    return CurrentFile(size, first, last, torn)


def last_rotated_record(directory: Path) -> dict[str, Any] | None:
    """The last intact record of the newest rotated file that has one."""
    for trail_file in reversed(trail_files(directory, include_current=False)):
        if trail_file.gzipped:
            last = None
            for raw in iter_raw_lines(trail_file.path):
                last = _record(raw) or last
        else:
            size = os.stat(trail_file.path).st_size
            last, _ = _tail_records(trail_file.path, size) if size else (None, False)
        if last is not None:
            return last
    return None


def state_of(record: dict[str, Any] | None) -> ChainState:
    if record is None:
        return ChainState()
    return ChainState(int(record["seq"]), str(record["hash"]))


def trail_end(directory: Path) -> int:
    """The seq of the newest intact record on disk right now (0 for an empty trail)."""
    current = inspect_current(directory)
    record = current.last_record if current is not None else None
    record = record or last_rotated_record(directory)
    return int(record["seq"]) if record else 0
