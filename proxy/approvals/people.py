"""Who is deciding: the approvers file, one entry per person with a personal token.

::

    version: 1
    people:
      - name: bob                  # the same name the person has as a database user
        token_sha256: 9f86d0…      # SHA-256 of bob's token (pgwarden approvals new-token bob)
        groups: [dba]              # optional: memberships beside the policy's `groups:`
        role: approver             # approver (default) or viewer (reads, never decides)

Only token hashes are stored, so the file can be read by operators without handing out
identities. A token is looked up by its hash in constant time per entry.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import yamlsrc
from proxy.approvals.model import Approver
from proxy.errors import ApproversFileError, SourceError, SourceProblem
from proxy.policy.validate import Problems, check_keys, one_of, string_list

PERSON_KEYS = ("name", "token_sha256", "groups", "role")
ROLES = ("approver", "viewer")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[^\s/]{1,63}")
TOKEN_BYTES = 24


def token_hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def new_token() -> str:
    return "pgw_" + secrets.token_urlsafe(TOKEN_BYTES)


@dataclass(frozen=True, slots=True)
class People:
    """The approvers file, loaded: token hash → person."""

    entries: tuple[tuple[str, Approver], ...] = ()
    source: str = ""

    def by_token(self, token: str | None) -> Approver | None:
        if not token:
            return None
        digest = token_hash(token)
        found: Approver | None = None
        for stored, person in self.entries:  # every entry compared: no early exit to time
            if hmac.compare_digest(stored, digest):
                found = person
        return found

    def by_name(self, name: str) -> Approver | None:
        return next((p for _h, p in self.entries if p.name == name), None)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted({p.name for _h, p in self.entries}))

    def __bool__(self) -> bool:
        return bool(self.entries)


def load_people(path: str | Path) -> People:
    """Read the approvers file; raises :class:`ApproversFileError` with every problem."""
    try:
        data = yamlsrc.load_file(path)
    except SourceError as exc:
        raise ApproversFileError(exc.problems) from None
    out: list[SourceProblem] = []
    problems = Problems(out)
    entries: list[tuple[str, Approver]] = []
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise ApproversFileError(
            [SourceProblem(str(path), 1, 1, "an approvers file is a mapping with people: [...]")]
        )
    check_keys(problems, data, ("version", "people"), "", "top-level")
    seen_names: set[str] = set()
    seen_hashes: set[str] = set()
    items = data["people"]
    for index, item in enumerate(items):
        entry = _person(problems, items, index, item)
        if entry is None:
            continue
        digest, person = entry
        label = f"people[{person.name}]"
        if person.name in seen_names:
            problems.at(item, "name", f"{person.name!r} is listed twice", label)
        elif digest in seen_hashes:
            problems.at(item, "token_sha256", "this token hash belongs to someone else", label)
        seen_names.add(person.name)
        seen_hashes.add(digest)
        entries.append(entry)
    if out:
        raise ApproversFileError(out)
    return People(tuple(entries), str(path))


def _person(problems: Problems, items: Any, index: int, item: Any) -> tuple[str, Approver] | None:
    if not isinstance(item, dict):
        problems.at(items, index, "a person is a mapping with name and token_sha256")
        return None
    before = len(problems.out)
    name = item.get("name")
    label = f"people[{name}]" if isinstance(name, str) else f"people[{index}]"
    check_keys(problems, item, PERSON_KEYS, label, "person")
    checks = (
        ("name", _NAME, "name must be a user name (no spaces, at most 63 characters)"),
        ("token_sha256", _HEX64,
         "token_sha256 must be 64 lowercase hex digits (pgwarden approvals new-token)"),
    )  # fmt: skip
    for key, pattern, message in checks:
        value = item.get(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            # Point at the value when given, else at the person missing it.
            site = (item, key) if key in item else (items, index)
            problems.at(site[0], site[1], message, label)
    digest = item.get("token_sha256")
    groups: frozenset[str] = frozenset()
    if "groups" in item:
        groups = frozenset(t for _c, _k, t in string_list(problems, item, "groups", label))
    role = "approver"
    if "role" in item:
        role = one_of(problems, item, "role", ROLES, f"{label}.role") or role
    if len(problems.out) != before:
        return None
    return str(digest), Approver(str(name), groups, role)  # type: ignore[arg-type]
