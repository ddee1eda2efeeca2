"""What a stalled relay waits for: each need of the core becomes one task on the loop.

The core stops taking client messages when a statement needs something it cannot have at
once (facts of a long text, a function's name from the catalog, people's approval); the
session stops reading the client, runs the task, hands the answer to the core and resumes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from proxy.approvals.hold import Statement as HeldStatement
from proxy.approvals.hold import hold, ticket
from proxy.relay.core import AnalysisRequest, RelayCore, ReviewRequest, ReviewVerdict
from proxy.relay.flow import Pause
from proxy.relay.handshake import Phase
from proxy.wire import constants as c
from proxy.wire import messages as m

if TYPE_CHECKING:
    from proxy.approvals.broker import Refusal
    from proxy.session.adapter import Session


class StallTasks:
    """At most one task of each kind per session."""

    __slots__ = ("_analysing", "_looking_up", "_review", "_session")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._analysing = False
        self._looking_up = False
        self._review: asyncio.Task[None] | None = None

    def withdraw_review(self) -> bool:
        """A CancelRequest for a statement held for review: withdraw it (answered 57014)."""
        if self._review is None:
            return False
        self._review.cancel()
        return True

    def stalled(self, core: RelayCore) -> None:
        """Client messages wait in the core: stop reading more; start what it asks for."""
        session = self._session
        session.hold_client(Pause.STALLED)
        server = session.server
        request = core.analysis_wanted
        if request is not None and not self._analysing:
            self._analysing = True
            server.spawn(self._analyse(core, request))
        oid = core.function_wanted
        if oid is not None and not self._looking_up:
            self._looking_up = True
            server.spawn(self._look_up_function(core, oid))
        review = core.review_wanted
        if review is not None and self._review is None:
            self._review = asyncio.get_running_loop().create_task(self._hold(core, review))

    def resume(self, core: RelayCore) -> None:
        session = self._session
        up = core.resume(time.perf_counter_ns(), time.time())
        if up and session.upstream is not None:
            session.upstream.write(up)
        if core.stalled:
            self.stalled(core)
        else:
            session.release_client(Pause.STALLED)

    def _still_running(self) -> bool:
        return self._session.phase is Phase.READY

    async def _analyse(self, core: RelayCore, request: AnalysisRequest) -> None:
        try:
            facts = await self._session.server.analyse(request.sql, request.settings)
        finally:
            self._analysing = False
        if self._still_running():
            core.analysed(facts)
            self.resume(core)

    async def _look_up_function(self, core: RelayCore, oid: int) -> None:
        session = self._session
        try:
            info = await session.server.resolve_function(session.identity.database, oid)
        finally:
            self._looking_up = False
        if self._still_running():
            core.looked_up(info)
            self.resume(core)

    async def _hold(self, core: RelayCore, request: ReviewRequest) -> None:
        """A review rule holds the statement (and everything behind it) until people decide;
        the client is told, and reminded, with notices meanwhile (docs/approvals.md)."""
        session = self._session
        spec = request.decision.review
        assert spec is not None
        broker = session.server.approvals
        held = HeldStatement(
            request.text, request.params, session.identity, request.audit_text, request.fingerprint
        )
        try:
            if spec.mode == "ticket":
                ticketed, refusal = ticket(broker, spec, held)
                verdict = _verdict(ticketed.id, refusal)
            else:
                outcome = await hold(
                    broker,
                    spec,
                    held,
                    lambda data: session.send(data, None),
                    idle_in_transaction_timeout=request.idle_in_transaction_timeout,
                )
                verdict = _verdict(outcome.request.id, outcome.refusal())
        except asyncio.CancelledError:
            # A CancelRequest while waiting: the request is withdrawn, and the statement ends
            # as a cancelled one would.
            text = "canceling statement due to user request"
            verdict = ReviewVerdict(
                False, "", c.SQLSTATE_QUERY_CANCELED, text, m.error_response("57014", text)
            )
        finally:
            self._review = None
        if self._still_running():
            core.reviewed(verdict)
            self.resume(core)


def _verdict(request_id: str, refusal: Refusal | None) -> ReviewVerdict:
    """The relay's verdict from the approvals broker's answer (None: approved)."""
    if refusal is None:
        return ReviewVerdict(True, request_id)
    error = m.error_response(refusal.sqlstate, refusal.message, hint=refusal.hint)
    return ReviewVerdict(False, request_id, refusal.sqlstate, refusal.message, error)
