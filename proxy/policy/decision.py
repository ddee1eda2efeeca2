"""The outcome of evaluating a statement against the policy: a value, never an exception."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from proxy.audit.record import enc

if TYPE_CHECKING:
    from proxy.policy.review import ReviewSpec

Action = Literal["allow", "flag", "review", "block"]
Severity = Literal["low", "medium", "high", "critical"]
Mode = Literal["enforce", "monitor"]

ACTIONS: tuple[Action, ...] = ("allow", "flag", "review", "block")
# `review` holds a statement until people approve it: stronger than flag, weaker than block.
ACTION_STRENGTH: dict[str, int] = {"allow": 0, "flag": 1, "review": 2, "block": 3}


@dataclass(frozen=True, slots=True)
class RowLimit:
    """A rule's ``max_rows``: the statement runs inside a savepoint pgwarden creates, and is
    rolled back and refused when its command tag reports more rows (docs/policies.md)."""

    limit: int
    rule_id: str
    message: str
    sqlstate: str = "42501"


@dataclass(frozen=True, slots=True)
class RuleMatch:
    id: str
    action: Action
    severity: Severity
    source: str  # "file:line" where the rule was defined
    message: str = ""
    sqlstate: str = "42501"
    notify: bool = False
    review: ReviewSpec | None = None  # review rules only
    max_rows: RowLimit | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """``action`` is what the proxy does (in monitor mode a would-be block is ``flag``);
    ``intended`` is what enforce mode would have done. A ``review`` decision carries the
    deciding rule's :class:`ReviewSpec`; while the proxy cannot hold statements for approval
    (see :data:`proxy.policy.engine.HOLDING_WIRED`) the same decision is enforced as ``block``
    with ``intended`` ``review`` and the spec still attached."""

    action: Action
    rules: tuple[RuleMatch, ...] = ()
    mode: Mode = "enforce"
    intended: Action = "allow"
    reason: str = ""  # human explanation (e.g. "no rule matched: defaults.action")
    message: str = ""  # client-facing error / notice text for block and notify
    sqlstate: str = "42501"
    notify: bool = False
    review: ReviewSpec | None = None
    # The strictest max_rows of the matched rules when the statement runs (allow or flag).
    guard: RowLimit | None = None
    facts_summary: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # as_audit()'s answer, made once: the decision is frozen, and a statement without a policy
    # (ALLOW) or a cached one shares its decision with every other event.
    _audit: dict[str, Any] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )
    # as_audit() in canonical JSON, for the lean query record (proxy.audit.record).
    _audit_json: bytes | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def as_audit(self) -> dict[str, Any]:
        """The ``decision`` object of a query audit event. The same dict for every call:
        events share it, so readers must not change it (none does: the trail copies what it
        must clean, see proxy.audit.chain.jsonable)."""
        cached = self._audit
        if cached is not None:
            return cached
        out: dict[str, Any] = {
            "action": self.action,
            "intended": self.intended,
            "mode": self.mode,
            "rules": [{"id": r.id, "action": r.action, "severity": r.severity} for r in self.rules],
        }
        if self.review is not None:
            out["review_rule"] = self.review.rule_id
        if self.guard is not None:
            out["max_rows"] = self.guard.limit
        object.__setattr__(self, "_audit", out)
        return out

    def as_audit_json(self) -> bytes:
        """:meth:`as_audit` as the canonical path encodes it inside a record, made once."""
        cached = self._audit_json
        if cached is None:
            cached = enc(self.as_audit())
            object.__setattr__(self, "_audit_json", cached)
        return cached


ALLOW = Decision(action="allow", reason="no policy loaded")
