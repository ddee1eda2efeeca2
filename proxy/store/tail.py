"""Follow a proxy's JSONL audit trail by ``seq``: the shipper's only source of events.

The trail files are the durable record, so the shipper never keeps its own copy of the
stream: it remembers the last ``seq`` the store holds and reads the files from there. Two
modes keep that cheap:

* *positioned*: the current ``audit.jsonl`` is open at the byte after the last complete line
  read; new lines are read from there (a torn last line is left for the next read);
* *scan*: after a start, a rotation or any surprise (a gap in ``seq``, a file that vanished
  while being gzipped), the rotated files are listed, the one holding ``last_seq + 1`` is
  found from the ``<first seq>`` in its name, and reading resumes there.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from proxy.audit.jsonl import CURRENT, open_binary, trail_files


@dataclass(frozen=True, slots=True)
class TrailLine:
    event: dict[str, Any]
    raw: str  # the JSON text as written, reused for the store's jsonb column


class TrailGap(Exception):
    """Events between ``expected`` and ``found`` are missing from the files."""

    def __init__(self, expected: int, found: int) -> None:
        super().__init__(f"audit trail gap: expected seq {expected}, found {found}")
        self.expected = expected
        self.found = found


class TrailTail:
    """Reads events with ``seq > last_seq`` from an audit directory, in order."""

    def __init__(self, directory: str | Path, last_seq: int = 0) -> None:
        self.directory = Path(directory)
        self.last_seq = last_seq
        self._scan: Iterator[bytes] | None = None
        self._current: IO[bytes] | None = None
        self._current_ino: int | None = None
        self._pending = b""  # a torn (not yet complete) last line of the current file

    def close(self) -> None:
        if isinstance(self._scan, Generator):
            self._scan.close()
        self._scan = None
        if self._current is not None:
            self._current.close()
        self._current = None
        self._current_ino = None
        self._pending = b""

    def reset(self, last_seq: int) -> None:
        """Restart from ``last_seq`` (e.g. after the store told us what it holds)."""
        self.close()
        self.last_seq = last_seq

    def skip_to(self, seq: int) -> None:
        """Accept a gap: continue as if everything before ``seq`` had been read."""
        self.reset(seq - 1)

    def read(self, limit: int) -> list[TrailLine]:
        """Up to ``limit`` events after :attr:`last_seq`, advancing it.

        Raises :class:`TrailGap` when the files skip a seq even after a fresh scan (a
        deleted or truncated file); the caller decides whether to jump over it.
        """
        out: list[TrailLine] = []
        for attempt in range(2):
            try:
                self._read_into(out, limit)
                return out
            except TrailGap:
                self.close()
                if out or attempt:
                    if out:
                        return out
                    raise
                # Maybe a rotation happened between listing and opening: scan once more.
            except (OSError, EOFError):
                # A file renamed or gzipped under our feet: keep what we have, rescan later.
                self.close()
                return out
        return out

    def _read_into(self, out: list[TrailLine], limit: int) -> None:
        if self._scan is None and self._current is None:
            self._scan = self._scan_lines()
        if self._scan is not None:
            for line in self._scan:
                self._accept(line, out)
                if len(out) >= limit:
                    return
            self._scan = None
            self._open_current()
        while self._current is not None and len(out) < limit:
            if not self._read_current(out, limit):
                return  # limit reached
            if self._still_current():
                return  # at the end of the live file
            # Rotated: the writer no longer appends to the old inode; drain it, then switch.
            if not self._read_current(out, limit):
                return
            self._current.close()
            self._current = None
            self._open_current()

    def _scan_lines(self) -> Iterator[bytes]:
        wanted = self.last_seq + 1
        files = trail_files(self.directory, include_current=False)
        start = 0
        for index, trail_file in enumerate(files):
            if trail_file.first_seq is not None and trail_file.first_seq <= wanted:
                start = index
        for trail_file in files[start:]:
            with open_binary(trail_file.path) as handle:
                for line in handle:
                    if line.endswith(b"\n"):
                        yield line

    def _open_current(self) -> None:
        try:
            handle = (self.directory / CURRENT).open("rb")
        except FileNotFoundError:
            return
        self._current = handle
        self._current_ino = os.fstat(handle.fileno()).st_ino
        self._pending = b""

    def _still_current(self) -> bool:
        try:
            return os.stat(self.directory / CURRENT).st_ino == self._current_ino
        except FileNotFoundError:
            return False

    def _read_current(self, out: list[TrailLine], limit: int) -> bool:
        """Read complete lines; True when the end of the file was reached."""
        assert self._current is not None
        while len(out) < limit:
            chunk = self._current.readline()
            if not chunk:
                return True
            if not chunk.endswith(b"\n"):
                self._pending += chunk
                return True
            line, self._pending = self._pending + chunk, b""
            self._accept(line, out)
        return False

    def _accept(self, line: bytes, out: list[TrailLine]) -> None:
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            return
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return  # a torn line at a crash point: verify reports it, there is nothing to ship
        if not isinstance(event, dict) or not isinstance(event.get("seq"), int):
            return
        seq = event["seq"]
        if seq <= self.last_seq:
            return
        if seq != self.last_seq + 1:
            raise TrailGap(self.last_seq + 1, seq)
        out.append(TrailLine(event, raw.decode("utf-8", "replace")))
        self.last_seq = seq
