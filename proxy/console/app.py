"""The web console, served by the admin listener under ``/console``.

Server-rendered pages (Jinja2, autoescaped), plain HTML forms, one stylesheet, no script at
all: the Content-Security-Policy forbids scripts, frames and foreign form targets. Pages:

* ``/console/`` — overview: the report's charts and top tables for the last hours;
* ``/console/statements`` — search with the ``pgwarden logs`` filters, newest first, paginated;
* ``/console/events/{seq}`` — one full audit record;
* ``/console/sessions/{id}`` — one session's timeline;
* ``/console/reviews`` and ``/console/reviews/{id}`` — the review queue, a request with its
  votes, similar past statements, EXPLAIN on request, approve/deny forms.

Reading the trail is blocking I/O and runs in a worker thread. Votes go through the same
:class:`~proxy.approvals.broker.ApprovalBroker` rules as the CLI and the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web
from markupsafe import Markup

from proxy.admin.approvals import Audit, no_audit
from proxy.admin.auth import FailureLimiter, is_loopback
from proxy.approvals.broker import ApprovalBroker
from proxy.approvals.model import Approver, RequestState
from proxy.approvals.model import Request as ApprovalRequest
from proxy.approvals.people import People
from proxy.console import explain
from proxy.console.auth import COOKIE, LIFETIME, LOGIN_COOKIE, Gatekeeper, Login, Signer
from proxy.console.data import FIELDS, FilterError, TrailReader, filter_from_form, with_page
from proxy.console.routes import PREFIX, ROUTES, Route, register
from proxy.errors import ApprovalError
from proxy.review import svg
from proxy.review.render_html import section_html
from proxy.review.tables import report_tables, summary_items
from proxy.state import RemoteApprovals

log = logging.getLogger("pgwarden.console")

CSP = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chrome send Origin: null
    "Cache-Control": "no-store",
}
OVERVIEW_HOURS = (1, 6, 24, 168)
MAX_FORM = 64 * 1024


class Console:
    def __init__(
        self,
        *,
        audit_dir: str,
        broker: ApprovalBroker | None,
        store: tuple[str, str] | None = None,
        people: People,
        admin_token: str | None,
        host: str,
        explain_dsn: str = "",
        signer: Signer | None = None,
        audit: Audit = no_audit,
        failures: FailureLimiter | None = None,
    ) -> None:
        self.gate = Gatekeeper(people, admin_token, signer or Signer())
        # Logins, reads of statement text and decisions become `admin` events; failed logins
        # count against the same per-address limit as the admin API's tokens.
        self.audit = audit
        self.failures = failures or FailureLimiter()
        self.reader = TrailReader(audit_dir, store)
        self.broker = broker
        # With workers: the requests the other workers hold (set by proxy.workers).
        self.remote: RemoteApprovals | None = None
        self._remote_pending = 0  # as of the last look, for the header's count
        self.explain_dsn = explain_dsn
        # Nobody can log in and the listener is reachable from elsewhere: refuse to serve.
        self.refused = self.gate.open and not is_loopback(host)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("proxy.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
        self.env.globals["url"] = _url
        self.css = resources.files("proxy.console").joinpath("static/console.css").read_bytes()

    def add_routes(self, app: web.Application) -> None:
        for route in ROUTES:
            register(app, route, self.handler(route))

    def handler(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """What answers ``route``: the named method, behind the login when it is a page."""
        method = getattr(self, route.handler)
        return self._page(method, post=route.method == "POST") if route.page else method

    # --- plumbing ------------------------------------------------------------------------

    Handler = Callable[[web.Request, Login, dict[str, str]], Awaitable[web.StreamResponse]]

    def _page(self, handler: Handler, post: bool = False) -> Callable[..., Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if self.refused:
                return self._plain(
                    403,
                    "the console is off: this listener is not on loopback and nobody can log in "
                    "(set admin.token_file and approvals.approvers_file)",
                )
            login = self.gate.login(request.cookies.get(COOKIE))
            if login is None:
                target = request.path_qs if request.method == "GET" else PREFIX + "/"
                raise web.HTTPSeeOther(PREFIX + "/login?" + urlencode({"next": target}))
            form: dict[str, str] = {}
            if post:
                form = await self._form(request)
                if not self._same_origin(request) or form.get("csrf") != self.gate.signer.csrf(
                    login.nonce
                ):
                    log.warning(
                        "console: refused a %s without a valid CSRF token from %s",
                        request.path,
                        request.remote,
                    )
                    self.audit(
                        request,
                        "refused",
                        caller=login.person.name,
                        reason="form without a valid CSRF token or from another origin",
                    )
                    return self._plain(403, "this form has expired or came from another site")
            response = await handler(request, login, form)
            response.headers.update(SECURITY_HEADERS)
            # Every page past the overview shows statement text (or decides): recorded.
            if request.path != PREFIX + "/":
                self.audit(
                    request,
                    "console_" + handler.__name__,
                    caller=login.person.name,
                    query=dict(request.query) or None,
                    status=response.status,
                )
            return response

        return wrapped

    async def _form(self, request: web.Request) -> dict[str, str]:
        if request.content_length is not None and request.content_length > MAX_FORM:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_FORM, actual_size=request.content_length
            )
        data = await request.post()
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # no Origin (older browsers, curl): the CSRF token decides
        return urlsplit(origin).netloc == request.host

    def _plain(self, status: int, text: str) -> web.Response:
        response = web.Response(status=status, text=text + "\n")
        response.headers.update(SECURITY_HEADERS)
        return response

    def render(self, name: str, login: Login | None, status: int = 200, **ctx: Any) -> web.Response:
        template = self.env.get_template(name)
        html = template.render(
            login=login,
            csrf=self.gate.signer.csrf(login.nonce) if login is not None else "",
            pending=(len(self.broker.book.pending()) + self._remote_pending)
            if self.broker is not None
            else 0,
            **ctx,
        )
        response = web.Response(status=status, text=html, content_type="text/html")
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _to_root(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther(PREFIX + "/")

    async def stylesheet(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.css, content_type="text/css")
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "max-age=3600"
        return response

    # --- login ---------------------------------------------------------------------------

    async def login_page(
        self, request: web.Request, error: str = "", status: int = 200
    ) -> web.Response:
        cookie, form_value = self.gate.signer.login_nonce()
        response = self.render(
            "login.html",
            None,
            status=status,
            error=error,
            login_nonce=form_value,
            next=_safe_next(request.query.get("next", "")),
            open=self.gate.open,
            passwords=self.gate.people.passwords,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            cookie,
            httponly=True,
            samesite="Strict",
            path=PREFIX,
            secure=request.secure,
        )
        return response

    async def login_post(self, request: web.Request) -> web.StreamResponse:
        form = await self._form(request)
        if not self._same_origin(request) or not self.gate.signer.login_ok(
            request.cookies.get(LOGIN_COOKIE), form.get("login_nonce", "")
        ):
            return await self.login_page(request, "the login form expired; try again", 403)
        address = request.remote or ""
        if self.failures.blocked(address):
            self.audit(request, "console_login", caller=None, result="rate_limited")
            return await self.login_page(request, "too many failed logins; wait a minute", 429)
        found: tuple[Approver, str] | None = None
        if form.get("token"):
            found = self.gate.check_token(form["token"])
        elif form.get("name") and form.get("password"):
            person = await self._blocking(self.gate.people.by_password, form["name"],
                                          form["password"])  # fmt: skip
            found = (person, "password") if person is not None else None
        if found is None:
            log.warning("console: failed login from %s", request.remote)
            self.failures.failed(address)
            self.audit(request, "console_login", caller=None, result="unknown token or password")
            await asyncio.sleep(0.5)  # slows guessing; tokens are long anyway
            return await self.login_page(request, "unknown token, or wrong name or password", 401)
        person, via = found
        log.info("console: %s logged in from %s", person.name, request.remote)
        self.audit(request, "console_login", caller=person.name, result="ok", via=via)
        response = _redirect(_safe_next(form.get("next", "")) or PREFIX + "/")
        response.set_cookie(
            COOKIE,
            self.gate.signer.sign(person.name, via, time.time()),
            httponly=True,
            samesite="Strict",
            path=PREFIX,
            secure=request.secure,
            max_age=int(LIFETIME),
        )
        response.del_cookie(LOGIN_COOKIE, path=PREFIX)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def logout(
        self, request: web.Request, login: Login, form: dict[str, str]
    ) -> web.StreamResponse:
        response = _redirect(PREFIX + "/login")
        response.del_cookie(COOKIE, path=PREFIX)
        return response

    # --- pages ---------------------------------------------------------------------------

    async def overview(
        self, request: web.Request, login: Login, form: dict[str, str]
    ) -> web.Response:
        try:
            hours = float(request.query.get("hours", "24"))
        except ValueError:
            hours = 24.0
        hours = min(max(hours, 0.25), 24 * 31)
        report = await self._blocking(self.reader.overview, hours)
        return self.render(
            "overview.html",
            login,
            hours=hours,
            choices=OVERVIEW_HOURS,
            cards=summary_items(report),
            timeline=Markup(svg.timeline_chart(report.timeline, report.timeline_bucket_seconds)),
            latency=Markup(svg.latency_chart(report.latency_bins)),
            tables=[Markup(section_html(t)) for t in report_tables(report)[:4]],
        )

    async def statements(
        self, request: web.Request, login: Login, form: dict[str, str]
    ) -> web.Response:
        query = {k: v for k, v in request.query.items()}
        error = ""
        try:
            page = max(int(query.get("page", "0") or 0), 0)
        except ValueError:
            page = 0
        try:
            selection = filter_from_form(query)
        except FilterError as exc:
            error = str(exc)
            result = None
        else:
            result = await self._blocking(self.reader.search, selection, page)
        return self.render(
            "statements.html",
            login,
            status=400 if error else 200,
            fields=[name for name, _f, _r in FIELDS],
            query=query,
            error=error,
            result=result,
            older=urlencode(with_page(query, page + 1)),
            newer=urlencode(with_page(query, page - 1)) if page else "",
        )

    async def event(self, request: web.Request, login: Login, form: dict[str, str]) -> web.Response:
        seq = int(request.match_info["seq"])
        found = await self._blocking(
            self.reader.event, seq, request.query.get("proxy", ""), request.query.get("ts", "")
        )
        if found is None:
            return self.render("error.html", login, status=404, message=f"no event with seq {seq}")
        return self.render("event.html", login, event=found)

    async def session(
        self, request: web.Request, login: Login, form: dict[str, str]
    ) -> web.Response:
        session_id = request.match_info["id"]
        events = await self._blocking(self.reader.session, session_id)
        if not events:
            return self.render(
                "error.html", login, status=404, message=f"no events for session {session_id}"
            )
        first = events[0]
        return self.render("session.html", login, session_id=session_id, events=events, first=first)

    async def reviews(
        self, request: web.Request, login: Login, form: dict[str, str]
    ) -> web.Response:
        requests = await self._requests()
        pending = [r for r in requests if r.state is RequestState.PENDING]
        decided = [r for r in requests if r.state is not RequestState.PENDING][:100]
        return self.render("reviews.html", login, queue=pending, decided=decided, now=time.time())

    async def _requests(self) -> list[ApprovalRequest]:
        """Every request, newest first: this worker's and (workers) the others'."""
        if self.broker is None:
            return []
        requests = list(self.broker.book)
        if self.remote is not None:
            remote = await self.remote.requests()
            self._remote_pending = sum(r.state is RequestState.PENDING for r in remote)
            requests = sorted([*requests, *remote], key=lambda r: r.created_at, reverse=True)
        return requests

    async def _find(self, request: web.Request, login: Login) -> ApprovalRequest | web.Response:
        """The request the URL names, or the error page saying why there is none."""
        if self.broker is None:
            return self.render("error.html", login, status=503, message="approvals are not running")
        wanted = request.match_info["id"]
        try:
            return self.broker.book.get(wanted)
        except ApprovalError as exc:
            if self.remote is not None:
                for found in await self._requests():
                    if found.id == wanted:
                        return found
            return self.render("error.html", login, status=exc.status, message=str(exc))

    async def review(
        self,
        request: web.Request,
        login: Login,
        form: dict[str, str],
        *,
        message: str = "",
        error: str = "",
        status: int = 200,
        plan: explain.Plan | None = None,
    ) -> web.Response:
        found = await self._find(request, login)
        if isinstance(found, web.Response):
            return found
        similar = await self._blocking(self.reader.similar, found.fingerprint)
        person = login.person
        return self.render(
            "review.html",
            login,
            status=status,
            r=found,
            similar=similar,
            verdict=request.query.get("verdict", ""),
            message=message or _done_message(request.query.get("done", ""), found, person.name),
            error=error,
            plan=plan,
            explain_refusal=explain.why_not(found, self.explain_dsn),
            may_decide=person.role == "approver"
            and found.spec.allows(person.name, person.groups)
            and person.name != found.requester,
            may_break_glass=person.role == "approver"
            and found.spec.may_break_glass(person.name, person.groups)
            and person.name != found.requester,
            now=time.time(),
        )

    async def decide(
        self, request: web.Request, login: Login, form: dict[str, str]
    ) -> web.Response:
        if self.broker is None:
            return self.render("error.html", login, status=503, message="approvals are not running")
        request_id = request.match_info["id"]
        verdict = form.get("verdict")
        if verdict not in ("approve", "deny"):
            return await self.review(
                request, login, form, error="choose approve or deny", status=400
            )
        approve, reason = verdict == "approve", form.get("reason", "")
        break_glass = form.get("break_glass") == "on"
        try:
            decided = None
            if self.remote is not None and request_id not in {r.id for r in self.broker.book}:
                decided = await self.remote.decide(
                    request_id, login.person, approve, reason, break_glass
                )
            if decided is None:
                self.broker.decide(
                    request_id, login.person, approve, reason, break_glass=break_glass
                )
        except ApprovalError as exc:
            log.warning(
                "console: %s refused for %s on %s: %s", verdict, login.person.name, request_id, exc
            )
            return await self.review(request, login, form, error=str(exc), status=exc.status)
        log.info("console: %s %s %s", login.person.name, verdict, request_id)
        return _redirect(f"{PREFIX}/reviews/{request_id}?" + urlencode({"done": verdict}))

    async def explain(
        self, request: web.Request, login: Login, form: dict[str, str]
    ) -> web.Response:
        found = await self._find(request, login)
        if isinstance(found, web.Response):
            return found
        log.info("console: %s asked for EXPLAIN of %s", login.person.name, found.id)
        plan = await explain.explain(found, self.explain_dsn)
        return await self.review(request, login, form, plan=plan)


def _done_message(verdict: str, request: ApprovalRequest, name: str) -> str:
    """The confirmation after a vote: shown only when this person's vote is on the request
    (the URL says which message, never its text)."""
    past = {"approve": "approved", "deny": "denied"}.get(verdict)
    voted = any(v.approver == name and v.approve == (verdict == "approve") for v in request.votes)
    return f"you {past} this request; it is now {request.state.value}" if past and voted else ""


def _redirect(location: str) -> web.Response:
    """A 303 that can carry cookies (raising HTTPSeeOther cannot, portably)."""
    response = web.Response(status=303, headers={"Location": location})
    response.headers.update(SECURITY_HEADERS)
    return response


def _url(path: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return PREFIX + path + (f"?{query}" if query else "")


def _safe_next(target: str) -> str:
    """Only console paths: never an open redirect to another site."""
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return ""
