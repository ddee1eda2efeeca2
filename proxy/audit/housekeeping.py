"""Slow file chores of the audit writer, run in its worker threads: fsync, close, gzip."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

from proxy.audit.jsonl import parse_rotated_name

log = logging.getLogger("pgwarden.audit")


def fsync_quietly(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        log.error("fsync of the audit file failed: %s", exc)


def retire(fd: int, sync: bool, directory: str | None) -> None:
    """fsync (optionally) and close a rotated file; fsync the directory to keep the rename."""
    try:
        if sync:
            fsync_quietly(fd)
    finally:
        os.close(fd)
    if directory is not None:
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass  # not every filesystem lets a directory be fsynced


def compress(path: Path) -> None:
    """gzip a rotated file: write ``.gz.tmp``, rename to ``.gz``, then remove the plain file."""
    if parse_rotated_name(path.name) is None or not path.exists():
        return
    final = path.with_name(path.name + ".gz")
    tmp = path.with_name(path.name + ".gz.tmp")
    try:
        with path.open("rb") as src, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, mtime=0) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
        path.unlink()
    except OSError as exc:
        log.error("cannot gzip rotated audit file %s: %s", path, exc)
        tmp.unlink(missing_ok=True)
