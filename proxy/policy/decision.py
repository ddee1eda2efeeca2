"""The outcome of evaluating a statement against the policy: a value, never an exception."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["allow", "flag", "block"]
Severity = Literal["low", "medium", "high", "critical"]
Mode = Literal["enforce", "monitor"]

ACTION_STRENGTH: dict[str, int] = {"allow": 0, "flag": 1, "block": 2}


@dataclass(frozen=True, slots=True)
class RuleMatch:
    id: str
    action: Action
    severity: Severity
    source: str  # "file:line" where the rule was defined
    message: str = ""
    sqlstate: str = "42501"
    notify: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """``action`` is what the proxy does (in monitor mode a would-be block is ``flag``);
    ``intended`` is what enforce mode would have done."""

    action: Action
    rules: tuple[RuleMatch, ...] = ()
    mode: Mode = "enforce"
    intended: Action = "allow"
    reason: str = ""  # human explanation (e.g. "no rule matched: defaults.action")
    message: str = ""  # client-facing error / notice text for block and notify
    sqlstate: str = "42501"
    notify: bool = False
    facts_summary: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def as_audit(self) -> dict[str, Any]:
        """The ``decision`` object of a query audit event."""
        return {
            "action": self.action,
            "intended": self.intended,
            "mode": self.mode,
            "rules": [{"id": r.id, "action": r.action, "severity": r.severity} for r in self.rules],
        }


ALLOW = Decision(action="allow", reason="no policy loaded")
