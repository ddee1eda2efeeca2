"""The web console over HTTP (no browser): login, CSRF, roles, search with the logs filters,
session timeline, review queue and deciding, escaping of hostile text, refusal to serve
unauthenticated on a non-loopback address. The real-browser test is
tests/e2e/test_console_browser.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from proxy.approvals.broker import ApprovalBroker
from proxy.approvals.people import load_people
from proxy.console.app import Console
from proxy.identity import Identity
from proxy.policy.review import ReviewSpec
from tests.report_trail import ALICE as ALICE_S
from tests.report_trail import BOB as BOB_S
from tests.report_trail import Trail, write_trail
from tests.test_admin_approvals import ADMIN, TOKENS, people_file

SPEC = ReviewSpec(
    "review-deletes", frozenset({"carol"}), (("dba", frozenset({"alice", "bob"})),), approvals=1
)
HOSTILE = "SELECT '<script>alert(1)</script>' AS x"


def trail(tmp_path: Path, extra: list[dict[str, Any]] | None = None) -> Path:
    since = datetime.now(UTC) - timedelta(hours=1)  # inside the overview's default 24 h
    t = Trail()
    t.session_start(since, ALICE_S)
    t.query(since + timedelta(seconds=1), ALICE_S, "SELECT * FROM accounts WHERE id = 1", 1.5)
    t.query(since + timedelta(seconds=2), ALICE_S, HOSTILE, 0.3)
    t.session_end(since + timedelta(seconds=3), ALICE_S, 2)
    t.session_start(since, BOB_S)
    t.query(since + timedelta(seconds=5), BOB_S, "DELETE FROM accounts", 0.1, action="block",
            rules=[("no-delete-without-where", "block", "high")], sqlstate="42501",
            error="no", command="DELETE")  # fmt: skip
    return write_trail(tmp_path / "audit", t.events + (extra or []))


class Browser:
    """An aiohttp client that keeps cookies and reads forms' CSRF tokens like a browser."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.base + path) as r:
            return r.status, await r.text()

    async def post(self, path: str, data: dict[str, str], **kw: Any) -> tuple[int, str]:
        async with self.http.post(self.base + path, data=data, **kw) as r:
            return r.status, await r.text()

    async def login(self, token: str) -> tuple[int, str]:
        _, page = await self.get("/console/login")
        nonce = re.search(r'name="login_nonce" value="([^"]+)"', page)
        assert nonce is not None
        return await self.post("/console/login", {"login_nonce": nonce.group(1), "token": token})

    @staticmethod
    def csrf(page: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found is not None
        return found.group(1)


@asynccontextmanager
async def console(
    tmp_path: Path,
    *,
    host: str = "127.0.0.1",
    with_people: bool = True,
    admin: str | None = ADMIN,
    audit: list[dict[str, Any]] | None = None,
    people: Path | None = None,
    remote: Any = None,
    extra: list[dict[str, Any]] | None = None,
) -> AsyncIterator[tuple[ApprovalBroker, Browser]]:
    broker = ApprovalBroker("p", lambda e: None, console_url="http://x")
    from proxy.approvals.people import People

    app = web.Application()
    made = Console(
        audit_dir=str(trail(tmp_path, extra)),
        broker=broker,
        people=load_people(people or people_file(tmp_path)) if with_people else People(),
        admin_token=admin,
        host=host,
        audit=lambda request, action, **fields: (audit if audit is not None else []).append(
            {"action": action, **fields}
        ),
    )
    made.remote = remote  # the other workers' requests (proxy.workers), when given
    made.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            yield broker, Browser(http, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def test_login_is_required_and_a_wrong_token_is_refused(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []

    async def scenario() -> None:
        async with console(tmp_path, audit=events) as (_broker, b):
            status, page = await b.get("/console/statements")
            assert status == 200 and 'id="login"' in page  # redirected to the login form
            status, page = await b.login("pgw_nobody-0000000000")
            assert status == 401 and "unknown token" in page
            # A login post without the form's nonce is refused (login CSRF).
            assert (await b.post("/console/login", {"token": TOKENS["bob"]}))[0] == 403
            status, page = await b.login(TOKENS["bob"])
            assert status == 200 and '<span id="whoami">bob</span>' in page
            # Logging out needs the CSRF token too.
            assert (await b.post("/console/logout", {}))[0] == 403
            assert (await b.post("/console/logout", {"csrf": b.csrf(page)}))[0] == 200
            status, page = await b.get("/console/reviews")
            assert 'id="login"' in page

    asyncio.run(scenario())
    # Logins (failed too) and every page showing statement text are `admin` events.
    assert [(e["action"], e["caller"], e.get("result")) for e in events] == [
        ("console_login", None, "unknown token or password"),
        ("console_login", "bob", "ok"),
        ("refused", "bob", None),
        ("console_logout", "bob", None),
    ]


def test_search_uses_the_logs_filters_and_escapes_hostile_text(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console(tmp_path) as (_broker, b):
            await b.login(TOKENS["vera"])
            status, page = await b.get("/console/statements?user=alice&type=query")
            assert status == 200
            rows = re.findall(r'class="seq">(\d+)<', page)
            assert rows == ["3", "2"]  # newest first
            assert "<script>alert(1)</script>" not in page
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
            status, page = await b.get("/console/statements?action=block&table=nope")
            assert "no matching events" in page
            status, page = await b.get("/console/statements?action=block")
            assert re.findall(r'class="seq">(\d+)<', page) == ["6"]
            status, page = await b.get("/console/statements?min-duration=soon")
            assert status == 400 and "expected milliseconds such as 50" in page
            status, page = await b.get("/console/events/3")
            assert status == 200 and "&lt;script&gt;" in page and "&#34;seq&#34;: 3" in page
            status, page = await b.get("/console/sessions/s1")
            assert status == 200 and "session start" in page and "session end" in page
            assert page.count('class="seq">#') == 4
            assert (await b.get("/console/sessions/nope"))[0] == 404
            status, page = await b.get("/console/")
            assert status == 200 and "<svg" in page and "Statements over time" in page

    asyncio.run(scenario())


def test_deciding_from_the_console_follows_the_broker_rules(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console(tmp_path) as (broker, b):
            who = Identity("alice", "app", "psql", "127.0.0.1", 1, "s1")
            request = broker.request(
                SPEC, text="DELETE FROM t", identity=who, statement="DELETE FROM t"
            )
            waiter = asyncio.ensure_future(broker.wait(request.id))
            page_path = f"/console/reviews/{request.id}"
            # The requester sees no buttons, and a forged post is refused with the reason.
            _, page = await b.login(TOKENS["alice"])
            status, page = await b.get(page_path)
            assert 'id="approve"' not in page and "someone else must decide it" in page
            status, page = await b.post(
                page_path + "/decide", {"csrf": b.csrf(page), "verdict": "approve"}
            )
            assert status == 403 and "alice asked for this statement" in page
            # bob: a form from another origin, or without the token, does nothing.
            _, page = await b.login(TOKENS["bob"])
            _, page = await b.get(page_path + "?verdict=approve&done=approve")
            assert 'class="approve chosen"' in page
            assert 'id="done"' not in page  # no vote of bob's yet: a crafted link claims nothing
            token = b.csrf(page)
            status, _ = await b.post(page_path + "/decide", {"verdict": "approve"})
            assert status == 403
            status, _ = await b.post(
                page_path + "/decide",
                {"csrf": token, "verdict": "approve"},
                headers={"Origin": "http://evil.example"},
            )
            assert status == 403 and not waiter.done()
            status, page = await b.post(
                page_path + "/decide", {"csrf": token, "verdict": "approve", "reason": "ok"}
            )
            assert status == 200 and "you approved this request; it is now approved" in page
            outcome = await asyncio.wait_for(waiter, 2)
            assert outcome.forward and outcome.request.approved_by == ("bob",)
            _, page = await b.get("/console/reviews")
            assert "nothing is waiting" in page and request.id in page

    asyncio.run(scenario())


def test_open_console_only_on_loopback(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console(tmp_path, with_people=False, admin=None) as (_broker, b):
            status, page = await b.get("/console/statements")
            assert status == 200 and '<span id="whoami">local</span>' in page
        async with console(tmp_path / "x", host="0.0.0.0", with_people=False, admin=None) as (
            _b,
            b,
        ):
            status, page = await b.get("/console/")
            assert status == 403 and "the console is off" in page

    asyncio.run(scenario())


def test_login_by_name_and_password(tmp_path: Path, capsys: Any) -> None:
    """`pgwarden approvals new-password` makes the entry; the console checks it."""
    import io
    import sys

    from proxy.cli import main

    stdin, sys.stdin = sys.stdin, io.StringIO("correct horse battery\n")
    try:
        assert main(["approvals", "new-password", "erin"]) == 0
    finally:
        sys.stdin = stdin
    entry = capsys.readouterr().out
    (tmp_path / "p").mkdir()
    people = people_file(tmp_path / "p")
    people.write_text(people.read_text() + entry)
    assert load_people(people).by_password("erin", "correct horse battery") is not None
    assert load_people(people).by_password("erin", "wrong horse battery") is None
    assert load_people(people).by_password("nobody", "correct horse battery") is None
    assert load_people(people).by_password("bob", "anything at all") is None  # no password

    async def scenario() -> None:
        async with console(tmp_path, people=people) as (_broker, b):
            _, page = await b.get("/console/login")
            assert 'id="password"' in page
            nonce = re.search(r'name="login_nonce" value="([^"]+)"', page)
            assert nonce is not None
            form = {"login_nonce": nonce.group(1), "name": "erin", "password": "wrong"}
            status, page = await b.post("/console/login", form)
            assert status == 401 and "wrong name or password" in page
            nonce = re.search(r'name="login_nonce" value="([^"]+)"', page)
            assert nonce is not None
            form = {**form, "login_nonce": nonce.group(1), "password": "correct horse battery"}
            status, page = await b.post("/console/login", form)
            assert status == 200 and '<span id="whoami">erin</span>' in page

    asyncio.run(scenario())


def test_dispatch_records_are_left_out_and_unknown_outcomes_shown(tmp_path: Path) -> None:
    from proxy.audit.dispatch import closing_record

    ts = (datetime.now(UTC) - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sent = {"v": 1, "type": "dispatch", "ts": ts, "proxy_id": "p", "session_id": "s9",
            "user": "alice", "database": "app", "statement": "UPDATE accounts SET x = 1",
            "decision": {"action": "allow", "rules": []}, "seq": 7}  # fmt: skip
    unknown = closing_record(sent, "unknown", "proxy_restarted") | {"seq": 8}

    async def scenario() -> None:
        async with console(tmp_path, extra=[sent, unknown]) as (_broker, b):
            await b.login(TOKENS["vera"])
            _, page = await b.get("/console/statements")
            seqs = re.findall(r'class="seq">(\d+)<', page)
            assert seqs[:1] == ["8"], seqs  # not the dispatch (7)
            assert "outcome unknown: proxy_restarted" in page
            _, page = await b.get("/console/statements?type=dispatch")
            assert re.findall(r'class="seq">(\d+)<', page) == ["7"]

    asyncio.run(scenario())
