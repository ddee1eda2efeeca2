"""The admin API is not an open door: Host and Origin checks against CSRF and DNS rebinding,
rate-limited failed authentication, and every state-changing call and every read of statement
text in the audit trail with the caller."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.admin.auth import FailureLimiter
from proxy.admin.origin import allowed_hosts, refusal
from proxy.audit.reader import iter_events
from tests.test_admin import FakeSession, admin, auth


def test_host_and_origin_rules() -> None:
    allowed = allowed_hosts("127.0.0.1", 9187)
    assert allowed is not None and "localhost:9187" in allowed and "[::1]:9187" in allowed
    assert refusal("127.0.0.1:9187", None, allowed) == ""
    assert refusal("localhost:9187", "http://localhost:9187", allowed) == ""
    assert "not this listener" in refusal("evil.example:9187", None, allowed)
    assert "not this listener" in refusal("127.0.0.1:80", None, allowed)
    assert "no Host" in refusal(None, None, allowed)
    assert "cross-origin" in refusal("127.0.0.1:9187", "http://evil.example", allowed)
    assert "cross-origin" in refusal("127.0.0.1:9187", "null", allowed)
    assert "cross-origin" in refusal("127.0.0.1:9187", "http://localhost:9187", allowed)
    # A wildcard listener cannot know its names; the Origin must still be the Host it was sent.
    assert allowed_hosts("0.0.0.0", 9187) is None
    assert refusal("10.0.0.5:9187", "http://10.0.0.5:9187", None) == ""
    assert "cross-origin" in refusal("10.0.0.5:9187", "http://evil.example", None)


def test_failure_limiter_window() -> None:
    limiter = FailureLimiter(limit=3, window=60.0)
    for n in range(3):
        assert limiter.blocked("a", now=float(n)) == 0.0
        limiter.failed("a", now=float(n))
    assert limiter.blocked("a", now=3.0) == pytest.approx(57.0)
    assert limiter.blocked("b", now=3.0) == 0.0  # per address
    assert limiter.blocked("a", now=61.0) == 0.0  # the oldest failure left the window


def test_a_cross_origin_post_cannot_terminate(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin(tmp_path) as (server, client, base):
            # What a web page's <form enctype="text/plain"> sends: no preflight, foreign Origin.
            headers = {**auth(), "Origin": "http://evil.example", "Content-Type": "text/plain"}
            async with client.post(f"{base}/sessions/s-1/terminate", headers=headers) as r:
                assert r.status == 403 and "cross-origin" in (await r.json())["reason"]
            # DNS rebinding: the page's own name, resolved to 127.0.0.1.
            rebound = {**auth(), "Host": f"evil.example:{server.port}"}
            async with client.post(f"{base}/sessions/s-1/terminate", headers=rebound) as r:
                assert r.status == 403
            async with client.get(f"{base}/sessions", headers=rebound) as r:
                assert r.status == 403
            async with client.get(f"{base}/healthz", headers={"Host": "any.example"}) as r:
                assert r.status == 200  # probes answer any name
            session = server.state.sessions["s-1"]
            assert isinstance(session, FakeSession) and session.terminated is None

    asyncio.run(main())


def test_failed_authentication_is_rate_limited(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin(tmp_path) as (_server, client, base):
            statuses = []
            for _ in range(12):
                async with client.get(f"{base}/sessions", headers=auth("x" * 20)) as r:
                    statuses.append(r.status)
            assert statuses == [401] * 10 + [429] * 2
            async with client.get(f"{base}/sessions", headers=auth()) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) > 0  # even the right one

    asyncio.run(main())


def test_calls_and_statement_reads_are_audited_with_the_caller(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin(tmp_path) as (_server, client, base):
            headers = {**auth(), "User-Agent": "ops-script/1"}
            for method, path in (
                ("GET", "/sessions"),
                ("POST", "/sessions/s-1/cancel"),
                ("POST", "/sessions/s-2/terminate"),
                ("POST", "/sessions/nope/terminate"),
                ("POST", "/reload"),
            ):
                async with client.request(method, base + path, headers=headers) as r:
                    assert r.status in (200, 404)
            async with client.get(f"{base}/sessions") as r:
                assert r.status == 401
            async with client.get(f"{base}/metrics", headers=auth()) as r:
                assert r.status == 200  # not state-changing, no statement text: not recorded

    asyncio.run(main())
    events = [e for e in iter_events(tmp_path / "a") if e["type"] == "admin"]
    assert [e["action"] for e in events] == [
        "sessions", "cancel", "terminate", "terminate", "reload", "auth_failed",
    ]  # fmt: skip
    listing, cancel, terminate, missing, reload, refused = events
    assert listing["statements_of"] == ["s-1"] and listing["sessions"] == 2
    assert cancel["target_session"] == "s-1" and cancel["result"] == "sent"
    assert terminate["target_user"] == "bob" and missing["result"] == "no such session"
    assert reload["result"] == "ok"
    for event in events[:5]:
        assert event["caller"] == "admin-token" and event["client_addr"] == "127.0.0.1"
        assert event["user_agent"] == "ops-script/1"
    assert refused["caller"] is None and "missing Authorization" in refused["reason"]
