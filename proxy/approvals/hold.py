"""What a session does with a ``review`` decision, in two calls, so wiring it stays small.

The session decides *where* the held statement goes (forward it, or answer through the same
poison-and-substitute path as a block); these functions own the conversation with the broker
and the notices the client sees meanwhile. ``send`` writes bytes to the client (notices may be
sent at any time). See docs/approvals.md, "What the session calls".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from proxy.approvals.broker import SQLSTATE_REFUSED, ApprovalBroker, Outcome, Refusal
from proxy.approvals.model import Request
from proxy.identity import Identity
from proxy.policy.review import ReviewSpec

Send = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class Statement:
    """The held statement exactly as the client sent it, and as the trail may show it."""

    text: str
    params: tuple[bytes | None, ...]
    identity: Identity  # with session_id
    audit_text: str  # gate.audit_text(...) of the statement
    fingerprint: str = ""


async def hold(
    broker: ApprovalBroker,
    spec: ReviewSpec,
    statement: Statement,
    send: Send,
    *,
    idle_in_transaction_timeout: float | None = None,
) -> Outcome:
    """Open the request, tell the client it waits, remind it every 15 s, and return the
    outcome. Cancelling the awaiting task withdraws the request (then answer 57014)."""
    request = _open(broker, spec, statement)
    notice = broker.waiting_notice(request, idle_in_transaction_timeout)
    send(broker.notice_message(notice))
    return await broker.wait(request.id, remind=lambda text: send(broker.notice_message(text)))


def ticket(
    broker: ApprovalBroker, spec: ReviewSpec, statement: Statement
) -> tuple[Request, Refusal | None]:
    """Ticket mode: (the approved request, None) when this exact statement has an unused
    approval — forward it; else (a new pending request, the refusal to answer with now)."""
    used = broker.redeem_ticket(statement.text, statement.params, statement.identity)
    if used is not None:
        return used, None
    request = _open(broker, spec, statement)
    hint = "Run the identical statement again once the request is approved."
    return request, Refusal(SQLSTATE_REFUSED, broker.ticket_notice(request), hint)


def _open(broker: ApprovalBroker, spec: ReviewSpec, statement: Statement) -> Request:
    return broker.request(
        spec,
        text=statement.text,
        params=statement.params,
        identity=statement.identity,
        statement=statement.audit_text,
        fingerprint=statement.fingerprint,
    )
