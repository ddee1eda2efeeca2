"""Process-wide state the admin API, metrics and alerts read: live sessions and counters.

The server owns one :class:`ServerState`; sessions register themselves in it. Everything here
is touched only from the event loop thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from proxy.identity import Identity

if TYPE_CHECKING:
    from proxy.approvals.broker import ApprovalBroker
    from proxy.approvals.model import Approver, Request


class SessionView(Protocol):
    """What the admin API may see and do with a live client session."""

    session_id: str
    identity: Identity
    started_at: float  # wall clock (time.time())

    @property
    def state(self) -> str:
        """``startup``, ``idle``, ``active``, ``idle in transaction``,
        ``idle in transaction (aborted)``, ``copy``, ``closing``."""

    @property
    def current_statement(self) -> str | None:
        """Text of the statement in flight (secrets redacted), if any."""

    @property
    def statement_started(self) -> float | None:
        """Wall-clock start of the statement in flight, if any."""

    @property
    def backend_pid(self) -> int | None: ...

    async def cancel(self) -> bool:
        """Forward a CancelRequest for the running statement; False if nothing was running."""

    def terminate(self, reason: str) -> None:
        """Close the client with FATAL 57P01 and the upstream connection."""


class SiblingsView(Protocol):
    """The other worker processes, as the admin API of worker 0 reaches them (proxy.workers)."""

    async def sessions(self) -> list[dict[str, Any]]:
        """Their live sessions as ``/sessions`` items, each with its ``worker``."""

    async def session_action(
        self, session_id: str, action: str, reason: str
    ) -> dict[str, Any] | None:
        """Cancel or terminate a session of theirs; None when none of them has it."""

    async def metrics(self, own: bytes) -> bytes:
        """``own`` exposition merged with theirs (a ``worker`` label on every series)."""

    async def ready(self) -> dict[str, bool]:
        """Their readiness checks, named ``worker K <check>`` (``worker K`` when it did not
        answer)."""


class RemoteApprovals(Protocol):
    """The approval requests other workers hold, for worker 0's admin API and console."""

    async def requests(self) -> list[Request]:
        """Snapshots of their requests."""

    async def decide(
        self, request_id: str, approver: Approver, approve: bool, reason: str, break_glass: bool
    ) -> Request | None:
        """One vote, applied by the owner; None when no other worker holds ``request_id``
        (raises ApprovalError with the owner's refusal)."""


@dataclass
class Counters:
    connections_total: int = 0
    connections_rejected: int = 0  # refused before a session existed (limits, bad startup)
    upstream_connect_failures: int = 0
    auth_failures: int = 0
    logins_throttled: int = 0  # refused by the login rate limiter
    policy_reloads: int = 0
    policy_reload_failures: int = 0
    protocol_errors_client: int = 0
    protocol_errors_server: int = 0
    cancels_forwarded: int = 0
    cancels_dropped: int = 0  # unknown key, wrong secret, or nothing running


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    errors: tuple[str, ...] = ()
    policy_files: tuple[str, ...] = ()


@dataclass
class ServerState:
    proxy_id: str
    started_at: float
    sessions: dict[str, SessionView] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    # Set by the server: rebuilds policies (and alert rules) and swaps them in.
    reload: Callable[[], Awaitable[ReloadResult]] | None = None
    # Set by the server: True when the upstream accepted a TCP/Unix connection recently.
    upstream_ok: Callable[[], Awaitable[bool]] | None = None
    # Set by the server: the approval requests of this process.
    approvals: ApprovalBroker | None = None
    # Set in worker 0 when the proxy runs several workers: the others' sessions and metrics.
    siblings: SiblingsView | None = None
    extra: dict[str, Any] = field(default_factory=dict)
