"""The admin HTTP server (aiohttp).

``GET /healthz``, ``GET /readyz`` and ``GET /metrics`` need no token (liveness and readiness
probes, Prometheus). ``/readyz`` answers 200 when the upstream answers, the audit trail writes
and (when configured) the store accepts batches, else 503; its JSON body names each check.
Everything else needs ``Authorization: Bearer <token>`` (see :mod:`proxy.admin.auth`: a token
is generated at the first start when ``admin.token_file`` is not set):

* ``GET /sessions`` — the live client sessions;
* ``POST /sessions/{id}/cancel`` and ``POST /sessions/{id}/terminate``;
* ``POST /reload`` — reload policies (and alert rules); 200, or 422 with the errors.

``/approvals…`` authenticates per person (see :mod:`proxy.admin.approvals`), and ``/console…``
is the web console with its own login (see :mod:`proxy.console.app`).

Before any of that, every request but the two probes must name the listener in ``Host`` and
carry no foreign ``Origin`` (:mod:`proxy.admin.origin`); failed authentication is rate-limited
per client address; and every state-changing call and every read of statement text is an
``admin`` event in the audit trail, with the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.admin import approvals
from proxy.admin.auth import FailureLimiter, bearer_ok, resolve_token
from proxy.admin.consolemount import ConsoleMount
from proxy.admin.origin import allowed_hosts, refusal
from proxy.approvals.people import People, load_people
from proxy.config import parse_listen
from proxy.console.routes import PREFIX as CONSOLE_PREFIX
from proxy.errors import ConfigError, SourceProblem
from proxy.metrics import Metrics, ShipperLike, TrailLike
from proxy.sql.redact import redact
from proxy.state import ServerState, SessionView

if TYPE_CHECKING:
    from proxy.console.app import Console

log = logging.getLogger("pgwarden.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Probes answer whatever name they were sent to (load balancers, kubelets use addresses).
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# Paths that authenticate each person themselves (personal tokens, console login).
SELF_AUTH_PREFIXES = (approvals.PREFIX, CONSOLE_PREFIX)


def session_json(session: SessionView, now: float) -> dict[str, Any]:
    ident = session.identity
    started = session.statement_started
    return {
        "session_id": session.session_id,
        "user": ident.user,
        "database": ident.database,
        "application_name": ident.application_name,
        "client_addr": ident.client_addr,
        "client_port": ident.client_port,
        "identity": ident.end_identity or None,  # who is behind the role, when known
        "identity_source": ident.identity_source.value if ident.identity_source else None,
        "state": session.state,
        # The session redacts already; again here, so no SessionView can leak one.
        "current_statement": redact(current) if (current := session.current_statement) else current,
        "statement_age_seconds": round(now - started, 6) if started is not None else None,
        "backend_pid": session.backend_pid,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(session.started_at)),
    }


class AdminServer:
    def __init__(
        self,
        cfg: Any,
        state: ServerState,
        trail: TrailLike,
        shipper: ShipperLike | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.state = state
        self.trail = trail
        self.shipper = shipper
        self.metrics = metrics or Metrics(state, trail, shipper)
        if shipper is not None and self.metrics.shipper is None:
            self.metrics.attach_shipper(shipper)
        listen = str(cfg["admin.listen"]).strip()
        self.enabled = bool(listen)
        self.host = ""
        self.port = 0
        self.token: str | None = None
        self.token_path = ""
        self._token_generated = False
        self._allowed: frozenset[str] | None = frozenset()
        self._failures = FailureLimiter()
        self._refusals = FailureLimiter()  # bounds the audit events of refused requests
        if self.enabled:
            try:
                endpoint = parse_listen(listen)
            except ValueError as exc:
                raise ConfigError([SourceProblem("", 0, 0, str(exc), "admin.listen")]) from None
            self.host, self.port = endpoint.host, endpoint.port
            source = resolve_token(str(cfg["admin.token_file"]), self.host, str(cfg["audit.dir"]))
            self.token, self.token_path = source.token, source.path
            self._token_generated = source.generated
        people_file = str(cfg["approvals.approvers_file"])
        self.people = load_people(people_file) if people_file else People()
        self.approvals = approvals.ApprovalsApi(
            state.approvals, self.people, self.token, audit=self._audit, failures=self._failures
        )
        store: tuple[str, str] | None = None
        if cfg["console.store"]:
            sinks = cfg["audit.sinks"]
            if not sinks:
                raise ConfigError([SourceProblem(
                    "", 0, 0, "console.store needs a store in audit.sinks", "console.store"
                )])  # fmt: skip
            store = (str(sinks[0]["dsn"]), str(sinks[0].get("schema", "public")))

        def build_console() -> Console:
            from proxy.console.app import Console

            return Console(
                audit_dir=str(cfg["audit.dir"]),
                store=store,
                broker=state.approvals,
                people=self.people,
                admin_token=self.token,
                host=self.host,
                explain_dsn=str(cfg["approvals.explain_dsn"]),
                audit=self._audit,
                failures=self._failures,
            )

        self.console = ConsoleMount(build_console)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard, self._auth])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/sessions", self.sessions)
        app.router.add_post("/sessions/{id}/cancel", self.cancel)
        app.router.add_post("/sessions/{id}/terminate", self.terminate)
        app.router.add_post("/reload", self.reload)
        self.approvals.add_routes(app)
        self.console.add_routes(app)
        return app

    async def start(self) -> None:
        if not self.enabled:
            return
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError([SourceProblem(
                "", 0, 0, f"cannot listen on {self.host}:{self.port}: {exc}",
                "admin.listen",
            )]) from None  # fmt: skip
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        self._allowed = allowed_hosts(self.host, self.port)
        if self._token_generated:
            log.warning("admin API: generated a token in %s (mode 0600); send it as "
                        "'Authorization: Bearer <token>'", self.token_path)  # fmt: skip
        log.info("admin API listening on %s:%d (token in %s)", self.host, self.port,
                 self.token_path)  # fmt: skip

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- middleware --------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PROBE_PATHS:
            return await handler(request)
        reason = refusal(request.headers.get("Host"), request.headers.get("Origin"), self._allowed)
        if not reason and request.headers.get("Sec-Fetch-Site") == "cross-site":
            reason = "cross-site request (Sec-Fetch-Site)"
        if reason:
            self._refused(request, "refused", reason)
            return web.json_response({"error": "forbidden", "reason": reason}, status=403)
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            self.token is None
            or request.path in OPEN_PATHS
            or request.path.startswith(SELF_AUTH_PREFIXES)
        ):
            return await handler(request)
        address = request.remote or ""
        wait = self._failures.blocked(address)
        if wait:
            self._refused(request, "rate_limited", "too many failed authentications")
            return web.json_response(
                {"error": "too many failed authentications"},
                status=429,
                headers={"Retry-After": str(int(wait) + 1)},
            )
        ok, reason = bearer_ok(request.headers.get("Authorization"), self.token)
        if not ok:
            self._failures.failed(address)
            self._refused(request, "auth_failed", reason)
            return web.json_response(
                {"error": "unauthorized"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="pgwarden"'},
            )
        return await handler(request)

    # --- the audit trail -----------------------------------------------------------------

    def _audit(self, request: web.Request, action: str, **fields: Any) -> None:
        """An ``admin`` event: who (address, user agent; the token holder) did what."""
        event: dict[str, Any] = {
            "v": 1,
            "type": "admin",
            "proxy_id": self.state.proxy_id,
            "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "action": action,
            "method": request.method,
            "path": request.path,
            "client_addr": request.remote,
            "user_agent": request.headers.get("User-Agent"),
            **fields,
        }
        self.trail.submit(event)

    def _refused(self, request: web.Request, action: str, reason: str) -> None:
        log.warning("admin API: %s %s %s from %s: %s", action, request.method, request.path,
                    request.remote, reason)  # fmt: skip
        # At most a few events per address and minute: a scan must not fill the disk.
        if self._refusals.failed(request.remote or "") <= self._refusals.limit:
            self._audit(request, action, caller=None, reason=reason)

    # --- handlers ----------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = self.metrics.exposition()
        if self.state.siblings is not None:
            body = await self.state.siblings.metrics(body)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, bool] = {}
        upstream_ok = self.state.upstream_ok
        try:
            checks["upstream"] = bool(await upstream_ok()) if upstream_ok else True
        except Exception:  # a failing probe means "not ready", never a 500
            log.exception("upstream readiness probe failed")
            checks["upstream"] = False
        checks["audit_trail"] = bool(self.trail.healthy)
        if self.shipper is not None:
            checks["store"] = bool(self.shipper.healthy)
        if self.state.siblings is not None:
            checks.update(await self.state.siblings.ready())
        ready = all(checks.values())
        failed = [name for name, ok in checks.items() if not ok]
        body: dict[str, object] = {"ready": ready, "checks": checks, "failed": failed}
        if self.shipper is not None and self.shipper.conflicts:
            # Loud but not "not ready": both trails are stored in full, and taking every
            # proxy of a misnamed pair out of service would turn a naming problem into an outage.
            body["warnings"] = list(self.shipper.conflicts)
        return web.json_response(body, status=200 if ready else 503)

    async def sessions(self, request: web.Request) -> web.Response:
        now = time.time()
        items = [session_json(s, now) for s in list(self.state.sessions.values())]
        if self.state.siblings is not None:
            for item in items:
                item["worker"] = 0
            items += await self.state.siblings.sessions()
        items.sort(key=lambda item: (item["started_at"], item["session_id"]))
        # A read of statement text: recorded, with the sessions whose statements were shown.
        shown = [item["session_id"] for item in items if item["current_statement"]]
        self._audit(request, "sessions", caller="admin-token", sessions=len(items),
                    statements_of=shown)  # fmt: skip
        return web.json_response(items)

    def _session(self, request: web.Request, action: str) -> SessionView:
        target = request.match_info["id"]
        session = self.state.sessions.get(target)
        if session is None:
            self._audit(request, action, caller="admin-token", target_session=target,
                        result="no such session")  # fmt: skip
            raise web.HTTPNotFound(
                text='{"error": "no such session"}', content_type="application/json"
            )
        return session

    async def _sibling_session(
        self, request: web.Request, action: str, reason: str = ""
    ) -> web.Response | None:
        """Cancel or terminate a session another worker holds; None when none holds it."""
        siblings = self.state.siblings
        target = request.match_info["id"]
        if siblings is None or target in self.state.sessions:
            return None
        answer = await siblings.session_action(target, action, reason)
        if answer is None:
            return None
        done = "cancelled" if action == "cancel" else "terminated"
        result = ("sent" if answer.get(done) else "nothing running") if action == "cancel" else done
        self._audit(request, action, caller="admin-token", target_session=target,
                    target_user=answer.get("user"), result=result)  # fmt: skip
        log.info("admin API: %s of session %s from %s: %s", action, target, request.remote,
                 result)  # fmt: skip
        return web.json_response({"session_id": target, done: bool(answer.get(done))})

    async def cancel(self, request: web.Request) -> web.Response:
        elsewhere = await self._sibling_session(request, "cancel")
        if elsewhere is not None:
            return elsewhere
        session = self._session(request, "cancel")
        cancelled = await session.cancel()
        self._audit(request, "cancel", caller="admin-token", target_session=session.session_id,
                    target_user=session.identity.user,
                    result="sent" if cancelled else "nothing running")  # fmt: skip
        log.info("admin API: cancel of session %s from %s: %s", session.session_id,
                 request.remote, "sent" if cancelled else "nothing running")  # fmt: skip
        return web.json_response({"session_id": session.session_id, "cancelled": cancelled})

    async def terminate(self, request: web.Request) -> web.Response:
        elsewhere = await self._sibling_session(
            request, "terminate", f"terminated by administrator (admin API, {request.remote})"
        )
        if elsewhere is not None:
            return elsewhere
        session = self._session(request, "terminate")
        self._audit(request, "terminate", caller="admin-token", target_session=session.session_id,
                    target_user=session.identity.user, result="terminated")  # fmt: skip
        session.terminate(f"terminated by administrator (admin API, {request.remote})")
        log.info("admin API: terminated session %s from %s", session.session_id, request.remote)
        return web.json_response({"session_id": session.session_id, "terminated": True})

    async def reload(self, request: web.Request) -> web.Response:
        reload = self.state.reload
        if reload is None:
            return web.json_response({"ok": False, "errors": ["reload is not available"]},
                                     status=503)  # fmt: skip
        result = await reload()
        self._audit(request, "reload", caller="admin-token",
                    result="ok" if result.ok else "failed", errors=len(result.errors))  # fmt: skip
        body = {
            "ok": result.ok,
            "errors": list(result.errors),
            "policy_files": list(result.policy_files),
        }
        log.info("admin API: reload from %s: %s", request.remote,
                 "ok" if result.ok else f"{len(result.errors)} error(s)")  # fmt: skip
        return web.json_response(body, status=200 if result.ok else 422)
