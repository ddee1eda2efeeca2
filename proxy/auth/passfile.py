"""``auth.passfile``: passwords pgwarden logs in upstream with, in libpq's ``.pgpass`` format.

Used in ``auth.mode`` ``proxy`` and ``cert`` (pgwarden authenticated the client itself) when
the server does not hold the users file's secret for a role, or asks for md5 or a cleartext
password. Each line is ``hostname:port:database:username:password``; ``*`` matches anything,
``\\:`` and ``\\\\`` are a literal colon and backslash, ``#`` starts a comment; the first
matching line wins (libpq's rules). Like libpq, a file other users can read is refused.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from proxy.errors import ConfigError, SourceProblem

KEY = "auth.passfile"


@dataclass(frozen=True, slots=True)
class PassEntry:
    host: str
    port: str
    database: str
    user: str
    password: str

    def matches(self, host: str, port: str, database: str, user: str) -> bool:
        wanted = (host, port, database, user)
        fields = (self.host, self.port, self.database, self.user)
        return all(f == "*" or f == w for f, w in zip(fields, wanted, strict=True))


@dataclass(frozen=True, slots=True)
class Passfile:
    path: str
    entries: tuple[PassEntry, ...]

    def password(self, host: str, port: int, database: str, user: str) -> str | None:
        for entry in self.entries:
            if entry.matches(host, str(port), database, user):
                return entry.password
        return None


def _problem(path: str, line: int, message: str) -> ConfigError:
    return ConfigError([SourceProblem(path, line, 0, message, KEY)])


def _split(line: str) -> list[str]:
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields


def parse(text: str, path: str) -> Passfile:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _split(line)
        if len(fields) != 5:
            raise _problem(
                path, number, "expected hostname:port:database:username:password (libpq's format)"
            )
        entries.append(PassEntry(*fields))
    return Passfile(path, tuple(entries))


def load(path: str) -> Passfile:
    """Read and check the passfile; ConfigError naming the problem."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            raise _problem(
                path,
                0,
                f"the passfile is accessible by other users (mode {mode:04o}); "
                f"run chmod 600 {path}",
            )
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _problem(path, 0, f"cannot read: {exc.strerror or exc}") from None
    return parse(text, path)
