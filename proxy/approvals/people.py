"""Who is deciding: the approvers file, one entry per person with a personal token.

::

    version: 1
    people:
      - name: bob                  # the same name the person has as a database user
        token_sha256: 9f86d0…      # SHA-256 of bob's token (pgwarden approvals new-token bob)
        groups: [dba]              # optional: memberships beside the policy's `groups:`
        role: approver             # approver (default) or viewer (reads, never decides)
        password: "SCRAM-SHA-256$4096:…"   # optional: console login by name and password

Only token hashes and SCRAM secrets (PostgreSQL's password verifier format; `pgwarden
approvals new-password NAME` makes one) are stored, so the file can be read by operators
without handing out identities. A token is looked up by its hash in constant time per entry.
A person needs a token, a password, or both.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy import yamlsrc
from proxy.approvals.model import Approver
from proxy.auth.scram import ScramSecret, keys_from_password, make_secret, sha256
from proxy.errors import ApproversFileError, SourceError, SourceProblem
from proxy.policy.validate import Problems, check_keys, one_of, string_list

PERSON_KEYS = ("name", "token_sha256", "groups", "role", "password")
ROLES = ("approver", "viewer")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[^\s/]{1,63}")
TOKEN_BYTES = 24


def token_hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def new_token() -> str:
    return "pgw_" + secrets.token_urlsafe(TOKEN_BYTES)


@dataclass(frozen=True, slots=True)
class Person:
    approver: Approver
    token_sha256: str = ""  # "" when the person logs in by password only
    password: ScramSecret | None = field(default=None, repr=False)


# Checked when a name is unknown, so a wrong name costs the same time as a wrong password.
_DECOY = make_secret(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class People:
    """The approvers file, loaded."""

    persons: tuple[Person, ...] = ()
    source: str = ""

    def by_token(self, token: str | None) -> Approver | None:
        if not token:
            return None
        digest = token_hash(token)
        found: Approver | None = None
        for person in self.persons:  # every entry compared: no early exit to time
            if person.token_sha256 and hmac.compare_digest(person.token_sha256, digest):
                found = person.approver
        return found

    def by_password(self, name: str, password: str) -> Approver | None:
        """The person, when ``password`` matches their SCRAM secret (PBKDF2: run it off the
        event loop)."""
        person = next((p for p in self.persons if p.approver.name == name), None)
        secret = person.password if person is not None and person.password else _DECOY
        keys = keys_from_password(password, secret.salt, secret.iterations)
        ok = hmac.compare_digest(sha256(keys.client_key), secret.stored_key)
        return person.approver if ok and person is not None and person.password else None

    def by_name(self, name: str) -> Approver | None:
        return next((p.approver for p in self.persons if p.approver.name == name), None)

    @property
    def passwords(self) -> bool:
        return any(p.password for p in self.persons)

    def __len__(self) -> int:
        return len(self.persons)

    def __bool__(self) -> bool:
        return bool(self.persons)


def load_people(path: str | Path) -> People:
    """Read the approvers file; raises :class:`ApproversFileError` with every problem."""
    try:
        data = yamlsrc.load_file(path)
    except SourceError as exc:
        raise ApproversFileError(exc.problems) from None
    out: list[SourceProblem] = []
    problems = Problems(out)
    persons: list[Person] = []
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise ApproversFileError(
            [SourceProblem(str(path), 1, 1, "an approvers file is a mapping with people: [...]")]
        )
    check_keys(problems, data, ("version", "people"), "", "top-level")
    seen_names: set[str] = set()
    seen_hashes: set[str] = set()
    items = data["people"]
    for index, item in enumerate(items):
        person = _person(problems, items, index, item)
        if person is None:
            continue
        name = person.approver.name
        label = f"people[{name}]"
        if name in seen_names:
            problems.at(item, "name", f"{name!r} is listed twice", label)
        elif person.token_sha256 and person.token_sha256 in seen_hashes:
            problems.at(item, "token_sha256", "this token hash belongs to someone else", label)
        seen_names.add(name)
        seen_hashes.add(person.token_sha256)
        persons.append(person)
    if out:
        raise ApproversFileError(out)
    return People(tuple(persons), str(path))


def _person(problems: Problems, items: Any, index: int, item: Any) -> Person | None:
    if not isinstance(item, dict):
        problems.at(items, index, "a person is a mapping with name and token_sha256 or password")
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
        if key == "token_sha256" and key not in item and "password" in item:
            continue  # a password-only person
        value = item.get(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            # Point at the value when given, else at the person missing it.
            site = (item, key) if key in item else (items, index)
            problems.at(site[0], site[1], message, label)
    password: ScramSecret | None = None
    if "password" in item:
        try:
            password = ScramSecret.parse(str(item["password"]))
        except ValueError as exc:
            problems.at(item, "password", f"{exc} (pgwarden approvals new-password)", label)
    groups: frozenset[str] = frozenset()
    if "groups" in item:
        groups = frozenset(t for _c, _k, t in string_list(problems, item, "groups", label))
    role = "approver"
    if "role" in item:
        role = one_of(problems, item, "role", ROLES, f"{label}.role") or role
    if len(problems.out) != before:
        return None
    approver = Approver(str(name), groups, role)  # type: ignore[arg-type]
    return Person(approver, str(item.get("token_sha256") or ""), password)
