"""The identity of one audit trail: generated once, kept in the audit directory.

``proxy_id`` names a proxy for people (it defaults to the host name, so two proxies on one
host, a blue/green restart or two containers sharing a hostname all have the same one). The
central store must never merge two trails, so it keys events by a trail identity instead:
a random id written to ``<audit.dir>/audit.id`` the first time the directory is used and read
back on every later start, so a restart continues the same trail and a new directory is a
new trail.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from proxy.errors import AuditError

ID_FILE = "audit.id"
_VALID = re.compile(r"[0-9a-f]{32}")


def read_trail_id(directory: str | Path) -> str | None:
    """The trail id kept in ``directory``, or None when it has none yet."""
    path = Path(directory) / ID_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"cannot read the trail id in {str(path)!r}: {exc}") from None
    if not _VALID.fullmatch(text):
        raise AuditError(
            f"{str(path)!r} does not hold a trail id (32 hex digits); it identifies this trail "
            "in the central store, restore it from a backup or remove it to start a new trail"
        )
    return text


def load_or_create(directory: str | Path) -> str:
    """The trail id of ``directory``, created (atomically, durably) on first use."""
    found = read_trail_id(directory)
    if found is not None:
        return found
    path = Path(directory) / ID_FILE
    new_id = uuid.uuid4().hex
    tmp = path.with_name(f"{ID_FILE}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, f"{new_id}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails when another process created the file first: both then use its id.
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise AuditError(f"cannot write the trail id {str(path)!r}: {exc.strerror}") from None
    found = read_trail_id(directory)
    assert found is not None
    return found
