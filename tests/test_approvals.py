"""The approvals state machine and its asyncio broker: who may decide, what an approval
releases, time passing, cancel, shutdown, and the audit records of every step."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from proxy.approvals.book import ApprovalBook
from proxy.approvals.broker import ApprovalBroker
from proxy.approvals.model import Approver, RequestState
from proxy.errors import ApprovalError
from proxy.identity import Identity, IdentitySource
from proxy.policy.review import ReviewSpec

SPEC = ReviewSpec(
    rule_id="review-deletes",
    users=frozenset({"carol"}),
    groups=(("dba", frozenset({"alice", "bob"})),),
    approvals=2,
    timeout=300.0,
    break_glass=(("oncall", frozenset({"dave"})),),
    source="p.yaml:8",
)
ALICE = Identity(user="alice", database="app", client_addr="10.0.0.5", session_id="s-1")
TEXT = "DELETE FROM orders WHERE id = $1"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def who(name: str, *groups: str, role: str = "approver") -> Approver:
    return Approver(name, frozenset(groups), role)  # type: ignore[arg-type]


def open_request(book: ApprovalBook, spec: ReviewSpec = SPEC, now: float = 0.0) -> str:
    request, records = book.open(
        spec=spec, text=TEXT, params=(b"42",), identity=ALICE, statement=TEXT, now=now
    )
    assert [type(r).__name__ for r in records] == ["ReviewRequested"]
    return request.id


def refused(book: ApprovalBook, request_id: str, approver: Approver, **kw: Any) -> ApprovalError:
    with pytest.raises(ApprovalError) as info:
        book.vote(request_id, approver, kw.pop("approve", True), kw.pop("reason", ""), 1.0, **kw)
    return info.value


def test_two_distinct_approvers_are_needed_and_the_requester_never_counts() -> None:
    book = ApprovalBook()
    rid = open_request(book)
    # alice is in dba, but she asked: refused whatever her groups.
    err = refused(book, rid, who("alice", "dba"))
    assert err.status == 403
    assert str(err) == (
        "alice asked for this statement; someone else must decide it "
        "(the requester never counts as an approver)"
    )
    request, records = book.vote(rid, who("bob"), True, "", 1.0)
    assert request.state is RequestState.PENDING and request.approvals_missing == 1
    assert records[0].as_event("p")["state"] == "pending"
    err = refused(book, rid, who("bob"))
    assert str(err) == (
        f"bob already approved request {rid}; it needs 1 more approval(s) from other people"
    )
    request, records = book.vote(rid, who("carol"), True, "looks right", 2.0)
    assert request.state is RequestState.APPROVED
    assert request.approved_by == ("bob", "carol")
    event = records[0].as_event("proxy-1")
    assert event["type"] == "review_decided" and event["state"] == "approved"
    assert (event["approver"], event["verdict"], event["reason"]) == (
        "carol",
        "approve",
        "looks right",
    )
    assert (event["approvals"], event["approvals_needed"], event["break_glass"]) == (2, 2, False)
    assert (
        str(refused(book, rid, who("zoe", "dba"))) == f"request {rid} is already approved by carol"
    )


def test_who_may_decide() -> None:
    book = ApprovalBook()
    rid = open_request(book)
    err = refused(book, rid, who("mallory"))
    assert (err.status, str(err)) == (
        403,
        "mallory may not decide requests of rule review-deletes (approvers: group dba, carol)",
    )
    assert str(refused(book, rid, who("vera", "dba", role="viewer"))) == (
        "vera may view requests but not decide them"
    )
    # A group given by the approver's token counts like the policy's own membership.
    request, _ = book.vote(rid, who("zoe", "dba"), True, "", 1.0)
    assert request.approved_by == ("zoe",)
    assert refused(book, "r-nope", who("bob")).status == 404


def test_one_deny_ends_the_request_with_its_reason() -> None:
    book = ApprovalBook()
    rid = open_request(book)
    book.vote(rid, who("bob"), True, "", 1.0)
    request, records = book.vote(rid, who("carol"), False, "  not   during   business hours ", 2.0)
    assert request.state is RequestState.DENIED
    assert request.reason == "not during business hours"
    assert records[0].as_event("p")["verdict"] == "deny"


def test_reason_required_and_break_glass() -> None:
    book = ApprovalBook()
    strict = ReviewSpec(**{**_fields(SPEC), "reason_required": True})  # type: ignore[arg-type]
    rid = open_request(book, strict)
    assert str(refused(book, rid, who("bob"))) == "rule review-deletes requires a reason"
    assert str(refused(book, rid, who("bob"), break_glass=True, reason="x")) == (
        "bob is not in a break-glass group (defaults.break_glass: oncall)"
    )
    assert str(refused(book, rid, who("dave"), break_glass=True)) == (
        "a break-glass approval needs a reason"
    )
    # dave is no approver of the rule, but on call: one break-glass approval is enough.
    request, records = book.vote(rid, who("dave"), True, "incident 4711", 1.0, break_glass=True)
    assert request.state is RequestState.APPROVED and request.break_glass
    assert records[0].as_event("p")["break_glass"] is True


def _fields(spec: ReviewSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__slots__}  # type: ignore[attr-defined]


def test_deadline_expires_and_nothing_else_happens_after_it() -> None:
    book = ApprovalBook()
    rid = open_request(book, now=0.0)
    assert book.expire_due(299.9) == []
    with pytest.raises(ApprovalError) as info:
        book.vote(rid, who("bob"), True, "", 300.0)  # the vote came too late
    assert str(info.value) == f"request {rid} is already expired (no decision within 5m)"
    request = book.get(rid)
    assert request.state is RequestState.EXPIRED and request.decided_at == 300.0
    assert book.expire_due(1000.0) == []  # expired once, recorded once


def test_withdraw_and_shutdown_denial() -> None:
    book = ApprovalBook()
    one, two = open_request(book), open_request(book)
    request, records = book.withdraw(one, "the client cancelled the statement", 5.0)
    assert request.state is RequestState.WITHDRAWN
    assert records[0].as_event("p")["type"] == "review_withdrawn"
    assert book.withdraw(one, "again", 6.0)[1] == []  # already over: no second record
    [(denied, [record])] = book.deny_pending("pgwarden stopped", 7.0)
    assert denied.id == two and denied.state is RequestState.DENIED
    event = record.as_event("p")
    assert (event["approver"], event["by_pgwarden"], event["reason"]) == (
        None,
        True,
        "pgwarden stopped",
    )


def test_an_approval_is_bound_to_the_exact_statement() -> None:
    book = ApprovalBook()
    ticket = ReviewSpec(**{**_fields(SPEC), "mode": "ticket", "ticket_valid": 60.0, "approvals": 1})  # type: ignore[arg-type]
    rid = open_request(book, ticket, now=0.0)
    book.vote(rid, who("bob"), True, "", 10.0)
    other_session = Identity(user="alice", database="app", session_id="s-2")
    # Other parameters, other text, other user, other database: nothing is released.
    assert book.redeem_ticket(TEXT, (b"43",), other_session, 20.0) is None
    assert book.redeem_ticket(TEXT + " ", (b"42",), other_session, 20.0) is None
    assert book.redeem_ticket(TEXT, (b"42",), Identity(user="bob", database="app"), 20.0) is None
    assert book.redeem_ticket(TEXT, (b"42",), Identity(user="alice", database="x"), 20.0) is None
    assert book.redeem_ticket(TEXT, (b"42",), other_session, 70.1) is None  # window over
    used = book.redeem_ticket(TEXT, (b"42",), other_session, 69.0)
    assert used is not None and used.id == rid and used.ticket_used
    assert book.redeem_ticket(TEXT, (b"42",), other_session, 69.5) is None  # once
    # NULL and empty parameters are different statements.
    assert book.get(rid).binding.params_sha256 != ""
    from proxy.approvals.model import params_digest

    assert params_digest((None,)) != params_digest((b"",))


def test_the_broker_wakes_the_waiting_session_and_records_every_step() -> None:
    async def scenario() -> None:
        events: list[dict[str, Any]] = []
        clock = Clock()
        broker = ApprovalBroker("proxy-1", events.append, console_url="http://c:9187/", clock=clock)
        request = broker.request(SPEC, text=TEXT, params=(b"42",), identity=ALICE, statement=TEXT)
        assert broker.waiting_notice(request) == (
            f"pgwarden: this statement waits for approval (request {request.id}, rule "
            "review-deletes): 2 approvals from group dba, carol within 5m; review it at "
            f"http://c:9187/console/reviews/{request.id}"
        )
        reminders: list[str] = []
        waiter = asyncio.ensure_future(broker.wait(request.id, reminders.append, every=0.01))
        await asyncio.sleep(0.05)
        assert not waiter.done() and reminders
        clock.now += 60
        broker.decide(request.id, who("bob"), True)
        await asyncio.sleep(0)
        assert not waiter.done()
        assert broker.reminder_notice(request) == (
            f"pgwarden: still waiting for approval of request {request.id} "
            "(1 of 2 approvals, 4m left)"
        )
        broker.decide(request.id, who("carol"), True)
        outcome = await asyncio.wait_for(waiter, 1)
        assert outcome.forward and outcome.refusal() is None
        assert [e["type"] for e in events] == [
            "review_requested",
            "review_decided",
            "review_decided",
        ]
        first = events[0]
        assert (
            first["links"]["approve"]
            == f"http://c:9187/console/reviews/{request.id}?verdict=approve"
        )
        assert (first["user"], first["session_id"], first["rule"]) == (
            "alice",
            "s-1",
            "review-deletes",
        )
        assert first["params_sha256"] == request.binding.params_sha256
        assert first["statement"] == TEXT

    asyncio.run(scenario())


def test_a_deadline_timer_that_fires_early_waits_for_the_rest() -> None:
    """The loop's timer runs on its own clock (uvloop caches it to the millisecond) and can
    fire before the wall-clock deadline: the request must still expire, not stay pending with
    no timer and its client waiting for ever."""

    async def scenario() -> None:
        events: list[dict[str, Any]] = []
        clock = Clock()
        broker = ApprovalBroker("p", events.append, clock=clock)
        spec = dataclasses.replace(SPEC, timeout=0.02)
        request = broker.request(spec, text=TEXT, identity=ALICE, statement=TEXT)
        waiter = asyncio.ensure_future(broker.wait(request.id))
        await asyncio.sleep(0.05)  # the loop's timer has fired: by the broker's clock, too early
        assert broker.book.get(request.id).state is RequestState.PENDING
        assert not waiter.done()
        clock.now += 0.02  # the wall clock reaches the deadline
        outcome = await asyncio.wait_for(waiter, 2)
        assert outcome.request.state is RequestState.EXPIRED
        assert [e["type"] for e in events] == ["review_requested", "review_expired"]

    asyncio.run(scenario())


def test_denied_expired_cancelled_and_shutdown_outcomes() -> None:
    async def scenario() -> None:
        events: list[dict[str, Any]] = []
        clock = Clock()
        broker = ApprovalBroker("p", events.append, clock=clock)

        def ask() -> str:
            return broker.request(SPEC, text=TEXT, identity=ALICE, statement=TEXT).id

        denied = ask()
        waiter = asyncio.ensure_future(broker.wait(denied))
        await asyncio.sleep(0)
        broker.decide(denied, who("bob"), False, "use the archive job")
        refusal = (await waiter).refusal()
        assert refusal is not None
        assert (refusal.sqlstate, refusal.message) == (
            "42501",
            "statement denied by bob: use the archive job",
        )
        assert (
            refusal.hint
            == f"Approval request {denied} (rule review-deletes). The statement did not run."
        )

        expired = ask()
        waiter = asyncio.ensure_future(broker.wait(expired))
        await asyncio.sleep(0)
        clock.now += 301
        broker.expire_due()  # what the deadline timer calls
        refusal = (await waiter).refusal()
        assert (
            refusal is not None
            and refusal.message == "statement not approved within 5m; it did not run"
        )

        cancelled = ask()
        waiter = asyncio.ensure_future(broker.wait(cancelled))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        request = broker.book.get(cancelled)
        assert request.state is RequestState.WITHDRAWN
        from proxy.approvals.broker import Outcome

        refusal = Outcome(request).refusal()
        assert refusal is not None and refusal.sqlstate == "57014"

        pending = ask()
        waiter = asyncio.ensure_future(broker.wait(pending))
        await asyncio.sleep(0)
        broker.close()
        refusal = (await waiter).refusal()
        assert refusal is not None
        assert (
            refusal.message
            == "statement denied by pgwarden: pgwarden stopped while the request was pending"
        )
        with pytest.raises(RuntimeError):
            ask()
        assert [e["type"] for e in events] == [
            "review_requested", "review_decided",
            "review_requested", "review_expired",
            "review_requested", "review_withdrawn",
            "review_requested", "review_decided",
        ]  # fmt: skip

    asyncio.run(scenario())


def test_the_deadline_timer_expires_without_anyone_calling() -> None:
    async def scenario() -> None:
        events: list[dict[str, Any]] = []
        broker = ApprovalBroker("p", events.append)
        quick = ReviewSpec(**{**_fields(SPEC), "timeout": 0.05})  # type: ignore[arg-type]
        request = broker.request(quick, text=TEXT, identity=ALICE, statement=TEXT)
        outcome = await asyncio.wait_for(broker.wait(request.id), 5)
        assert outcome.request.state is RequestState.EXPIRED
        assert events[-1]["type"] == "review_expired"

    asyncio.run(scenario())


def test_a_proxy_shutdown_denies_pending_requests_and_records_it(tmp_path: Any) -> None:
    from proxy import config
    from proxy.server import ProxyServer

    class Trail:
        healthy = True

        def __init__(self) -> None:
            self.events: list[dict[str, Any]] = []

        def submit(self, event: dict[str, Any]) -> None:
            self.events.append(event)

    async def scenario() -> None:
        trail = Trail()
        cfg = config.defaults().replace(audit__dir=str(tmp_path))
        server = ProxyServer(cfg, trail, None)  # type: ignore[arg-type]
        assert server.state.approvals is server.approvals
        request = server.approvals.request(SPEC, text=TEXT, identity=ALICE, statement=TEXT)
        waiter = asyncio.ensure_future(server.approvals.wait(request.id))
        await asyncio.sleep(0)
        await server.shutdown(0)
        outcome = await asyncio.wait_for(waiter, 1)
        assert outcome.request.state is RequestState.DENIED and not outcome.forward
        last = trail.events[-1]
        assert (last["type"], last["by_pgwarden"], last["request_id"]) == (
            "review_decided",
            True,
            request.id,
        )
        assert last["reason"] == "pgwarden stopped while the request was pending"

    asyncio.run(scenario())


def test_review_steps_are_chained_in_the_trail_and_verify_covers_them(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Written through the real AuditTrail, they are records like any other: `verify` passes,
    `logs --type` finds them, and an edited vote is detected."""
    import orjson

    from proxy import config
    from proxy.audit.trail import AuditTrail
    from proxy.cli import main

    async def scenario() -> None:
        cfg = config.defaults().replace(audit__dir=str(tmp_path), audit__fsync="none")
        trail = AuditTrail(cfg, "p")
        trail.open()
        broker = ApprovalBroker("p", trail.submit)
        request = broker.request(SPEC, text=TEXT, identity=ALICE, statement=TEXT)
        broker.decide(request.id, who("bob"), True, "fine")
        broker.decide(request.id, who("carol"), False, "not now")
        await trail.aclose()

    asyncio.run(scenario())
    assert main(["verify", str(tmp_path)]) == 0
    path = tmp_path / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    types = [orjson.loads(line)["type"] for line in lines]
    assert types == ["review_requested", "review_decided", "review_decided"]
    capsys.readouterr()
    assert main(["logs", str(tmp_path), "--type", "review_decided", "--format", "json"]) == 0
    shown = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["approver"], e["verdict"]) for e in shown] == [("bob", "approve"), ("carol", "deny")]
    path.write_bytes(b"".join([lines[0], lines[1].replace(b'"fine"', b'"okay"'), lines[2]]))
    assert main(["verify", str(tmp_path)]) == 1


def test_the_wire_messages_the_session_sends() -> None:
    from proxy.approvals.broker import Outcome
    from proxy.wire.messages import decode_fields

    async def scenario() -> None:
        broker = ApprovalBroker("p", lambda e: None, clock=Clock())
        request = broker.request(SPEC, text=TEXT, identity=ALICE, statement=TEXT)
        text = broker.waiting_notice(request, idle_in_transaction_timeout=60)
        assert text.endswith(
            ". WARNING: the server's idle_in_transaction_session_timeout (1m) is shorter than "
            "the review timeout; the server may end this session while it waits"
        )
        assert "WARNING" not in broker.waiting_notice(request, idle_in_transaction_timeout=0)
        assert "WARNING" not in broker.waiting_notice(request, idle_in_transaction_timeout=900)
        notice = broker.notice_message(text)
        assert notice[:1] == b"N" and int.from_bytes(notice[1:5], "big") == len(notice) - 1
        assert decode_fields(notice[5:])["M"] == text
        denied = broker.decide(request.id, who("bob"), False, "not now")
        error = Outcome(denied).error_response()
        assert error is not None and error[:1] == b"E"
        assert decode_fields(error[5:]) == {
            "S": "ERROR",
            "V": "ERROR",
            "C": "42501",
            "M": "statement denied by bob: not now",
            "H": f"Approval request {request.id} (rule review-deletes). The statement did not run.",
        }
        approved = broker.request(SPEC, text=TEXT, identity=ALICE, statement=TEXT)
        broker.decide(approved.id, who("bob"), True)
        broker.decide(approved.id, who("carol"), True)
        assert Outcome(broker.book.get(approved.id)).error_response() is None

    asyncio.run(scenario())


def test_a_closing_session_withdraws_its_pending_requests() -> None:
    async def scenario() -> None:
        events: list[dict[str, Any]] = []
        broker = ApprovalBroker("p", events.append, clock=Clock())
        mine = broker.request(SPEC, text=TEXT, identity=ALICE, statement=TEXT)
        other = Identity(user="dave", database="app", session_id="s-2")
        theirs = broker.request(SPEC, text=TEXT, identity=other, statement=TEXT)
        waiter = asyncio.ensure_future(broker.wait(mine.id))
        await asyncio.sleep(0)
        assert broker.withdraw_session("s-1") == 1
        outcome = await asyncio.wait_for(waiter, 1)
        assert outcome.request.state is RequestState.WITHDRAWN
        assert outcome.request.reason == "the client disconnected"
        assert broker.book.get(theirs.id).state is RequestState.PENDING
        assert broker.withdraw_session("s-1") == 0

    asyncio.run(scenario())


def test_hold_and_ticket_as_a_session_uses_them() -> None:
    from proxy.approvals.hold import Statement, hold, ticket
    from proxy.wire.messages import decode_fields

    async def scenario() -> None:
        broker = ApprovalBroker("p", lambda e: None, clock=Clock())
        sent: list[bytes] = []
        held = Statement(TEXT, (b"42",), ALICE, TEXT, "fp")
        task = asyncio.ensure_future(hold(broker, SPEC, held, sent.append))
        await asyncio.sleep(0)
        [request] = broker.book.pending()
        assert request.fingerprint == "fp" and request.binding.params_sha256
        assert decode_fields(sent[0][5:])["M"] == broker.waiting_notice(request)
        broker.decide(request.id, who("bob"), True)
        broker.decide(request.id, who("carol"), True)
        assert (await asyncio.wait_for(task, 1)).forward

        # Ticket mode: refused at once, released once after approval, then refused again.
        spec = ReviewSpec(**{**_fields(SPEC), "mode": "ticket", "approvals": 1})  # type: ignore[arg-type]
        first, refusal = ticket(broker, spec, held)
        assert refusal is not None and refusal.sqlstate == "42501"
        assert refusal.message == broker.ticket_notice(first)
        broker.decide(first.id, who("bob"), True)
        used, refusal = ticket(broker, spec, held)
        assert refusal is None and used.id == first.id
        again, refusal = ticket(broker, spec, held)
        assert refusal is not None and again.id != first.id

    asyncio.run(scenario())


def test_the_server_withdraws_the_requests_of_a_closed_session(tmp_path: Any) -> None:
    from types import SimpleNamespace

    from proxy import config
    from proxy.server import ProxyServer

    async def scenario() -> None:
        events: list[dict[str, Any]] = []
        trail = SimpleNamespace(healthy=True, submit=events.append)
        server = ProxyServer(config.defaults().replace(audit__dir=str(tmp_path)), trail, None)  # type: ignore[arg-type]
        request = server.approvals.request(SPEC, text=TEXT, identity=ALICE, statement=TEXT)
        closed = SimpleNamespace(session_id="s-1", backend_pid=None)
        server.session_closed(closed)  # type: ignore[arg-type]
        assert server.approvals.book.get(request.id).state is RequestState.WITHDRAWN
        assert events[-1]["type"] == "review_withdrawn"
        assert events[-1]["reason"] == "the client disconnected"

    asyncio.run(scenario())


def test_the_person_behind_a_shared_role_cannot_approve_or_redeem_their_own_statement() -> None:
    book = ApprovalBook()
    shared = Identity(
        user="app",
        database="app",
        session_id="s-9",
        end_identity="alice",
        identity_source=IdentitySource.CERTIFICATE,
    )
    request, _records = book.open(
        spec=SPEC, text=TEXT, params=(b"42",), identity=shared, statement=TEXT, now=0.0
    )
    # alice is the end identity behind the role "app": she asked, so she cannot decide.
    err = refused(book, request.id, who("alice", "dba"))
    assert err.status == 403 and "alice asked for this statement" in str(err)
    book.vote(request.id, who("bob"), True, "", 1.0)
    approved, _ = book.vote(request.id, who("carol"), True, "", 2.0)
    assert approved.state is RequestState.APPROVED
    assert approved.requesters == frozenset({"app", "alice"})


def test_a_ticket_behind_a_shared_role_is_only_for_the_person_it_was_approved_for() -> None:
    book = ApprovalBook()
    ticket = ReviewSpec(**{**_fields(SPEC), "mode": "ticket", "ticket_valid": 60.0, "approvals": 1})  # type: ignore[arg-type]
    alice = Identity(
        user="app", database="app", end_identity="alice", identity_source=IdentitySource.CERTIFICATE
    )
    request, _ = book.open(
        spec=ticket, text=TEXT, params=(b"42",), identity=alice, statement=TEXT, now=0.0
    )
    book.vote(request.id, who("bob"), True, "", 10.0)
    mallory = Identity(
        user="app",
        database="app",
        end_identity="mallory",
        identity_source=IdentitySource.CERTIFICATE,
    )
    assert book.redeem_ticket(TEXT, (b"42",), mallory, 20.0) is None
    used = book.redeem_ticket(TEXT, (b"42",), alice, 20.0)
    assert used is not None and used.id == request.id
