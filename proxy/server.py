"""The proxy process: listeners, shared services, reload, cancel routing, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from proxy import diagnostics, sdnotify
from proxy.approvals.broker import ApprovalBroker, console_url
from proxy.auth import channel_binding, passfile
from proxy.auth.ratelimit import LoginLimiter
from proxy.buildinfo import version_line
from proxy.config import Config, display_value
from proxy.errors import ConfigError, PgWardenError, SourceError, UpstreamError
from proxy.gate import Gate
from proxy.relay import credentials
from proxy.relay.attempts import AttemptLimiter
from proxy.sql import redact
from proxy.sql.facts import ParserSettings, QueryFacts
from proxy.sql.pool import AnalysisPool, PoolConfig
from proxy.state import Counters, ReloadResult, ServerState
from proxy.tls import load as load_tls
from proxy.tls.clientleg import accepts_direct_tls
from proxy.tls.contexts import TLSContexts
from proxy.tls.listener import SniffingListener
from proxy.tls.upstream import UpstreamLink, open_upstream, send_cancel
from proxy.wire.startup import CancelRequest, encode_cancel

if TYPE_CHECKING:
    from proxy.alerts.engine import AlertEngine
    from proxy.audit.trail import AuditTrail
    from proxy.policy.engine import Policy
    from proxy.session import Session
    from proxy.sql.catalog.resolver import FunctionInfo, FunctionResolver
    from proxy.store.shipper import StoreShipper
    from proxy.workers.role import WorkerRole
    from proxy.workers.worker import SiblingLink

logger = logging.getLogger("pgwarden.server")

_CANCEL_CONCURRENCY = 32
_WAIT_REPORT_FIRST = 1.0  # shutdown names the sessions it waits for after this long ...
_WAIT_REPORT_EVERY = 5.0  # ... and again this often


def load_policies(cfg: Config) -> Policy | None:
    paths = list(cfg["policies"])
    if not paths:
        return None
    from proxy.policy.loader import load_policy

    # The session holds review statements for approval (proxy.approvals.hold).
    return load_policy(paths, holding=True)


class ProxyServer:
    """Everything one proxy process shares between its sessions."""

    def __init__(self, cfg: Config, trail: AuditTrail, policy: Policy | None) -> None:
        self.cfg = cfg
        self.proxy_id = cfg.proxy_id
        self.trail = trail
        self.gate = Gate(cfg, policy)
        # Certificates for both legs; sessions take tls.current when they start.
        self.tls = load_tls(cfg)
        if self.tls.current.client is not None or self.tls.current.upstream is not None:
            channel_binding.preload()  # SCRAM-PLUS on either leg; not imported without TLS
        self.users = credentials.load_users(cfg)
        self.local_auth = credentials.load_settings(cfg)
        self.passfile = passfile.load(cfg["auth.passfile"]) if cfg["auth.passfile"] else None
        self.auth_query = credentials.make_auth_query(
            cfg,
            lambda factory: self.connect_upstream(factory, self.tls.current),
            lambda database, user: credentials.passfile_password(
                self.passfile, cfg.upstream, database, user
            ),
        )
        self.limiter = LoginLimiter()
        self.state = ServerState(proxy_id=self.proxy_id, started_at=time.time())
        self.state.reload = self.reload
        self.state.upstream_ok = self.upstream_reachable
        self.approvals = ApprovalBroker(self.proxy_id, trail.submit, console_url=console_url(cfg))
        self.state.approvals = self.approvals
        self.sessions: dict[str, Session] = {}
        # The server's own BackendKeyData of every session (DESIGN.md rule 4): a
        # CancelRequest is routed and audited by it, and forwarded unchanged.
        self._backends: dict[int, Session] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._servers: list[asyncio.Server] = []
        self._sniffing: SniffingListener | None = None  # the listener when direct TLS is served
        self._cancel_slots = asyncio.Semaphore(_CANCEL_CONCURRENCY)
        self._closing = False
        self.analysis = AnalysisPool(
            PoolConfig(
                offload_size=cfg["limits.analysis_offload_size"],
                max_size=cfg["limits.max_analysis_size"],
                workers=cfg["limits.analysis_workers"],
                worker_memory=cfg["limits.analysis_worker_memory"],
                timeout=cfg["limits.analysis_timeout"],
                text_mode=cfg["audit.statement_text"],
                statement_max=cfg["audit.statement_max"],
            )
        )
        self.attempts = AttemptLimiter()
        self._functions: FunctionResolver | None = None
        self.central_store: StoreShipper | None = None
        self.alerts: AlertEngine | None = None
        # With workers: cancel keys this process does not know are asked of its siblings.
        self.siblings: SiblingLink | None = None

    # --- services for sessions -------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    @property
    def counters(self) -> Counters:
        return self.state.counters

    def session_opened(self, session: Session) -> None:
        self.state.counters.connections_total += 1
        self.sessions[session.session_id] = session
        self.state.sessions[session.session_id] = session
        if self._closing or len(self.sessions) > self.cfg["limits.max_clients"]:
            self.state.counters.connections_rejected += 1
            session.fatal(
                "53300" if not self._closing else "57P01",
                "sorry, too many clients already"
                if not self._closing
                else "the proxy is shutting down",
                reason="rejected",
            )

    def session_closed(self, session: Session) -> None:
        self.sessions.pop(session.session_id, None)
        self.state.sessions.pop(session.session_id, None)
        # A request whose client is gone can never be released: withdrawn, and recorded.
        self.approvals.withdraw_session(session.session_id)
        pid = session.backend_pid
        if pid is not None and self._backends.get(pid) is session:
            del self._backends[pid]

    def backend_started(self, session: Session, pid: int, secret: bytes) -> None:
        self._backends[pid] = session

    async def route_cancel(self, request: CancelRequest) -> tuple[str, str | None]:
        """A CancelRequest from a client: forward it when it names a session of ours (or,
        with workers, of a sibling worker's) with its exact key and something is running
        there; drop (and count) anything else. Returns the outcome and the target session's
        id (for the audit record)."""
        routed = await self.route_cancel_here(request)
        if routed is None and self.siblings is not None:
            routed = await self.siblings.route_cancel(request)
        if routed is None:
            self.state.counters.cancels_dropped += 1
            return "unknown_key", None
        return routed

    async def route_cancel_here(self, request: CancelRequest) -> tuple[str, str] | None:
        """:meth:`route_cancel` among this process's sessions; None when no session here has
        the request's pid (nothing counted: a sibling may know it)."""
        session = self._backends.get(request.pid)
        key = session.handshake.server_key if session is not None else None
        if session is None or key is None:
            return None
        if not hmac.compare_digest(key[1], request.secret):
            self.state.counters.cancels_dropped += 1
            logger.warning("cancel request with a wrong key for session %s", session.session_id)
            return "wrong_key", session.session_id
        if not await session.cancel():
            self.state.counters.cancels_dropped += 1
            return "nothing_running", session.session_id
        return "forwarded", session.session_id

    async def connect_upstream(
        self, factory: Callable[[], asyncio.Protocol], contexts: TLSContexts
    ) -> UpstreamLink[asyncio.Protocol]:
        """The server leg for ``factory()``'s protocol, with TLS as ``contexts`` say (never
        downgraded: a server refusing required TLS is an UpstreamTLSError, 08001)."""
        upstream = self.cfg.upstream
        timeout = self.cfg["limits.connect_timeout"]
        try:
            async with asyncio.timeout(timeout):
                return await open_upstream(
                    factory,
                    upstream,
                    contexts.settings.upstream,
                    contexts.upstream,
                    handshake_timeout=timeout,
                )
        except UpstreamError:
            self.state.counters.upstream_connect_failures += 1
            raise
        except (OSError, TimeoutError) as exc:
            self.state.counters.upstream_connect_failures += 1
            reason = "timeout" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise UpstreamError(
                f"pgwarden could not connect to the upstream server at {upstream}: {reason}"
            ) from None

    async def forward_cancel(self, pid: int, secret: bytes) -> None:
        """Forward a cancel over the same kind of connection as the sessions' (TLS when
        upstream_tls says so), returning once the server has acted on it."""
        upstream = self.cfg.upstream
        contexts = self.tls.current
        self.state.counters.cancels_forwarded += 1
        async with self._cancel_slots:
            try:
                timeout = self.cfg["limits.cancel_timeout"]
                async with asyncio.timeout(timeout):
                    await send_cancel(
                        encode_cancel(pid, secret),
                        upstream,
                        contexts.settings.upstream,
                        contexts.upstream,
                        handshake_timeout=timeout,
                    )
            except (OSError, TimeoutError, UpstreamError) as exc:
                logger.warning("forwarding a cancel request to %s failed: %s", upstream, exc)

    async def resolve_function(self, database: str, oid: int) -> FunctionInfo | None:
        """Name a FunctionCall's OID from the server's catalog (catalog.dsn), cached per
        database; None when it is no function there or the catalog cannot be asked."""
        if self._functions is None:
            from proxy.sql.catalog.resolver import AsyncpgFetch, FunctionResolver

            base = self.cfg["catalog.dsn"]
            self._functions = FunctionResolver(
                AsyncpgFetch(lambda key: _with_database(base, key.database))
            )
        from proxy.sql.catalog.resolver import CatalogKey

        return await self._functions.resolve(CatalogKey(str(self.cfg.upstream), database), oid)

    async def analyse(self, sql: bytes, settings: ParserSettings) -> QueryFacts:
        """Facts of a long statement from a worker process, so the event loop (every other
        session) keeps moving; a statement the pool could not analyse (memory limit, crash,
        timeout) gets facts the policy's on_unparsable decides (proxy.sql.pool)."""
        return (await self.analysis.analyse(sql, settings)).facts

    def audit_accepting(self) -> bool:
        """Whether statements may run under ``audit.fail_closed``: the local trail writes,
        and the central store (when configured) is reachable."""
        store = self.central_store
        return self.trail.healthy and (store is None or store.healthy)

    async def upstream_reachable(self) -> bool:
        upstream = self.cfg.upstream
        try:
            async with asyncio.timeout(2):
                if upstream.unix_path:
                    _, writer = await asyncio.open_unix_connection(upstream.unix_path)
                else:
                    _, writer = await asyncio.open_connection(upstream.host, upstream.port)
                writer.close()
                return True
        except (OSError, TimeoutError):
            return False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, reuse_port: bool = False) -> None:
        """Listen; ``reuse_port`` (workers) joins the SO_REUSEPORT group of the address."""
        from proxy.session import client_protocol_factory

        loop = asyncio.get_running_loop()
        listen = self.cfg.listen
        factory = client_protocol_factory(self)
        if accepts_direct_tls(self.tls.current):
            # Direct TLS next to SSLRequest on one port: each connection's first byte is
            # peeked before a transport owns the socket.
            login_timeout = self.cfg["limits.login_timeout"]
            sniffing = SniffingListener(
                factory, self.tls, sniff_timeout=login_timeout, handshake_timeout=login_timeout
            )
            await sniffing.start(listen.host, listen.port, reuse_port=reuse_port)
            self._sniffing = sniffing
            addrs = str((listen.host, sniffing.port))
        else:
            server = await loop.create_server(
                lambda: factory(None),
                listen.host,
                listen.port,
                reuse_address=True,
                reuse_port=reuse_port or None,
                backlog=1024,
            )
            self._servers.append(server)
            addrs = ", ".join(str(s.getsockname()[:2]) for s in server.sockets)
        sinks = [display_value(s.get("dsn", "")) for s in self.cfg["audit.sinks"]]
        logger.info(
            "%s listening on %s, upstream %s, audit dir %s, policies: %s, store: %s",
            version_line(),
            addrs,
            self.cfg.upstream,
            self.cfg["audit.dir"],
            ", ".join(self.cfg["policies"]) or "none",
            ", ".join(sinks) or "none",
        )

    def bound_port(self) -> int:
        if self._sniffing is not None:
            return self._sniffing.port
        return int(self._servers[0].sockets[0].getsockname()[1])

    async def reload(self) -> ReloadResult:
        """Build the new policy (and alert rules) completely, then swap one reference each;
        a bad file keeps the old ones in force."""
        loop = asyncio.get_running_loop()
        try:
            policy = await loop.run_in_executor(None, load_policies, self.cfg)
            rules = None
            if self.alerts is not None:
                from proxy.alerts.rules import load_rules

                rules = await loop.run_in_executor(None, load_rules, list(self.cfg["alerts"]))
        except SourceError as exc:
            self.state.counters.policy_reload_failures += 1
            for problem in exc.problems:
                logger.error("reload failed, keeping the old policy and alert rules: %s", problem)
            return ReloadResult(False, tuple(str(p) for p in exc.problems))
        if self.alerts is not None and rules is not None:
            self.alerts.swap_rules(rules)
        self.gate.swap_policy(policy)
        self.state.counters.policy_reloads += 1
        files = tuple(str(f) for f in policy.files) if policy is not None else ()
        logger.info("policy reloaded: %s", ", ".join(files) or "no policy")
        tls_problems = await loop.run_in_executor(None, self.tls.reload)
        for tls_problem in tls_problems:
            logger.error("TLS reload failed, keeping the old certificates: %s", tls_problem)
        problems = tls_problems + await loop.run_in_executor(None, self._reload_users)
        return ReloadResult(not problems, problems, files)

    def _reload_users(self) -> tuple[str, ...]:
        """Re-read auth.users_file, auth.passfile and auth.ident_file; a bad file keeps the
        old one."""
        try:
            if self.users is not None:
                self.users = credentials.load_users(self.cfg)
                assert self.users is not None
                logger.info("users file reloaded: %d users", len(self.users.names))
            if self.auth_query is not None:
                self.auth_query.forget()
            if self.local_auth.ident is not None:
                self.local_auth = credentials.load_settings(self.cfg)
                logger.info("ident map reloaded: %s", self.cfg["auth.ident_file"])
            if self.passfile is not None:
                self.passfile = passfile.load(self.cfg["auth.passfile"])
                logger.info("passfile reloaded: %d lines", len(self.passfile.entries))
        except ConfigError as exc:
            problems = tuple(str(p) for p in exc.problems)
            for problem in problems:
                logger.error("reload failed, keeping the old file: %s", problem)
            return problems
        return ()

    async def watch_policy_files(self, interval: float = 1.0) -> None:
        from proxy.policy.watch import PolicyWatcher

        policy = self.gate.policy
        watcher = PolicyWatcher(policy.watch_paths if policy is not None else ())
        while not self._closing:
            await asyncio.sleep(interval)
            if watcher.changed():
                result = await self.reload()
                policy = self.gate.policy
                if result.ok and policy is not None:
                    watcher = PolicyWatcher(policy.watch_paths)

    async def shutdown(self, grace: float, now: asyncio.Event | None = None) -> None:
        """Stop accepting, let running statements finish (up to ``grace``, or until ``now`` is
        set by a second signal), then close every session with 57P01."""
        self._closing = True
        for server in self._servers:
            server.close()
        if self._sniffing is not None:
            await self._sniffing.close()
        self.approvals.close()  # no request survives: denied now, and recorded
        started = time.monotonic()
        deadline = started + grace
        next_report = started + _WAIT_REPORT_FIRST
        while self.sessions and time.monotonic() < deadline:
            for session in list(self.sessions.values()):
                if session.state not in ("active", "copy", "connecting", "auth"):
                    session.terminate("shutdown")
            if not self.sessions:
                break
            if now is not None and now.is_set():
                logger.warning("second signal: stopping now, %d sessions get 57P01",
                               len(self.sessions))  # fmt: skip
                break
            if time.monotonic() >= next_report:
                next_report += _WAIT_REPORT_EVERY
                self._report_waiting(deadline - time.monotonic())
            await asyncio.sleep(0.05)
        for session in list(self.sessions.values()):
            session.terminate("shutdown")
        # Give the last session_end events and FATAL messages one turn to be written.
        await asyncio.sleep(0)
        await self.analysis.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _report_waiting(self, left: float) -> None:
        now = time.time()
        waiting = []
        for session in list(self.sessions.values()):
            ident = session.identity
            started = session.statement_started
            running = f" {now - started:.0f}s" if started is not None else ""
            text = session.current_statement or ""
            text = f": {text[:60]}{'…' if len(text) > 60 else ''}" if text else ""
            who = f"{session.session_id} {ident.user}@{ident.database}"
            waiting.append(f"{who} ({session.state}{running}{text})")
        logger.warning(
            "shutting down: waiting up to %.0fs more for %d sessions: %s; a second SIGINT or "
            "SIGTERM stops now",
            max(left, 0.0),
            len(waiting),
            "; ".join(waiting),
        )


async def _reload_notified(server: ProxyServer) -> None:
    sdnotify.reloading()
    try:
        await server.reload()
    finally:
        sdnotify.notify("READY=1", "STATUS=serving")


async def serve(
    cfg: Config, ready: asyncio.Event | None = None, role: WorkerRole | None = None
) -> int:
    """Run the proxy until SIGTERM/SIGINT. Returns the process exit code. ``role``: this
    process is one of the supervisor's workers (proxy.workers)."""
    from proxy.audit.trail import AuditTrail

    policy = load_policies(cfg)
    trail = AuditTrail(cfg, cfg.proxy_id, scrub=redact.scrub_event)
    trail.open()
    server = ProxyServer(cfg, trail, policy)
    extras = await _start_extras(cfg, server, trail)
    await server.start(reuse_port=role is not None)
    if role is not None:
        from proxy.workers.worker import attach_worker

        extras.append(await attach_worker(server, role, extras))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: server.spawn(_reload_notified(server)))
    if cfg["policies"]:
        server.spawn(server.watch_policy_files())
    tune_gc()
    if ready is not None:
        ready.set()
    sdnotify.notify("READY=1", "STATUS=serving")
    await stop.wait()
    sdnotify.notify("STOPPING=1", "STATUS=shutting down")
    now = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, now.set)  # a second signal: stop now
    logger.info(
        "shutting down: waiting up to %.0fs for running statements (a second SIGINT or SIGTERM "
        "stops now)",
        cfg["shutdown_grace"],
    )
    await server.shutdown(cfg["shutdown_grace"], now)
    for extra in reversed(extras):
        with contextlib.suppress(Exception):
            await extra.aclose()
    await trail.aclose()  # the audit trail is flushed last
    logger.info("pgwarden stopped")
    # Everything is written: a later signal (a service manager repeating its stop) must not
    # kill the process while the loop and the interpreter wind down.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    return 0


# A relayed statement allocates a few dozen containers (its records, its event): at the
# default threshold of 700 the young generation was collected every few statements.
_GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """What start-up loaded (modules, policies, TLS contexts) lives as long as the process:
    keep it out of every collection, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


async def _start_extras(cfg: Config, server: ProxyServer, trail: AuditTrail) -> list[Any]:
    """Metrics/admin API, central store shipper and alert engine, when configured."""
    started: list[Any] = []
    shipper = None
    if cfg["audit.sinks"]:
        from proxy.store.shipper import StoreShipper

        shipper = StoreShipper(cfg, trail, cfg.proxy_id)
        await shipper.start()
        started.append(shipper)
        server.central_store = shipper
    from proxy.audit.anchor import AnchorPublisher

    if AnchorPublisher.wanted(cfg):
        publisher = AnchorPublisher(cfg, trail, cfg.proxy_id)
        await publisher.start()
        started.append(publisher)
    if cfg["alerts"]:
        from proxy.alerts.engine import AlertEngine

        engine = AlertEngine.from_files(list(cfg["alerts"]))
        primed = await asyncio.get_running_loop().run_in_executor(None, _prime_alerts, cfg, engine)
        logger.info(
            "alert rules loaded; %d recent events taught them the known query shapes", primed
        )
        engine.attach(trail)
        server.alerts = engine
        started.append(engine)
    if cfg["admin.listen"]:
        from proxy.admin.app import AdminServer

        admin = AdminServer(cfg, server.state, trail, shipper)
        await admin.start()
        started.append(admin)
    return started


def _prime_alerts(cfg: Config, engine: AlertEngine) -> int:
    """Teach "never seen before" alert rules the query shapes of the last week of the local
    trail, so a restart does not make every shape look new."""
    from datetime import UTC, datetime, timedelta

    from proxy.audit.reader import iter_events

    since = datetime.now(UTC) - timedelta(days=7)
    return engine.prime(iter_events(cfg["audit.dir"], since=since))


def _with_database(dsn: str, database: str) -> str:
    """``dsn`` (a postgresql:// URL) naming ``database`` instead of its own."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed (it is a dependency), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    return int(uvloop.run(main))


def run_server(cfg: Config, role: WorkerRole | None = None) -> int:
    """Blocking entry point used by ``pgwarden serve`` and ``pgwarden demo``."""
    diagnostics.configure(cfg["log_format"], cfg["log_level"], role.index if role else None)
    for warning in cfg.warnings:
        if role is None:  # a worker's were logged once by its supervisor
            logger.warning("%s", warning)
    try:
        return run_loop(serve(cfg, role=role))
    except PgWardenError as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 2
