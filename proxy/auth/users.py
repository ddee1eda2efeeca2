"""The users file of ``auth.mode: proxy``: one secret per user.

The format is PgBouncer's ``auth_file``, so an existing ``userlist.txt`` of SCRAM secrets
works unchanged::

    "alice" "SCRAM-SHA-256$4096:…$…:…"
    "olduser" "md5…"

One user per line, both fields double-quoted (a quote inside is doubled), ``#`` or ``;``
starts a comment line. SCRAM secrets are always accepted; an md5 entry only when
``auth.client_methods`` lists ``md5`` (it answers md5 challenges as it is, so whoever reads
it can log in as that user); a plaintext entry never. The file must not be readable by other
users (mode 0600 or 0640), like PostgreSQL's key files; pgwarden refuses it otherwise.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proxy.auth.password import Md5Secret, Verifier, parse_verifier
from proxy.auth.scram import DEFAULT_ITERATIONS, ScramSecret
from proxy.errors import ConfigError, SourceProblem

KEY = "auth.users_file"


@dataclass(frozen=True, slots=True)
class UsersFile:
    path: str
    secrets: Mapping[str, ScramSecret]
    md5: Mapping[str, Md5Secret] = field(default_factory=dict)

    def secret(self, user: str) -> ScramSecret | None:
        return self.secrets.get(user)

    def verifier(self, user: str) -> Verifier | None:
        return self.secrets.get(user) or self.md5.get(user)

    @property
    def names(self) -> list[str]:
        return sorted({*self.secrets, *self.md5})

    @property
    def typical_iterations(self) -> int:
        """The most common iteration count (for the mock exchange of unknown users)."""
        counts = Counter(secret.iterations for secret in self.secrets.values())
        return counts.most_common(1)[0][0] if counts else DEFAULT_ITERATIONS


def _problem(path: str, line: int, message: str) -> SourceProblem:
    return SourceProblem(path, line, 0, message, KEY)


def check_mode(path: str) -> None:
    info = os.stat(path)
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o027:
        raise ConfigError(
            [
                _problem(
                    path,
                    0,
                    f"the users file is accessible by other users (mode {mode:04o}); "
                    f"run chmod 600 {path}",
                )
            ]
        )


def _fields(text: str) -> list[str] | None:
    """The double-quoted fields of one line, or None if it is not made of them."""
    out: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text):
            return out
        if text[pos] != '"':
            return None
        pos += 1
        value = []
        while True:
            end = text.find('"', pos)
            if end < 0:
                return None
            value.append(text[pos:end])
            if text.startswith('""', end):
                value.append('"')
                pos = end + 2
                continue
            pos = end + 1
            break
        out.append("".join(value))


def parse(text: str, path: str, *, allow_md5: bool = False) -> UsersFile:
    """``allow_md5``: ``auth.client_methods`` lists md5 or password (which can check a
    cleartext password against an md5 entry), so md5 entries are wanted."""
    problems: list[SourceProblem] = []
    secrets: dict[str, ScramSecret] = {}
    md5: dict[str, Md5Secret] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        fields = _fields(stripped)
        if fields is None or len(fields) < 2 or not fields[0]:
            problems.append(_problem(path, number, 'expected "user" "SCRAM-SHA-256$…"'))
            continue
        name, secret_text = fields[0], fields[1]
        if name in secrets or name in md5:
            problems.append(_problem(path, number, f"user {name!r} is listed twice"))
            continue
        try:
            verifier = parse_verifier(secret_text)
        except ValueError as exc:
            kind = "an invalid md5" if secret_text.startswith("md5") else "a plaintext or unknown"
            problems.append(
                _problem(
                    path,
                    number,
                    f"user {name!r}: {exc}; {kind} entry is not accepted "
                    f"(pgwarden users add {name} writes a SCRAM secret)",
                )
            )
            continue
        if isinstance(verifier, ScramSecret):
            secrets[name] = verifier
        elif allow_md5:
            md5[name] = verifier
        else:
            problems.append(
                _problem(
                    path,
                    number,
                    f"user {name!r}: an md5 entry is only accepted when auth.client_methods "
                    f"lists md5 or password (pgwarden users add {name} writes a SCRAM secret)",
                )
            )
    if problems:
        raise ConfigError(problems)
    return UsersFile(path, secrets, md5)


def load(path: str, *, allow_md5: bool = False) -> UsersFile:
    """Read and check the users file (mode, format); ConfigError naming each problem."""
    try:
        check_mode(path)
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([_problem(path, 0, f"cannot read: {exc.strerror or exc}")]) from None
    return parse(text, path, allow_md5=allow_md5)


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def write(path: str, secrets: Mapping[str, Verifier]) -> None:
    """Replace the file atomically, mode 0600, users in name order."""
    target = Path(path)
    lines = ["# pgwarden users file: SCRAM-SHA-256 (or md5) secrets (pgwarden users add NAME)"]
    lines += [f"{_quote(name)} {_quote(str(secrets[name]))}" for name in sorted(secrets)]
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add(path: str, name: str, secret: Verifier) -> bool:
    """Add or replace ``name``; True when it replaced an existing entry."""
    existing: dict[str, Verifier] = {}
    if Path(path).exists():
        current = load(path, allow_md5=True)
        existing = {**current.secrets, **current.md5}
    replaced = name in existing
    existing[name] = secret
    write(path, existing)
    return replaced
