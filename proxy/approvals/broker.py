"""The asyncio side of approvals: a session awaits a decision, people make it.

:class:`ApprovalBroker` owns one :class:`ApprovalBook`, submits each step's audit records to
the trail, expires requests at their deadline, and wakes the session waiting on a request.
What a session does with the :class:`Outcome` (forward the held statement unchanged, or answer
with the error it carries) is the session's job; see docs/approvals.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.approvals.book import ApprovalBook, Step
from proxy.approvals.model import Approver, Request, RequestState
from proxy.identity import Identity
from proxy.policy.review import ReviewSpec, duration_text
from proxy.wire import messages as wire

log = logging.getLogger("pgwarden.approvals")

REMINDER_EVERY = 15.0  # seconds between "still waiting" notices
MIN_REARM = 0.001  # seconds: a deadline timer that fired early waits at least this long again
SHUTDOWN_REASON = "pgwarden stopped while the request was pending"
SQLSTATE_REFUSED = "42501"  # insufficient_privilege, like a blocked statement
SQLSTATE_CANCELLED = "57014"  # query_canceled, like a cancelled statement

Submit = Callable[[dict[str, Any]], Any]


def console_url(cfg: Any) -> str:
    """Where people open a request: ``approvals.console_url``, else the admin listener."""
    explicit = str(cfg["approvals.console_url"]).strip()
    if explicit:
        return explicit.rstrip("/")
    listen = str(cfg["admin.listen"]).strip()
    return f"http://{listen}" if listen else ""


@dataclass(frozen=True, slots=True)
class Refusal:
    sqlstate: str
    message: str
    hint: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended, for the session waiting on it."""

    request: Request

    @property
    def forward(self) -> bool:
        """True: send the held statement to the server unchanged."""
        return self.request.state is RequestState.APPROVED

    def error_response(self) -> bytes | None:
        """The ErrorResponse message to send the client instead of running the statement
        (None: forward it). The session still owes the rest of the cycle (ReadyForQuery, or
        errors-until-Sync), exactly as for a blocked statement."""
        refusal = self.refusal()
        if refusal is None:
            return None
        return wire.error_response(refusal.sqlstate, refusal.message, hint=refusal.hint)

    def refusal(self) -> Refusal | None:
        """The ErrorResponse fields for a statement that must not run (None: forward it)."""
        r = self.request
        state = r.state
        if state is RequestState.APPROVED:
            return None
        if state is RequestState.WITHDRAWN:
            return Refusal(SQLSTATE_CANCELLED, "canceling statement due to user request", "")
        rule = r.spec.rule_id
        hint = f"Approval request {r.id} (rule {rule})."
        if state is RequestState.EXPIRED:
            return Refusal(
                SQLSTATE_REFUSED,
                f"statement not approved within {r.spec.describe_timeout()}; it did not run",
                hint + " Ask an approver to watch the review queue, then run it again.",
            )
        vote = r.decider
        who = vote.approver if vote is not None and vote.approver else "pgwarden"
        why = f": {r.reason}" if r.reason else ""
        return Refusal(
            SQLSTATE_REFUSED,
            f"statement denied by {who}{why}",
            hint + " The statement did not run.",
        )


class ApprovalBroker:
    def __init__(
        self,
        proxy_id: str,
        submit: Submit,
        *,
        console_url: str = "",
        clock: Callable[[], float] = time.time,
        book: ApprovalBook | None = None,
    ) -> None:
        self.proxy_id = proxy_id
        self.console_url = console_url.rstrip("/")
        self.book = book or ApprovalBook()
        self._submit = submit
        self._clock = clock
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._listeners: list[Callable[[Request], None]] = []
        self.closed = False

    # --- for the session ---------------------------------------------------------------------

    def request(
        self,
        spec: ReviewSpec,
        *,
        text: str,
        params: tuple[bytes | None, ...] = (),
        identity: Identity,
        statement: str,
        fingerprint: str = "",
    ) -> Request:
        """Open a request for a held statement (``text`` and ``params`` exactly as the client
        sent them; ``statement`` as the trail may show it). Call from the event loop."""
        if self.closed:
            raise RuntimeError("the approval broker is closed")
        request, records = self.book.open(
            spec=spec,
            text=text,
            params=params,
            identity=identity,
            statement=statement,
            now=self._clock(),
            fingerprint=fingerprint,
        )
        self._record(request, records, links=True)
        self._arm(request.id, spec.timeout)
        return request

    async def wait(
        self,
        request_id: str,
        remind: Callable[[str], None] | None = None,
        every: float = REMINDER_EVERY,
    ) -> Outcome:
        """The outcome once people decide (or the deadline passes); ``remind`` gets a "still
        waiting" notice text every ``every`` seconds meanwhile. Cancelling the waiting task
        (the client's CancelRequest, a disconnect) withdraws the request."""
        request = self.book.get(request_id)
        if request.state is not RequestState.PENDING:
            return Outcome(request)
        future = self._waiters.get(request_id)
        if future is None:
            future = self._waiters[request_id] = asyncio.get_running_loop().create_future()
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=every if remind else None)
                if done:
                    return future.result()
                if remind is not None:
                    remind(self.reminder_notice(request))
        except asyncio.CancelledError:
            self.withdraw(request_id, "the client cancelled the statement")
            raise

    def withdraw(self, request_id: str, reason: str) -> Request:
        return self._apply(self.book.withdraw(request_id, reason, self._clock()))

    def withdraw_session(self, session_id: str, reason: str = "the client disconnected") -> int:
        """Withdraw every pending request of a session (call when it closes, whatever state
        its waiting task is in); returns how many there were."""
        mine = [r for r in self.book.pending() if r.binding.session_id == session_id]
        for request in mine:
            self.withdraw(request.id, reason)
        return len(mine)

    def redeem_ticket(
        self, text: str, params: tuple[bytes | None, ...], identity: Identity
    ) -> Request | None:
        """Ticket mode: the approved request releasing this exact statement once, if any."""
        return self.book.redeem_ticket(text, params, identity, self._clock())

    def waiting_notice(
        self, request: Request, idle_in_transaction_timeout: float | None = None
    ) -> str:
        """The first notice. Inside a transaction, pass the server's
        ``idle_in_transaction_session_timeout`` (seconds, 0 = off): when it is shorter than the
        review timeout the notice warns that the server may end the session while it waits."""
        spec = request.spec
        text = (
            f"pgwarden: this statement waits for approval (request {request.id}, rule "
            f"{spec.rule_id}): {spec.describe()}"
        )
        link = self.link(request)
        text += f"; review it at {link}" if link else ""
        if idle_in_transaction_timeout and idle_in_transaction_timeout < spec.timeout:
            text += (
                f". WARNING: the server's idle_in_transaction_session_timeout "
                f"({duration_text(idle_in_transaction_timeout)}) is shorter than the review "
                "timeout; the server may end this session while it waits"
            )
        return text

    @staticmethod
    def notice_message(text: str) -> bytes:
        """A NoticeResponse carrying ``text`` (clients accept notices at any time)."""
        return wire.notice_response(text, severity="NOTICE")

    def ticket_notice(self, request: Request) -> str:
        return (
            f"pgwarden: this statement needs approval (request {request.id}, rule "
            f"{request.spec.rule_id}); once approved, run the identical statement again within "
            f"{duration_text(request.spec.ticket_valid)} of the approval"
        )

    def reminder_notice(self, request: Request) -> str:
        now = self._clock()
        left = max(request.deadline - now, 0.0)
        got = len(self.book.get(request.id).approved_by)
        return (
            f"pgwarden: still waiting for approval of request {request.id} "
            f"({got} of {request.spec.approvals} approvals, {duration_text(left)} left)"
        )

    def link(self, request: Request) -> str:
        return f"{self.console_url}/console/reviews/{request.id}" if self.console_url else ""

    # --- for people (admin API, console, CLI) ------------------------------------------------

    def decide(
        self,
        request_id: str,
        approver: Approver,
        approve: bool,
        reason: str = "",
        *,
        break_glass: bool = False,
    ) -> Request:
        """Record one person's vote; raises ApprovalError with a message for that person."""
        step = self.book.vote(
            request_id, approver, approve, reason, self._clock(), break_glass=break_glass
        )
        return self._apply(step)

    def add_listener(self, fn: Callable[[Request], None]) -> None:
        """Called with the request after every step (the console's live queue, tests)."""
        self._listeners.append(fn)

    # --- time and lifecycle ------------------------------------------------------------------

    def expire_due(self) -> None:
        for step in self.book.expire_due(self._clock()):
            self._apply(step)

    def _arm(self, request_id: str, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._timers[request_id] = loop.call_later(delay, self._deadline_reached, request_id)

    def _deadline_reached(self, request_id: str) -> None:
        # The loop's timer runs on its own (monotonic, and under uvloop millisecond-cached)
        # clock while deadlines are wall-clock times: it can fire a little before the deadline
        # by ``self._clock()``. Re-arm for what is left rather than leave the request pending
        # with no timer, a client waiting for ever.
        self._timers.pop(request_id, None)
        self.expire_due()
        request = self.book.get(request_id)
        if request.state is RequestState.PENDING and not self.closed:
            self._arm(request_id, max(request.deadline - self._clock(), MIN_REARM))

    def close(self, reason: str = SHUTDOWN_REASON) -> None:
        """Deny everything pending (recorded), wake the waiters; no request survives."""
        self.closed = True
        for step in self.book.deny_pending(reason, self._clock()):
            self._apply(step)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # --- internals ---------------------------------------------------------------------------

    def _apply(self, step: Step) -> Request:
        request, records = step
        self._record(request, records)
        if request.state is not RequestState.PENDING:
            timer = self._timers.pop(request.id, None)
            if timer is not None:
                timer.cancel()
            future = self._waiters.pop(request.id, None)
            if future is not None and not future.done():
                future.set_result(Outcome(request))
        return request

    def _record(self, request: Request, records: list[Any], links: bool = False) -> None:
        for record in records:
            event = record.as_event(self.proxy_id)
            if links and self.console_url:
                page = self.link(request)
                event["links"] = {
                    "review": page,
                    "approve": page + "?verdict=approve",
                    "deny": page + "?verdict=deny",
                }
            self._submit(event)
            log.info("approval %s: %s", request.id, event["type"])
        for fn in self._listeners:
            fn(request)
