"""The certificate → role map of ``auth.mode: cert`` (``auth.ident_file``), pg_ident.conf's
format and meaning.

Each line is ``MAPNAME SYSTEM-USERNAME DATABASE-USERNAME``; ``#`` starts a comment,
double quotes keep a token with spaces (or one that would otherwise be a keyword or a regular
expression) literal. As in PostgreSQL:

* a SYSTEM-USERNAME starting with ``/`` is a regular expression, searched (not anchored:
  write ``^…$``), and ``\\1`` in DATABASE-USERNAME is replaced by its first group;
* DATABASE-USERNAME ``all`` matches every role, and one starting with ``/`` is a regular
  expression over the role name (PostgreSQL 16);
* the certificate identity (``client_tls.identity``) and the role are compared exactly,
  case included.

Only the lines of the map named by ``auth.ident_map`` are used. ``+group`` (role membership,
PostgreSQL 16) is refused: pgwarden decides before it is connected to the server, so it
cannot ask which roles are members; ``include`` directives are refused too (name the file).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.errors import ConfigError, SourceProblem

KEY = "auth.ident_file"


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    quoted: bool


@dataclass(frozen=True, slots=True)
class IdentLine:
    number: int
    map_name: str
    system: str  # literal, or the regular expression's text
    system_regex: re.Pattern[str] | None
    role: str  # literal (may hold \1), or the regular expression's text
    role_regex: re.Pattern[str] | None
    any_role: bool  # DATABASE-USERNAME is the keyword all

    def allows(self, identity: str, role: str) -> bool:
        wanted = self.role
        if self.system_regex is not None:
            found = self.system_regex.search(identity)
            if found is None:
                return False
            if "\\1" in wanted:
                # PostgreSQL replaces the first \1 only.
                wanted = wanted.replace("\\1", found.group(1) or "", 1)
        elif identity != self.system:
            return False
        if self.any_role:
            return True
        if self.role_regex is not None:
            return self.role_regex.search(role) is not None
        return role == wanted


@dataclass(frozen=True, slots=True)
class IdentMap:
    path: str
    lines: tuple[IdentLine, ...]

    def allows(self, map_name: str, identity: str, role: str) -> bool:
        """Whether a client whose certificate says ``identity`` may log in as ``role``."""
        return any(line.map_name == map_name and line.allows(identity, role) for line in self.lines)

    def maps(self) -> set[str]:
        return {line.map_name for line in self.lines}


def _problem(path: str, line: int, message: str) -> SourceProblem:
    return SourceProblem(path, line, 0, message, KEY)


def tokens(line: str) -> list[Token] | None:
    """The tokens of one line (comments removed), or None for an unterminated quote."""
    out: list[Token] = []
    pos = 0
    while pos < len(line):
        ch = line[pos]
        if ch in " \t\r":
            pos += 1
            continue
        if ch == "#":
            break
        text: list[str] = []
        quoted = False
        while pos < len(line) and line[pos] not in " \t\r#":
            if line[pos] == '"':
                end = line.find('"', pos + 1)
                # "" inside quotes is one quote character, as in PostgreSQL's tokenizer.
                while end >= 0 and line.startswith('""', end):
                    end = line.find('"', end + 2)
                if end < 0:
                    return None
                text.append(line[pos + 1 : end].replace('""', '"'))
                quoted = True
                pos = end + 1
            else:
                text.append(line[pos])
                pos += 1
        out.append(Token("".join(text), quoted))
    return out


def _regex(path: str, number: int, text: str, problems: list[SourceProblem]) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        problems.append(_problem(path, number, f'invalid regular expression "{text}": {exc}'))
        return re.compile(r"(?!)")


def _line(
    path: str, number: int, fields: Sequence[Token], problems: list[SourceProblem]
) -> IdentLine | None:
    if fields[0].text in ("include", "include_dir", "include_if_exists") and not fields[0].quoted:
        problems.append(_problem(path, number, f"{fields[0].text} is not supported here"))
        return None
    if len(fields) != 3:
        problems.append(
            _problem(path, number, "expected MAPNAME SYSTEM-USERNAME DATABASE-USERNAME")
        )
        return None
    name, system, role = fields
    system_regex = None
    if system.text.startswith("/") and not system.quoted:
        system_regex = _regex(path, number, system.text[1:], problems)
        if "\\1" in role.text and system_regex.groups < 1:
            problems.append(
                _problem(
                    path,
                    number,
                    f'regular expression "{system.text[1:]}" has no subexpressions as '
                    f'requested by backreference in "{role.text}"',
                )
            )
    role_regex = None
    if role.text.startswith("+") and not role.quoted:
        problems.append(
            _problem(
                path,
                number,
                f'"{role.text}": role membership (+group) cannot be checked before pgwarden '
                "is connected; list the roles",
            )
        )
        return None
    if role.text.startswith("/") and not role.quoted:
        role_regex = _regex(path, number, role.text[1:], problems)
    return IdentLine(
        number,
        name.text,
        system.text[1:] if system_regex is not None else system.text,
        system_regex,
        role.text[1:] if role_regex is not None else role.text,
        role_regex,
        role.text == "all" and not role.quoted,
    )


def parse(text: str, path: str, map_name: str = "") -> IdentMap:
    """``map_name``: the map the configuration names; an error when no line has it."""
    problems: list[SourceProblem] = []
    lines: list[IdentLine] = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = tokens(raw)
        if fields is None:
            problems.append(_problem(path, number, "unterminated quoted string"))
            continue
        if not fields:
            continue
        line = _line(path, number, fields, problems)
        if line is not None:
            lines.append(line)
    result = IdentMap(path, tuple(lines))
    if map_name and not problems and map_name not in result.maps():
        problems.append(_problem(path, 0, f'no line of the file is in map "{map_name}"'))
    if problems:
        raise ConfigError(problems)
    return result


def load(path: str, map_name: str = "") -> IdentMap:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([_problem(path, 0, f"cannot read: {exc.strerror or exc}")]) from None
    return parse(text, path, map_name)
