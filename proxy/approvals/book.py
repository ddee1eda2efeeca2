"""The approval requests of one proxy: a pure state machine (no I/O, no clock of its own).

Every step takes ``now`` and returns the new :class:`Request` with the audit records it
produced; a refused step raises :class:`ApprovalError` with a message meant for the person who
tried it. Rules enforced here, whoever calls (CLI, admin API, console):

* only approvers the rule allows may vote; viewers never; the requester never (whatever
  their groups), and each person counts once;
* a request needs ``approvals`` distinct approvals; one deny from an allowed approver ends it;
* a break-glass approval (members of ``defaults.break_glass`` groups) ends it at once and needs
  a reason; ``reason_required`` rules need a reason for every vote;
* nothing happens to a request past its deadline except expiring;
* in ticket mode an approved request releases the identical statement (text, parameters,
  user, database) once, until ``ticket_until``.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Iterator

from proxy.approvals.events import (
    ReviewDecided,
    ReviewExpired,
    ReviewRecord,
    ReviewRequested,
    ReviewWithdrawn,
)
from proxy.approvals.model import Approver, Binding, Request, RequestState, Vote
from proxy.errors import ApprovalError
from proxy.identity import Identity
from proxy.policy.review import ReviewSpec

PENDING = RequestState.PENDING
MAX_REASON = 1000
DECIDED_KEPT = 1000  # decided requests remembered for the console and `approvals show`


def new_request_id() -> str:
    """Short enough to type from a notice, long enough not to be guessed (80 bits)."""
    return "r-" + secrets.token_hex(10)


Step = tuple[Request, list[ReviewRecord]]


class ApprovalBook:
    def __init__(self, new_id: Callable[[], str] = new_request_id) -> None:
        self._new_id = new_id
        self._requests: dict[str, Request] = {}

    # --- reading ---------------------------------------------------------------------------

    def get(self, request_id: str) -> Request:
        request = self._requests.get(request_id)
        if request is None:
            raise ApprovalError(f"no approval request {request_id!r}", status=404)
        return request

    def __iter__(self) -> Iterator[Request]:
        """Newest first."""
        return iter(sorted(self._requests.values(), key=lambda r: r.created_at, reverse=True))

    def pending(self) -> list[Request]:
        return [r for r in self if r.state is PENDING]

    # --- steps -------------------------------------------------------------------------------

    def open(
        self,
        *,
        spec: ReviewSpec,
        text: str,
        params: tuple[bytes | None, ...],
        identity: Identity,
        statement: str,
        now: float,
        fingerprint: str = "",
    ) -> Step:
        request_id = self._new_id()
        while request_id in self._requests:
            request_id = self._new_id()
        request = Request(
            id=request_id,
            binding=Binding.of(text, params, identity),
            spec=spec,
            statement=statement,
            identity=identity,
            created_at=now,
            deadline=now + spec.timeout,
            fingerprint=fingerprint,
            text=text,
            params=params,
        )
        self._store(request)
        return request, [ReviewRequested(request)]

    def vote(
        self,
        request_id: str,
        approver: Approver,
        approve: bool,
        reason: str,
        now: float,
        *,
        break_glass: bool = False,
    ) -> Step:
        request = self.get(request_id)
        records: list[ReviewRecord] = []
        if request.state is PENDING and now >= request.deadline:
            request, records = self._expire(request, now)
        if request.state is not PENDING:
            raise ApprovalError(f"request {request.id} is already {_ended(request)}")
        reason = " ".join(reason.split())[:MAX_REASON]
        spec = request.spec
        name = approver.name
        if approver.role != "approver":
            raise ApprovalError(f"{name} may view requests but not decide them", status=403)
        if name in request.requesters:
            raise ApprovalError(
                f"{name} asked for this statement; someone else must decide it "
                "(the requester never counts as an approver)",
                status=403,
            )
        if break_glass:
            if not spec.may_break_glass(name, approver.groups):
                groups = ", ".join(g for g, _m in spec.break_glass) or "none configured"
                raise ApprovalError(
                    f"{name} is not in a break-glass group (defaults.break_glass: {groups})",
                    status=403,
                )
            if not approve:
                raise ApprovalError("break-glass is for approving; deny as usual", status=400)
            if not reason:
                raise ApprovalError("a break-glass approval needs a reason", status=400)
        elif not spec.allows(name, approver.groups):
            raise ApprovalError(
                f"{name} may not decide requests of rule {spec.rule_id} (approvers: {_who(spec)})",
                status=403,
            )
        if any(v.approver == name for v in request.votes):
            raise ApprovalError(
                f"{name} already approved request {request.id}; it needs "
                f"{request.approvals_missing} more approval(s) from other people"
            )
        if spec.reason_required and not reason:
            raise ApprovalError(f"rule {spec.rule_id} requires a reason", status=400)
        vote = Vote(name, approve, reason, now, break_glass)
        votes = (*request.votes, vote)
        changes: dict[str, object] = {"votes": votes}
        granted = sum(1 for v in votes if v.approve)
        if not approve:
            changes.update(state=RequestState.DENIED, decided_at=now, reason=reason)
        elif break_glass or granted >= spec.approvals:
            changes.update(state=RequestState.APPROVED, decided_at=now, reason=reason)
            if spec.mode == "ticket":
                changes["ticket_until"] = now + spec.ticket_valid
        request = dataclasses.replace(request, **changes)  # type: ignore[arg-type]
        self._store(request)
        records.append(ReviewDecided(request, vote))
        return request, records

    def withdraw(self, request_id: str, reason: str, now: float) -> Step:
        """The client gave up (cancel, disconnect): a pending request ends unanswered."""
        request = self.get(request_id)
        if request.state is not PENDING:
            return request, []
        request = dataclasses.replace(
            request, state=RequestState.WITHDRAWN, decided_at=now, reason=reason
        )
        self._store(request)
        return request, [ReviewWithdrawn(request)]

    def expire_due(self, now: float) -> list[Step]:
        return [self._expire(r, now) for r in self.pending() if now >= r.deadline]

    def deny_pending(self, reason: str, now: float) -> list[Step]:
        """pgwarden's own denial of everything still pending (shutdown: the clients' connections
        are going away, and no request survives a restart)."""
        out: list[Step] = []
        for request in self.pending():
            vote = Vote("", False, reason, now)
            request = dataclasses.replace(
                request,
                votes=(*request.votes, vote),
                state=RequestState.DENIED,
                decided_at=now,
                reason=reason,
            )
            self._store(request)
            out.append((request, [ReviewDecided(request, vote)]))
        return out

    def redeem_ticket(
        self, text: str, params: tuple[bytes | None, ...], identity: Identity, now: float
    ) -> Request | None:
        """An approved, unused, unexpired ticket for exactly this statement, now used up."""
        binding = Binding.of(text, params, identity)
        for request in self:
            if (
                request.state is RequestState.APPROVED
                and request.ticket_until is not None
                and not request.ticket_used
                and now <= request.ticket_until
                and request.binding.same_statement(binding)
            ):
                request = dataclasses.replace(request, ticket_used=True)
                self._store(request)
                return request
        return None

    # --- internals ---------------------------------------------------------------------------

    def _expire(self, request: Request, now: float) -> Step:
        request = dataclasses.replace(
            request,
            state=RequestState.EXPIRED,
            decided_at=now,
            reason=f"no decision within {request.spec.describe_timeout()}",
        )
        self._store(request)
        return request, [ReviewExpired(request)]

    def _store(self, request: Request) -> None:
        self._requests[request.id] = request
        if len(self._requests) > DECIDED_KEPT * 2:
            decided = [r for r in self._requests.values() if r.state is not PENDING]
            decided.sort(key=lambda r: r.decided_at or r.created_at)
            for old in decided[: len(decided) - DECIDED_KEPT]:
                del self._requests[old.id]


def _who(spec: ReviewSpec) -> str:
    return ", ".join([f"group {g}" for g, _m in spec.groups] + sorted(spec.users))


def _ended(request: Request) -> str:
    state = request.state.value
    vote = request.decider
    if vote is not None and vote.approver:
        return f"{state} by {vote.approver}"
    return f"{state} ({request.reason})" if request.reason else state
