"""The audit records of the approval steps, as typed values turned into trail events.

``review_requested``, ``review_decided`` (one per approver's vote, and one for pgwarden's own
denial at shutdown), ``review_expired`` and ``review_withdrawn``. Each carries the request id,
the rule and the requester's identity, so ``logs --session`` finds them beside the statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from proxy.approvals.model import Request, Vote
from proxy.audit.timeparse import iso_z


def iso(at: float) -> str:
    return iso_z(datetime.fromtimestamp(at, UTC))


def _base(kind: str, request: Request, at: float, proxy_id: str) -> dict[str, Any]:
    ident = request.identity
    return {
        "v": 1,
        "proxy_id": proxy_id,
        "session_id": request.binding.session_id,
        "user": request.binding.user,
        "database": request.binding.database,
        "application_name": ident.application_name,
        "client_addr": ident.client_addr,
        "client_port": ident.client_port,
        "type": kind,
        "ts": iso(at),
        "request_id": request.id,
        "rule": request.spec.rule_id,
    }


@dataclass(frozen=True, slots=True)
class ReviewRequested:
    request: Request

    def as_event(self, proxy_id: str) -> dict[str, Any]:
        r = self.request
        event = _base("review_requested", r, r.created_at, proxy_id)
        event.update(
            statement=r.statement,
            fingerprint=r.fingerprint or None,
            text_sha256=r.binding.text_sha256,
            params_sha256=r.binding.params_sha256 or None,
            approvals_needed=r.spec.approvals,
            approvers={
                "users": sorted(r.spec.users),
                "groups": [g for g, _m in r.spec.groups],
            },
            timeout_s=r.spec.timeout,
            mode=r.spec.mode,
            expires_at=iso(r.deadline),
        )
        return event


@dataclass(frozen=True, slots=True)
class ReviewDecided:
    request: Request  # the request after this vote
    vote: Vote

    def as_event(self, proxy_id: str) -> dict[str, Any]:
        r, v = self.request, self.vote
        event = _base("review_decided", r, v.at, proxy_id)
        event.update(
            approver=v.approver or None,
            verdict="approve" if v.approve else "deny",
            reason=v.reason or None,
            break_glass=v.break_glass,
            by_pgwarden=not v.approver,
            approvals=len(r.approved_by),
            approvals_needed=r.spec.approvals,
            state=r.state.value,
            waited_s=round(v.at - r.created_at, 3),
            ticket_until=iso(r.ticket_until) if r.ticket_until is not None else None,
        )
        return event


@dataclass(frozen=True, slots=True)
class _Ending:
    """A request that ended without a vote: when it ended and how long it had waited."""

    request: Request
    kind: ClassVar[str] = ""

    def as_event(self, proxy_id: str) -> dict[str, Any]:
        r = self.request
        at = r.decided_at if r.decided_at is not None else r.created_at
        event = _base(self.kind, r, at, proxy_id)
        event["waited_s"] = round(at - r.created_at, 3)
        event.update(self.fields())
        return event

    def fields(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class ReviewExpired(_Ending):
    kind: ClassVar[str] = "review_expired"

    def fields(self) -> dict[str, Any]:
        r = self.request
        return {
            "approvals": len(r.approved_by),
            "approvals_needed": r.spec.approvals,
            "on_timeout": r.spec.on_timeout,
        }


@dataclass(frozen=True, slots=True)
class ReviewWithdrawn(_Ending):
    kind: ClassVar[str] = "review_withdrawn"

    def fields(self) -> dict[str, Any]:
        return {"reason": self.request.reason}


ReviewRecord = ReviewRequested | ReviewDecided | ReviewExpired | ReviewWithdrawn
