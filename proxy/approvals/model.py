"""Approval requests as values: what was asked, by whom, bound to exactly which statement.

A :class:`Request` never changes; each step of :class:`proxy.approvals.book.ApprovalBook`
returns a new one. States only move forward: ``pending`` → ``approved`` / ``denied`` /
``expired`` / ``withdrawn``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from proxy.identity import Identity
from proxy.policy.review import ReviewSpec

Role = Literal["viewer", "approver"]


class RequestState(Enum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def params_digest(params: Sequence[bytes | None]) -> str:
    """SHA-256 over the parameters, each length-prefixed (NULL distinct from empty); ``""``
    when there are none."""
    if not params:
        return ""
    digest = hashlib.sha256()
    for value in params:
        if value is None:
            digest.update(b"\xff\xff\xff\xff")
        else:
            digest.update(len(value).to_bytes(4, "big"))
            digest.update(value)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Binding:
    """What an approval releases: this exact text with these parameters, for this user and
    database, in this session. Nothing else can be released by it."""

    text_sha256: str
    params_sha256: str
    user: str
    database: str
    session_id: str
    # Who is behind the role when pgwarden knows (a certificate, a trusted claim): a shared
    # role must not let one person approve, or redeem a ticket of, another's statement.
    end_identity: str = ""

    @classmethod
    def of(cls, text: str, params: Sequence[bytes | None], identity: Identity) -> Binding:
        return cls(
            text_digest(text),
            params_digest(params),
            identity.user,
            identity.database,
            identity.session_id,
            identity.end_identity,
        )

    def same_statement(self, other: Binding) -> bool:
        """Same text, parameters, user (and end identity) and database (ticket mode: any
        session of the same person)."""
        return (
            self.text_sha256 == other.text_sha256
            and self.params_sha256 == other.params_sha256
            and self.user == other.user
            and self.end_identity == other.end_identity
            and self.database == other.database
        )


@dataclass(frozen=True, slots=True)
class Approver:
    """A person deciding, as the approvers file (or the console login) identifies them."""

    name: str
    groups: frozenset[str] = frozenset()
    role: Role = "approver"


@dataclass(frozen=True, slots=True)
class Vote:
    approver: str  # "" for pgwarden's own decision (shutdown)
    approve: bool
    reason: str
    at: float
    break_glass: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    binding: Binding
    spec: ReviewSpec
    statement: str  # the text approvers see (as the audit trail records it)
    identity: Identity
    created_at: float
    deadline: float
    fingerprint: str = ""
    state: RequestState = RequestState.PENDING
    votes: tuple[Vote, ...] = ()
    decided_at: float | None = None
    reason: str = ""  # why it ended (the denier's reason, "timed out", "client cancelled", …)
    ticket_until: float | None = None  # ticket mode, once approved: last moment it may run
    ticket_used: bool = False
    # The exact text and parameters, in memory only (never in the trail or the API), for an
    # EXPLAIN an approver asks for.
    text: str = field(default="", repr=False, compare=False)
    params: tuple[bytes | None, ...] = field(default=(), repr=False, compare=False)

    @property
    def requester(self) -> str:
        return self.binding.user

    @property
    def requesters(self) -> frozenset[str]:
        """The names that asked: the role, and the person behind it when known."""
        return frozenset(n for n in (self.binding.user, self.binding.end_identity) if n)

    @property
    def approved_by(self) -> tuple[str, ...]:
        return tuple(v.approver for v in self.votes if v.approve)

    @property
    def approvals_missing(self) -> int:
        return max(self.spec.approvals - len(self.approved_by), 0)

    @property
    def break_glass(self) -> bool:
        return any(v.break_glass for v in self.votes)

    @property
    def decider(self) -> Vote | None:
        """The vote that ended the request (the deny, or the last approval)."""
        if self.state in (RequestState.APPROVED, RequestState.DENIED) and self.votes:
            return self.votes[-1]
        return None
