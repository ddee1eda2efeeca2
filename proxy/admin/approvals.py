"""Admin API endpoints for approval requests (what ``pgwarden approvals`` talks to).

* ``GET /approvals[?state=pending]`` — requests, newest first;
* ``GET /approvals/{id}`` — one request with its votes;
* ``POST /approvals/{id}/approve`` and ``POST /approvals/{id}/deny`` — JSON body
  ``{"reason": "…", "break_glass": false}``.

Reading needs the admin token or any person's token (or nothing on an unauthenticated loopback
listener). Deciding always needs a **person's** token from ``approvals.approvers_file``: the
vote is recorded under that person's name, and the broker refuses people the rule does not
allow and the requester, with a message saying why.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from proxy.admin.auth import FailureLimiter
from proxy.approvals.broker import ApprovalBroker
from proxy.approvals.events import iso
from proxy.approvals.model import Approver, Request, RequestState
from proxy.approvals.people import People
from proxy.errors import ApprovalError
from proxy.state import RemoteApprovals

log = logging.getLogger("pgwarden.admin")

PREFIX = "/approvals"
MAX_BODY = 16 * 1024


def request_json(request: Request, link: str = "") -> dict[str, Any]:
    spec = request.spec
    return {
        "id": request.id,
        "state": request.state.value,
        "rule": spec.rule_id,
        "rule_source": spec.source,
        "requester": request.requester,
        "database": request.binding.database,
        "session_id": request.binding.session_id,
        "application_name": request.identity.application_name,
        "client_addr": request.identity.client_addr,
        # The person behind the requesting role, when the session knows (the requester above
        # is the role, which several people may share).
        "identity": request.identity.end_identity or None,
        "identity_source": (
            request.identity.identity_source.value if request.identity.identity_source else None
        ),
        "statement": request.statement,
        "fingerprint": request.fingerprint or None,
        "params_sha256": request.binding.params_sha256 or None,
        "created_at": iso(request.created_at),
        "expires_at": iso(request.deadline),
        "decided_at": iso(request.decided_at) if request.decided_at is not None else None,
        "reason": request.reason or None,
        "review": spec.as_json(),
        "approvals": len(request.approved_by),
        "approvals_needed": spec.approvals,
        "break_glass": request.break_glass,
        "ticket_until": iso(request.ticket_until) if request.ticket_until is not None else None,
        "ticket_used": request.ticket_used,
        "votes": [
            {
                "approver": v.approver or None,
                "verdict": "approve" if v.approve else "deny",
                "reason": v.reason or None,
                "at": iso(v.at),
                "break_glass": v.break_glass,
            }
            for v in request.votes
        ],
        "link": link or None,
    }


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


Audit = Callable[..., None]  # AdminServer._audit(request, action, **fields)


def no_audit(request: web.Request, action: str, **fields: Any) -> None:
    pass


class ApprovalsApi:
    """``audit`` records each call as an ``admin`` event (reads show statement text);
    ``failures`` rate-limits unknown tokens per address, shared with the admin token's."""

    def __init__(
        self,
        broker: ApprovalBroker | None,
        people: People,
        admin_token: str | None,
        *,
        audit: Audit = no_audit,
        failures: FailureLimiter | None = None,
    ) -> None:
        self.broker = broker
        self.people = people
        self.admin_token = admin_token
        self.audit = audit
        self.failures = failures or FailureLimiter()
        # With workers: the requests the other workers hold (set by proxy.workers).
        self.remote: RemoteApprovals | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self.list)
        app.router.add_get(PREFIX + "/{id}", self.show)
        app.router.add_post(PREFIX + "/{id}/approve", self.approve)
        app.router.add_post(PREFIX + "/{id}/deny", self.deny)

    # --- who is asking -------------------------------------------------------------------

    def caller(self, request: web.Request) -> str | None:
        """Who is asking: a person's name, ``admin-token``, ``open`` (no authentication
        configured, loopback only), or None (nobody we know: counted as a failure)."""
        address = request.remote or ""
        wait = self.failures.blocked(address)
        if wait:
            raise web.HTTPTooManyRequests(
                text='{"error": "too many failed authentications"}',
                content_type="application/json",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        token = _bearer(request)
        person = self.people.by_token(token)
        if person is not None:
            return person.name
        if self.admin_token is not None and token is not None:
            if hmac.compare_digest(token.encode(), self.admin_token.encode()):
                return "admin-token"
        elif self.admin_token is None and not self.people:
            return "open"  # the listener is loopback-only (checked at start), as for /sessions
        if token is not None:
            self.failures.failed(address)
            self.audit(request, "auth_failed", caller=None, reason="unknown token")
        return None

    # --- handlers ------------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        broker, caller = self._broker_or_raise(request, read=True)
        state = request.query.get("state", "")
        states = {s.value for s in RequestState}
        if state and state not in states:
            return _error(400, f"state must be one of {', '.join(sorted(states))}")
        every = list(broker.book)
        if self.remote is not None:
            every = sorted([*every, *await self.remote.requests()],
                           key=lambda r: r.created_at, reverse=True)  # fmt: skip
        chosen = [r for r in every if not state or r.state.value == state]
        self.audit(request, "approvals_read", caller=caller, requests=[r.id for r in chosen])
        return web.json_response([request_json(r, broker.link(r)) for r in chosen])

    async def show(self, request: web.Request) -> web.Response:
        broker, caller = self._broker_or_raise(request, read=True)
        try:
            found = await self._find(broker, request.match_info["id"])
        except ApprovalError as exc:
            return _error(exc.status, str(exc))
        self.audit(request, "approvals_read", caller=caller, requests=[found.id])
        return web.json_response(request_json(found, broker.link(found)))

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, True)

    async def deny(self, request: web.Request) -> web.Response:
        return await self._decide(request, False)

    async def _decide(self, request: web.Request, approve: bool) -> web.Response:
        broker, caller = self._broker_or_raise(request, read=False)
        person = self.people.by_name(caller) if caller else None
        if person is None:
            return _error(
                401,
                "deciding needs your personal token from the approvers file "
                "(Authorization: Bearer …)",
            )
        body = await _json_body(request)
        reason = body.get("reason", "")
        break_glass = body.get("break_glass", False)
        if not isinstance(reason, str) or not isinstance(break_glass, bool):
            return _error(400, "reason must be a string and break_glass true or false")
        request_id = request.match_info["id"]
        verb = "approve" if approve else "deny"
        try:
            decided = await self._vote(broker, request_id, person, approve, reason, break_glass)
        except ApprovalError as exc:
            self.audit(
                request,
                verb,
                caller=person.name,
                request_id=request_id,
                result="refused",
                reason=str(exc),
            )
            log.warning(
                "approvals: %s refused for %s on %s from %s: %s",
                "approve" if approve else "deny",
                person.name,
                request_id,
                request.remote,
                exc,
            )
            return _error(exc.status, str(exc))
        self.audit(request, verb, caller=person.name, request_id=request_id, result="ok",
                   break_glass=break_glass)  # fmt: skip
        log.info(
            "approvals: %s %s %s from %s",
            person.name,
            "approved" if approve else "denied",
            request_id,
            request.remote,
        )
        return web.json_response(request_json(decided, broker.link(decided)))

    async def _find(self, broker: ApprovalBroker, request_id: str) -> Request:
        """The request of that id, in this worker's broker or (workers) another's."""
        try:
            return broker.book.get(request_id)
        except ApprovalError:
            if self.remote is None:
                raise
        for found in await self.remote.requests():
            if found.id == request_id:
                return found
        raise ApprovalError(f"no approval request {request_id!r}", status=404)

    async def _vote(
        self,
        broker: ApprovalBroker,
        request_id: str,
        person: Approver,
        approve: bool,
        reason: str,
        break_glass: bool,
    ) -> Request:
        """Record the vote where the request lives: here, or the worker holding it."""
        if self.remote is not None and request_id not in {r.id for r in broker.book}:
            decided = await self.remote.decide(request_id, person, approve, reason, break_glass)
            if decided is not None:
                return decided
        return broker.decide(request_id, person, approve, reason, break_glass=break_glass)

    def _broker_or_raise(
        self, request: web.Request, *, read: bool
    ) -> tuple[ApprovalBroker, str | None]:
        caller = self.caller(request)
        if read and caller is None:
            raise web.HTTPUnauthorized(
                text='{"error": "unauthorized"}',
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="pgwarden"'},
            )
        if self.broker is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "approvals are not running in this process"}',
                content_type="application/json",
            )
        if not read and not self.people:
            raise web.HTTPServiceUnavailable(
                text='{"error": "nobody can decide: approvals.approvers_file is not set"}',
                content_type="application/json",
            )
        return self.broker, caller


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    if not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        # A form or text/plain body is what a cross-site page can send without asking.
        raise web.HTTPUnsupportedMediaType(
            text='{"error": "send the body as application/json"}', content_type="application/json"
        )
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text='{"error": "the body is not JSON"}', content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error": "the body must be a JSON object"}', content_type="application/json"
        )
    return body
