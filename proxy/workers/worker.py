"""One worker's links to its siblings: cancel routing, and (in worker 0, which serves the
admin listener) the sessions, reloads and metrics of all of them.

What each sibling answers (:class:`~proxy.workers.siblings.SiblingServer` ops):

* ``cancel`` -- route a CancelRequest among its own sessions; the answer comes only after
  the server closed the forwarded cancel connection, so the receiving worker closes the
  client's cancel socket after that too (DESIGN.md rule 4);
* ``sessions`` / ``session`` -- its live sessions as ``/sessions`` shows them; cancel or
  terminate one of them;
* ``reload`` -- reload its policies, alert rules, certificates and users files;
* ``metrics`` -- its Prometheus exposition, which worker 0 merges with a ``worker`` label;
* ``login`` -- a failed login (or the success that cleared failures) another worker saw,
  so the login rate limiter counts every worker's;
* ``ready`` -- its readiness checks (audit trail, store) for worker 0's ``/readyz``;
* ``approvals`` / ``approval_decide`` -- its approval requests; one person's vote on one of
  them (see :mod:`proxy.workers.approvals`).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from proxy.approvals.model import Approver, Request
from proxy.audit.trailset import trail_ids
from proxy.errors import ApprovalError
from proxy.state import ReloadResult
from proxy.wire.startup import CancelRequest
from proxy.workers.approvals import (
    approver_from_json,
    approver_to_json,
    request_from_json,
    request_to_json,
)
from proxy.workers.metrics import merge_expositions
from proxy.workers.role import WorkerRole
from proxy.workers.siblings import Siblings, SiblingServer

if TYPE_CHECKING:
    from proxy.admin.app import AdminServer
    from proxy.metrics import Metrics
    from proxy.server import ProxyServer

log = logging.getLogger("pgwarden.workers")

_SLACK = 2.0  # beyond limits.cancel_timeout, for the sibling's own forwarding


class SiblingLink:
    """What the server and the admin API of one worker ask of the others."""

    def __init__(self, server: ProxyServer, role: WorkerRole) -> None:
        self.server = server
        self.role = role
        self.siblings = Siblings(role)

    async def route_cancel(self, request: CancelRequest) -> tuple[str, str] | None:
        """The outcome from the sibling whose session holds ``request.pid``, or None when
        none does (or none could be asked)."""
        timeout = float(self.server.cfg["limits.cancel_timeout"]) + _SLACK
        answer = await self.siblings.first(
            "cancel",
            lambda a: isinstance(a, list) and len(a) == 2,
            timeout,
            pid=request.pid,
            secret=request.secret.hex(),
        )
        return (str(answer[0]), str(answer[1])) if answer is not None else None

    async def sessions(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for index, answer in await self.siblings.ask_all("sessions"):
            if isinstance(answer, list):
                out.extend(dict(item, worker=index) for item in answer if isinstance(item, dict))
        return out

    async def session_action(
        self, session_id: str, action: str, reason: str
    ) -> dict[str, Any] | None:
        """Cancel or terminate a sibling's session: its answer, or None when no sibling has
        a session of that id."""
        timeout = float(self.server.cfg["limits.cancel_timeout"]) + _SLACK
        answer = await self.siblings.first(
            "session", _is_dict, timeout, id=session_id, action=action, reason=reason
        )
        return dict(answer) if answer is not None else None

    async def reload_all(self) -> ReloadResult:
        """Reload this worker, then every sibling; one result naming every failure."""
        own = await self.server.reload()
        errors = list(own.errors)
        for index, answer in await self.siblings.ask_all("reload", 60.0):
            if isinstance(answer, BaseException):
                errors.append(f"worker {index}: not reloaded ({answer})")
            elif isinstance(answer, dict) and not answer.get("ok"):
                errors.extend(f"worker {index}: {e}" for e in answer.get("errors", ()))
        return ReloadResult(not errors, tuple(errors), own.policy_files)

    async def requests(self) -> list[Request]:
        """Every sibling's approval requests (snapshots, for listing and rendering)."""
        out: list[Request] = []
        for index, answer in await self.siblings.ask_all("approvals"):
            if isinstance(answer, list):
                try:
                    out.extend(request_from_json(item) for item in answer)
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("worker %d sent an unreadable approval request: %s", index, exc)
        return out

    async def decide(
        self, request_id: str, approver: Approver, approve: bool, reason: str, break_glass: bool
    ) -> Request | None:
        """``approver``'s vote, applied by the sibling whose broker holds ``request_id``; None
        when none does. Raises ApprovalError with the owner's refusal."""
        answer = await self.siblings.first(
            "approval_decide",
            _is_dict,
            id=request_id,
            approver=approver_to_json(approver),
            approve=approve,
            reason=reason,
            break_glass=break_glass,
        )
        if answer is None:
            return None
        if "error" in answer:
            raise ApprovalError(str(answer["error"]), int(answer["status"]))
        return request_from_json(answer["request"])

    async def ready(self) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        for index, answer in await self.siblings.ask_all("ready"):
            if isinstance(answer, dict):
                checks.update({f"worker {index} {name}": bool(ok) for name, ok in answer.items()})
            else:
                checks[f"worker {index}"] = False  # restarting, or stuck
        return checks

    async def metrics(self, own: bytes) -> bytes:
        pages: list[tuple[int, bytes]] = [(self.role.index, own)]
        for index, answer in await self.siblings.ask_all("metrics"):
            if isinstance(answer, str):
                pages.append((index, answer.encode()))
        return merge_expositions(pages)


async def attach_worker(server: ProxyServer, role: WorkerRole, extras: list[Any]) -> SiblingServer:
    """Wire ``server`` (a started worker) to its siblings; the returned channel is closed
    with the other extras."""
    link = SiblingLink(server, role)
    server.siblings = link
    if server.central_store is not None:
        for sink in server.central_store.sinks:
            sink.siblings = partial(trail_ids, role.audit_root)
    if role.leads and server.alerts is not None:
        from proxy.workers.alerts import feed_from_siblings

        server.spawn(feed_from_siblings(role, server.alerts.feed))

    def share_login(outcome: str, address: str, user: str, now: float) -> None:
        server.spawn(
            link.siblings.ask_all("login", outcome=outcome, address=address, user=user, now=now)
        )

    server.limiter.share = share_login
    admin = _admin_of(extras)
    metrics: Metrics
    if admin is not None:
        metrics = admin.metrics
        server.state.siblings = link
        server.state.reload = link.reload_all
        admin.approvals.remote = link
        admin.console.remote = link
    else:
        from proxy.metrics import Metrics

        metrics = Metrics(server.state, server.trail, server.central_store)

    async def cancel(request: dict[str, Any]) -> list[str] | None:
        routed = await server.route_cancel_here(
            CancelRequest(int(request["pid"]), bytes.fromhex(str(request["secret"])))
        )
        return list(routed) if routed is not None else None

    async def reload(request: dict[str, Any]) -> dict[str, Any]:
        result = await server.reload()
        return {"ok": result.ok, "errors": list(result.errors)}

    async def sessions(request: dict[str, Any]) -> list[dict[str, Any]]:
        from proxy.admin.app import session_json

        now = time.time()
        return [session_json(s, now) for s in list(server.state.sessions.values())]

    async def session(request: dict[str, Any]) -> dict[str, Any] | None:
        found = server.state.sessions.get(str(request["id"]))
        if found is None:
            return None
        answer: dict[str, Any] = {"session_id": found.session_id, "user": found.identity.user}
        if request["action"] == "cancel":
            answer["cancelled"] = await found.cancel()
        elif request["action"] == "terminate":
            found.terminate(str(request["reason"]))
            answer["terminated"] = True
        else:
            raise ValueError(f"unknown session action {request['action']!r}")
        return answer

    async def approvals(request: dict[str, Any]) -> list[dict[str, Any]]:
        return [request_to_json(r) for r in server.approvals.book]

    async def approval_decide(request: dict[str, Any]) -> dict[str, Any] | None:
        request_id = str(request["id"])
        book = server.approvals.book
        if request_id not in {r.id for r in book}:
            return None
        try:
            decided = server.approvals.decide(
                request_id,
                approver_from_json(request["approver"]),
                bool(request["approve"]),
                str(request["reason"]),
                break_glass=bool(request["break_glass"]),
            )
        except ApprovalError as exc:
            return {"error": str(exc), "status": exc.status}
        return {"request": request_to_json(decided)}

    async def ready(request: dict[str, Any]) -> dict[str, bool]:
        checks = {"audit_trail": bool(server.trail.healthy)}
        if server.central_store is not None:
            checks["store"] = bool(server.central_store.healthy)
        return checks

    async def login(request: dict[str, Any]) -> None:
        address, user, now = str(request["address"]), str(request["user"]), float(request["now"])
        if request["outcome"] == "failed":
            server.limiter.failed(address, user, now, shared=True)
        else:
            server.limiter.succeeded(address, user, now, shared=True)

    async def metrics_page(request: dict[str, Any]) -> str:
        return metrics.exposition().decode()

    channel = SiblingServer(
        role,
        {
            "cancel": cancel,
            "reload": reload,
            "sessions": sessions,
            "session": session,
            "metrics": metrics_page,
            "approvals": approvals,
            "ready": ready,
            "login": login,
            "approval_decide": approval_decide,
        },
    )
    await channel.start()
    log.info("worker %d of %d ready", role.index, role.count)
    return channel


def _is_dict(answer: Any) -> bool:
    return isinstance(answer, dict)


def _admin_of(extras: list[Any]) -> AdminServer | None:
    from proxy.admin.app import AdminServer

    for extra in extras:
        if isinstance(extra, AdminServer) and extra.enabled:
            return extra
    return None
