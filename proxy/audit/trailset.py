"""Where each worker's audit trail lives (``workers``), and how readers find the whole set.

Worker 0 writes ``audit.dir`` itself, exactly as a single process does, so ``workers: 1`` is
the layout every existing installation has and going from 1 to N (or back) needs no
migration: the trail there continues. Worker k > 0 writes ``audit.dir/worker-k``, a
directory of its own with its own ``audit.id`` (trail identity), hash chain, rotation and
retention. A reader given ``audit.dir`` reads the directory and every ``worker-k`` below it
as one trail set.
"""

from __future__ import annotations

import re
from pathlib import Path

from proxy.audit.jsonl import trail_files
from proxy.audit.trailid import ID_FILE

_WORKER_DIR = re.compile(r"worker-([1-9][0-9]*)")


def worker_audit_dir(base: str | Path, index: int) -> Path:
    """The audit directory of worker ``index`` (0 is ``base`` itself)."""
    return Path(base) if index == 0 else Path(base) / f"worker-{index}"


def worker_dirs(base: str | Path) -> list[Path]:
    """The ``worker-k`` directories below ``base`` that hold a trail, by k."""
    root = Path(base)
    found: list[tuple[int, Path]] = []
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        match = _WORKER_DIR.fullmatch(entry.name)
        if match and entry.is_dir() and _holds_trail(entry):
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def trail_dirs(base: str | Path) -> list[Path]:
    """Every trail of the set rooted at ``base``: ``base`` itself (when it holds one, or
    when nothing below it does) and then its workers' trails."""
    root = Path(base)
    workers = worker_dirs(root)
    if not workers or _holds_trail(root):
        return [root, *workers]
    return workers


def trail_label(base: str | Path, directory: Path) -> str:
    """How a reader names one trail of the set: ``worker 0`` for the base, ``worker k``."""
    if Path(directory) == Path(base):
        return "worker 0"
    match = _WORKER_DIR.fullmatch(directory.name)
    return f"worker {match.group(1)}" if match else str(directory)


def _holds_trail(directory: Path) -> bool:
    return (directory / ID_FILE).exists() or bool(trail_files(directory))


def trail_ids(base: str | Path) -> frozenset[str]:
    """The trail identities (``audit.id``) of every trail in the set rooted at ``base``."""
    from proxy.audit.trailid import read_trail_id
    from proxy.errors import AuditError

    found: set[str] = set()
    for directory in trail_dirs(base):
        try:
            trail_id = read_trail_id(directory)
        except AuditError:
            continue  # the trail's own writer reports a damaged id; here it is just not ours
        if trail_id is not None:
            found.add(trail_id)
    return frozenset(found)
