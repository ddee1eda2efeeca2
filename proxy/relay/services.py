"""The few server services a session uses, as a narrow interface (no import cycle)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from proxy.approvals.broker import ApprovalBroker
    from proxy.audit.trail import AuditTrail
    from proxy.auth.authquery import AuthQuery
    from proxy.auth.passfile import Passfile
    from proxy.auth.ratelimit import LoginLimiter
    from proxy.auth.users import UsersFile
    from proxy.config import Config
    from proxy.gate import Gate
    from proxy.relay.attempts import AttemptLimiter
    from proxy.relay.localauth import LocalAuthSettings
    from proxy.sql.catalog.resolver import FunctionInfo
    from proxy.sql.facts import ParserSettings, QueryFacts
    from proxy.state import Counters
    from proxy.tls.contexts import TLSContexts, TLSHolder
    from proxy.tls.upstream import UpstreamLink
    from proxy.wire.startup import CancelRequest


class SessionHost(Protocol):
    cfg: Config
    proxy_id: str
    gate: Gate
    trail: AuditTrail
    tls: TLSHolder
    users: UsersFile | None  # auth.mode proxy: the secrets clients log in with
    auth_query: AuthQuery | None  # auth.mode proxy: secrets looked up on the server
    local_auth: LocalAuthSettings  # methods, certificate → role map
    passfile: Passfile | None  # passwords for pgwarden's own upstream login
    limiter: LoginLimiter
    attempts: AttemptLimiter
    approvals: ApprovalBroker

    @property
    def counters(self) -> Counters: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle: ...

    def session_opened(self, session: Any) -> None: ...

    def session_closed(self, session: Any) -> None: ...

    def backend_started(self, session: Any, pid: int, secret: bytes) -> None: ...

    async def route_cancel(self, request: CancelRequest) -> tuple[str, str | None]: ...

    async def forward_cancel(self, pid: int, secret: bytes) -> None: ...

    async def connect_upstream(
        self, factory: Callable[[], asyncio.Protocol], contexts: TLSContexts
    ) -> UpstreamLink[asyncio.Protocol]:
        """Open the server leg for ``factory()``'s protocol with TLS as ``contexts`` say;
        UpstreamError (with the reason, 08001) when it cannot be had."""
        ...

    def audit_accepting(self) -> bool: ...

    async def resolve_function(self, database: str, oid: int) -> FunctionInfo | None:
        """What the server's catalog says about function ``oid`` (None: unknown/unreachable)."""
        ...

    async def analyse(self, sql: bytes, settings: ParserSettings) -> QueryFacts:
        """Facts of a long statement, computed off the event loop."""
        ...
