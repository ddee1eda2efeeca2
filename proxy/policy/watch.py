"""Notice when policy files change, so the server can reload them (polling, no dependency).

A file's signature is (inode, size, mtime_ns): editors that save by rename change the inode,
in-place writes change size or mtime. A directory's signature is its sorted list of policy
files with their signatures, so a rule file added to an included directory counts as a change.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

Signature = tuple[object, ...]

_SUFFIXES = (".yaml", ".yml")


def _stat(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError as exc:
        return ("missing", exc.errno)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def signature(path: Path) -> Signature:
    if path.is_dir():
        try:
            entries = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES)
        except OSError as exc:
            return ("unreadable", exc.errno)
        return tuple((p.name, *_stat(p)) for p in entries)
    return _stat(path)


class PolicyWatcher:
    """``changed()`` is true once for each change of the watched files since the last call."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self._last = self._snapshot()

    def _snapshot(self) -> tuple[Signature, ...]:
        return tuple(signature(p) for p in self.paths)

    def changed(self) -> bool:
        now = self._snapshot()
        if now == self._last:
            return False
        self._last = now
        return True
