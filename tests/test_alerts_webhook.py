"""Webhook delivery against a real local aiohttp HTTP server: JSON, Slack, retries, timeouts."""

from __future__ import annotations

import asyncio
import logging
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy.alerts.engine import AlertEngine

T0 = 1_800_000_000.0


class RecordingTrail:
    """Stands in for AuditTrail's listener/submit surface (the trail itself is tested apart)."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        self.submitted: list[dict[str, Any]] = []

    def add_listener(self, fn: Callable[[list[dict[str, Any]]], None]) -> None:
        self.listeners.append(fn)

    def submit(self, event: dict[str, Any]) -> None:
        self.submitted.append(event)

    def written(self, events: list[dict[str, Any]]) -> None:
        for fn in self.listeners:
            fn(events)


class Receiver:
    """A webhook receiver that answers with the next status in ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int] | None = None, hang: bool = False) -> None:
        self.statuses = list(statuses or [])
        self.hang = hang
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests.append((request.headers.get("Content-Type", ""), body))
        self.arrived.set()
        if self.hang:
            await asyncio.Event().wait()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")


@asynccontextmanager
async def serve(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


def rules(
    tmp_path: Path, url: str, fmt: str = "json", retries: int = 3, timeout: str = "5s"
) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            alerts:
              - id: blocked
                description: blocked statements
                filter: {{action: block}}
                threshold: "count >= 2 in 1m"
                by: user
                severity: high
                destinations:
                  - log
                  - webhook: {{url: "{url}", format: {fmt}, retries: {retries}, timeout: {timeout}}}
            """
        )
    )
    return path


def blocked(seq: int) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "query",
        "seq": seq,
        "proxy_id": "p1",
        "user": "mallory",
        "decision": {"action": "block", "rules": [{"id": "no-drop", "action": "block"}]},
    }


async def fire(engine: AlertEngine, trail: RecordingTrail) -> None:
    engine.attach(trail, now=lambda: T0)
    trail.written([blocked(1), blocked(2)])
    await asyncio.wait_for(engine.drain(), 10)


def test_json_webhook_receives_the_alert_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        receiver = Receiver()
        async with serve(receiver) as url:
            engine = AlertEngine.from_files([rules(tmp_path, url)], webhook_backoff=0.01)
            trail = RecordingTrail()
            with caplog.at_level(logging.WARNING, logger="pgwarden.alerts"):
                await fire(engine, trail)
            await engine.aclose()
        assert len(trail.submitted) == 1
        alert = trail.submitted[0]
        assert alert["type"] == "alert" and alert["events"] == [1, 2]
        assert receiver.requests == [("application/json", alert)]
        assert any("ALERT blocked severity=high group=mallory" in r.message for r in caplog.records)

    asyncio.run(main())


def test_slack_format_posts_text(tmp_path: Path) -> None:
    async def main() -> None:
        receiver = Receiver()
        async with serve(receiver) as url:
            engine = AlertEngine.from_files([rules(tmp_path, url, "slack")], webhook_backoff=0.01)
            await fire(engine, RecordingTrail())
            await engine.aclose()
        [(_ctype, body)] = receiver.requests
        assert set(body) == {"text"}
        assert body["text"].startswith("[pgwarden HIGH] blocked: 2 matching events in 1m")

    asyncio.run(main())


def test_failing_receiver_is_retried_until_it_accepts(tmp_path: Path) -> None:
    async def main() -> None:
        receiver = Receiver(statuses=[500, 503])
        async with serve(receiver) as url:
            engine = AlertEngine.from_files([rules(tmp_path, url)], webhook_backoff=0.01)
            await fire(engine, RecordingTrail())
            [sender] = engine.senders
            assert (sender.sent, sender.failed) == (1, 0)
            await engine.aclose()
        assert len(receiver.requests) == 3
        assert receiver.requests[0] == receiver.requests[2]

    asyncio.run(main())


def test_receiver_that_always_fails_is_given_up_after_the_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        receiver = Receiver(statuses=[500] * 10)
        async with serve(receiver) as url:
            engine = AlertEngine.from_files([rules(tmp_path, url, retries=2)], webhook_backoff=0.01)
            with caplog.at_level(logging.ERROR, logger="pgwarden.alerts"):
                await fire(engine, RecordingTrail())
            [sender] = engine.senders
            assert (sender.sent, sender.failed) == (0, 1)
            await engine.aclose()
        assert len(receiver.requests) == 3
        assert any("not delivered after 3 attempts (HTTP 500)" in r.message for r in caplog.records)

    asyncio.run(main())


def test_hanging_receiver_times_out_without_blocking_the_loop(tmp_path: Path) -> None:
    async def main() -> None:
        receiver = Receiver(hang=True)
        async with serve(receiver) as url:
            engine = AlertEngine.from_files(
                [rules(tmp_path, url, retries=1, timeout="200ms")], webhook_backoff=0.01
            )
            trail = RecordingTrail()
            engine.attach(trail, now=lambda: T0)
            loop = asyncio.get_running_loop()
            started = loop.time()
            trail.written([blocked(1), blocked(2)])
            # The listener returned at once: delivery happens in the background.
            assert loop.time() - started < 0.05
            assert len(trail.submitted) == 1
            await asyncio.wait_for(receiver.arrived.wait(), 5)
            await asyncio.wait_for(engine.drain(), 10)
            [sender] = engine.senders
            assert (sender.sent, sender.failed) == (0, 1)
            assert len(receiver.requests) == 2
            await engine.aclose()

    asyncio.run(main())


def test_review_requests_reach_slack_with_approve_and_deny_links(tmp_path: Path) -> None:
    from proxy.approvals.broker import ApprovalBroker
    from proxy.approvals.model import Approver
    from proxy.identity import Identity
    from proxy.policy.review import ReviewSpec

    async def main() -> None:
        receiver = Receiver()
        async with serve(receiver) as url:
            path = tmp_path / "review-alerts.yaml"
            path.write_text(
                textwrap.dedent(
                    f"""\
                    version: 1
                    alerts:
                      - id: approvals-needed
                        filter: {{type: [review_requested, review_decided]}}
                        condition: each_event
                        destinations: [{{webhook: {{url: "{url}", format: slack}}}}]
                    """
                )
            )
            engine = AlertEngine.from_files([path], webhook_backoff=0.01)
            trail = RecordingTrail()
            engine.attach(trail, now=lambda: T0)
            broker = ApprovalBroker("edge-1", trail.submit, console_url="https://pgw.example")
            spec = ReviewSpec(
                "review-deletes",
                frozenset({"carol"}),
                (),
                break_glass=(("oncall", frozenset({"dave"})),),
            )
            who = Identity("alice", "prod", session_id="s-9")
            request = broker.request(
                spec, text="DELETE FROM orders", identity=who, statement="DELETE FROM orders"
            )
            broker.decide(request.id, Approver("dave"), True, "incident 7", break_glass=True)
            trail.written(list(trail.submitted))  # the trail hands written events to listeners
            await engine.drain()
            page = f"https://pgw.example/console/reviews/{request.id}"
            texts = [body["text"] for _ctype, body in receiver.requests]
            assert texts == [
                "[pgwarden MEDIUM] approvals-needed: alice asks to run on prod: DELETE FROM "
                f"orders (request {request.id}, rule review-deletes, 1 approval(s) needed) "
                f"approve: {page}?verdict=approve deny: {page}?verdict=deny",
                "[pgwarden MEDIUM] approvals-needed: BREAK-GLASS: dave force-approved request "
                f"{request.id} of alice (rule review-deletes): incident 7",
            ]
            alerts = [e for e in trail.submitted if e["type"] == "alert"]
            assert alerts[0]["request_id"] == request.id
            assert alerts[0]["links"]["deny"] == f"{page}?verdict=deny"
            assert (alerts[1]["break_glass"], alerts[1]["requester"]) == (True, "alice")
            await engine.aclose()

    asyncio.run(main())
