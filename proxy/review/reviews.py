"""The approvals part of the report: requests, outcomes, approval rate and time to decide, by
review rule and by approver, read from the ``review_*`` events of the trail."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

REVIEW_TYPES = frozenset(
    {"review_requested", "review_decided", "review_expired", "review_withdrawn"}
)
PGWARDEN = "(pgwarden)"  # pgwarden's own denial at shutdown


@dataclass(frozen=True, slots=True)
class ReviewRuleRow:
    rule: str
    requests: int
    approved: int
    denied: int
    expired: int
    withdrawn: int
    pending: int  # requested in the selection with no end in it
    break_glass: int
    approval_rate: float | None  # approved / (approved + denied + expired)
    median_decide_s: float | None  # request to final approve/deny


@dataclass(frozen=True, slots=True)
class ApproverRow:
    approver: str
    approvals: int
    denials: int
    break_glass: int
    median_decide_s: float | None  # request to this person's vote


@dataclass(slots=True)
class _Rule:
    requested: set[str] = field(default_factory=set)
    ended: dict[str, str] = field(default_factory=dict)  # request id -> final state
    break_glass: set[str] = field(default_factory=set)
    decide_s: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _Approver:
    approvals: int = 0
    denials: int = 0
    break_glass: int = 0
    decide_s: list[float] = field(default_factory=list)


class ReviewTally:
    def __init__(self) -> None:
        self._rules: dict[str, _Rule] = {}
        self._approvers: dict[str, _Approver] = {}

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        rid = str(event.get("request_id") or "")
        rule = self._rules.setdefault(str(event.get("rule") or "(unknown)"), _Rule())
        waited = event.get("waited_s")
        waited = float(waited) if isinstance(waited, int | float) else None
        if kind == "review_requested":
            rule.requested.add(rid)
        elif kind == "review_decided":
            name = str(event.get("approver") or PGWARDEN)
            person = self._approvers.setdefault(name, _Approver())
            approve = event.get("verdict") == "approve"
            person.approvals += approve
            person.denials += not approve
            if event.get("break_glass"):
                person.break_glass += 1
                rule.break_glass.add(rid)
            if waited is not None:
                person.decide_s.append(waited)
            state = event.get("state")
            if state in ("approved", "denied"):
                rule.ended[rid] = str(state)
                if waited is not None:
                    rule.decide_s.append(waited)
        elif kind == "review_expired":
            rule.ended[rid] = "expired"
        elif kind == "review_withdrawn":
            rule.ended[rid] = "withdrawn"

    def rules(self) -> tuple[ReviewRuleRow, ...]:
        out = []
        for name, r in self._rules.items():
            states = list(r.ended.values())
            approved, denied = states.count("approved"), states.count("denied")
            expired = states.count("expired")
            judged = approved + denied + expired
            out.append(
                ReviewRuleRow(
                    rule=name,
                    requests=len(r.requested | set(r.ended)),
                    approved=approved,
                    denied=denied,
                    expired=expired,
                    withdrawn=states.count("withdrawn"),
                    pending=len(r.requested - set(r.ended)),
                    break_glass=len(r.break_glass),
                    approval_rate=approved / judged if judged else None,
                    median_decide_s=statistics.median(r.decide_s) if r.decide_s else None,
                )
            )
        out.sort(key=lambda row: (-row.requests, row.rule))
        return tuple(out)

    def approvers(self) -> tuple[ApproverRow, ...]:
        out = [
            ApproverRow(
                approver=name,
                approvals=a.approvals,
                denials=a.denials,
                break_glass=a.break_glass,
                median_decide_s=statistics.median(a.decide_s) if a.decide_s else None,
            )
            for name, a in self._approvers.items()
        ]
        out.sort(key=lambda row: (-(row.approvals + row.denials), row.approver))
        return tuple(out)
