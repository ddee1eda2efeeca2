"""Ship the local JSONL audit trail into the central PostgreSQL store: in order, exactly once.

The trail files are the durable record; what the shipper holds in memory is only a shortcut
that a crash may lose. Rows are keyed by the trail's own identity (:mod:`proxy.audit.trailid`),
never by ``proxy_id``, which two trails may share. On start (and after every reconnect) it asks
the store for ``max(seq)`` of its trail, checks that the stored record at that seq is the local
one, and ships from the next seq: from the batches the trail handed over right after writing
them (:mod:`proxy.store.memory`: no reading back, no parsing) where it holds them, else from
the files (:class:`~proxy.store.tail.TrailTail`). Each batch is one ``INSERT … SELECT … FROM
unnest(…) ON CONFLICT (trail_id, seq, hash) DO NOTHING`` (:func:`proxy.store.rows.insert_sql`),
so a batch whose commit acknowledgement was lost is simply skipped the second time, and a
different record is never mistaken for one already stored.

Two trails that claim one identity (a copied audit directory) or one ``proxy_id`` (two
proxies on a host with default settings) are stored side by side and reported loudly: a log
line, ``pgwarden_store_identity_conflicts`` and a warning in ``/readyz``.

A store outage never stops the proxy: the shipper retries with exponential back-off, logs
once when the store goes away and once when it is back, and the backlog (events on disk not
yet in the store) is observable in :attr:`StoreShipper.backlog` and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from proxy.audit.jsonl import read_head
from proxy.audit.record import Event
from proxy.audit.trailid import load_or_create
from proxy.errors import StoreError
from proxy.store import rows as rowmod
from proxy.store.memory import MemoryQueue
from proxy.store.rows import Batch
from proxy.store.schema import migrate, quote_schema
from proxy.store.tail import TrailGap, TrailLine, TrailTail

log = logging.getLogger("pgwarden.store")

DEFAULT_BATCH_SIZE = 1000
# Written events held for the shipper (about 1 kB each as JSON text); past this the shipper
# reads them back from the files instead.
DEFAULT_MEMORY_EVENTS = 20_000
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0
BACKOFF_START = 0.2
BACKOFF_MAX = 15.0
IDLE_POLL = 1.0  # look this often even without a wake-up (belt and braces)
COALESCE_SECONDS = 0.2  # after shipping, wait this long before looking again
CATCH_UP_REPORT = 10.0  # seconds between progress lines while a backlog is shipped
HEARTBEAT_SECONDS = 30.0  # how often a shipper marks its trail as alive in pgwarden_trails
# Another trail of the same proxy_id seen this recently ships at the same time as this one.
CONCURRENT_WINDOW = "2 minutes"

# Errors that mean "the store is not reachable or not usable right now": retry later.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg's protocol state when the server went away in the middle of a statement
    asyncpg.InternalClientError,
    StoreError,
)


class TrailLike(Protocol):
    """What the shipper needs from :class:`proxy.audit.trail.AuditTrail`."""

    @property
    def healthy(self) -> bool: ...

    def add_listener(self, fn: Callable[[list[Event]], None]) -> None: ...


# What a trail that hands over its written lines (proxy.audit.trail.AuditTrail) also has.
LineListener = Callable[[list[Event], bytes | None], None]


@dataclass(frozen=True, slots=True)
class SinkConfig:
    dsn: str
    batch_size: int = DEFAULT_BATCH_SIZE
    schema: str = "public"
    memory_events: int = DEFAULT_MEMORY_EVENTS

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> SinkConfig:
        unknown = set(raw) - {"type", "dsn", "batch_size", "schema", "memory_events"}
        if unknown:
            raise StoreError(f"unknown keys in audit sink: {', '.join(sorted(unknown))}")
        batch_size = int(raw.get("batch_size", DEFAULT_BATCH_SIZE))
        if batch_size < 1:
            raise StoreError("audit sink batch_size must be at least 1")
        memory_events = int(raw.get("memory_events", DEFAULT_MEMORY_EVENTS))
        if memory_events < 0:
            raise StoreError("audit sink memory_events must not be negative")
        schema = str(raw.get("schema", "public"))
        quote_schema(schema)  # validates
        dsn = str(raw["dsn"])
        check_dsn(dsn)
        return cls(dsn, batch_size, schema, memory_events)


def check_dsn(dsn: str) -> None:
    """Raise StoreError unless ``dsn`` is a connection URI the store client can use (asyncpg
    takes ``postgresql://`` URIs only, not libpq's ``key=value`` strings)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(dsn)
        for host_port in parts.netloc.rsplit("@", 1)[-1].split(","):  # multi-host URIs
            _host, sep, number = host_port.rpartition(":")
            if sep and number and not number.isdigit() and "]" not in number:
                raise ValueError(f"invalid port {number!r}")
    except ValueError as exc:
        raise StoreError(f"the store dsn is not a valid URI: {exc}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise StoreError(
            "the store dsn must be a URI such as postgresql://user@host:5432/db"
            f" (got {'scheme ' + repr(parts.scheme) if parts.scheme else 'no scheme'})"
        )


class SinkShipper:
    """Ships one proxy's trail into one store database."""

    def __init__(self, sink: SinkConfig, audit_dir: str, proxy_id: str, trail_id: str) -> None:
        self.sink = sink
        self.proxy_id = proxy_id
        self.trail_id = trail_id
        self.audit_dir = audit_dir
        self.tail = TrailTail(audit_dir)
        self.memory = MemoryQueue(sink.memory_events)
        # Whether the trail hands this shipper every batch it writes (then the files are read
        # only for what memory does not hold; else they are looked at on every wake-up).
        self.fed = False
        self.store_seq = 0  # the highest seq the store is known to hold for trail_id
        self.trail_seq = 0  # the highest seq the trail is known to have written
        self.healthy = False
        self.shipped = 0
        self.batches = 0
        self.errors = 0
        self.rejected = 0
        self.gaps = 0
        self.read_back = 0  # events read from the files (start-up, outage, memory full)
        self.ship_seconds = 0.0
        self.last_error = ""
        # Other trails that ship under this proxy_id right now, or that hold different
        # records under this trail id: each is logged once and kept for metrics and /readyz.
        self.conflicts: dict[str, str] = {}
        # The trail ids of this proxy's sibling workers (proxy.workers): one proxy, one
        # proxy_id, several trails by design, never a naming conflict.
        self.siblings: Callable[[], frozenset[str]] = frozenset
        self._heartbeat_at = 0.0
        self._conn: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._insert = rowmod.insert_sql(quote_schema(sink.schema))
        self._was_down = False  # logged "unreachable" and not yet "back"

    @property
    def backlog(self) -> int:
        return max(0, max(self.trail_seq, self.tail.last_seq) - self.store_seq)

    def wake(self, seq: int | None = None) -> None:
        if seq is not None and seq > self.trail_seq:
            self.trail_seq = seq
        self._wake.set()

    def hand_over(self, batch: Batch | None, count: int, last_seq: int) -> None:
        """The trail wrote ``count`` events up to ``last_seq``; ``batch`` is what it wrote
        (None: not available, or not wanted by :meth:`wants`). Runs on the event loop."""
        if batch is None:
            self.memory.refused += count  # the files have them
        else:
            self.memory.offer(batch)
        self.wake(last_seq)

    def wants(self, first_seq: int, count: int) -> bool:
        return self.memory.wants(first_seq, count)

    def stop(self) -> None:
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        backoff = BACKOFF_START
        try:
            while True:
                try:
                    if self._conn is None:
                        await self._connect()
                    shipped_any = await self._ship_available()
                    if time.monotonic() - self._heartbeat_at >= HEARTBEAT_SECONDS:
                        await self._heartbeat()
                    backoff = BACKOFF_START
                    if self._closing:
                        return
                    if not shipped_any:
                        await self._sleep(IDLE_POLL)
                    else:
                        # Let events accumulate: one COPY per interval instead of one per
                        # loop turn keeps the shipper's cost per event small under load.
                        await asyncio.sleep(COALESCE_SECONDS)
                except Exception as exc:
                    if not isinstance(exc, _TRANSIENT):
                        log.exception("audit store shipper failed unexpectedly; retrying")
                    await self._went_down(exc)
                    if self._closing:
                        return
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            await self._close_conn()
            self.tail.close()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self.sink.dsn, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT
        )
        try:
            await migrate(conn, self.sink.schema)
            rows = await conn.fetch(
                f"SELECT seq, hash FROM {quote_schema(self.sink.schema)}.audit_events"
                " WHERE trail_id = $1 AND seq = (SELECT max(seq)"
                f" FROM {quote_schema(self.sink.schema)}.audit_events WHERE trail_id = $1)",
                self.trail_id,
            )
            stored = int(rows[0]["seq"]) if rows else 0
            if stored and not await asyncio.to_thread(
                self._local_matches, stored, {r["hash"] for r in rows}
            ):
                self._conflict(
                    f"trail:{self.trail_id}",
                    f"the store holds other records than this trail under its trail id"
                    f" {self.trail_id} (seq {stored}): two trails share one identity (a copied"
                    f" audit directory?); give one of them a new {self.audit_dir}/audit.id."
                    " Shipping this whole trail again, side by side, nothing is dropped",
                )
                stored = 0
            self._conn = conn
            await self._heartbeat()
        except BaseException:
            self._conn = None
            await conn.close(timeout=2)
            raise
        self.store_seq = stored
        # Always resume from what the store holds: after an unacknowledged commit this skips
        # what already landed, after a store restore it re-sends what went missing.
        self.tail.reset(self.store_seq)
        if self._was_down:
            log.warning(
                "audit store %s reachable again; catching up from seq %d",
                self._where(),
                self.store_seq + 1,
            )
            self._was_down = False
        else:
            log.info("audit store %s: shipping from seq %d", self._where(), self.store_seq + 1)
        self.healthy = True

    async def _ship_available(self) -> bool:
        """Ship everything the files hold past store_seq; True if anything was shipped.

        A long catch-up (after an outage, or a first start on an old trail) says how it goes
        every CATCH_UP_REPORT seconds: shipped, behind, events/s and the time left.
        """
        shipped_any = False
        started = time.monotonic()
        first_seq = self.store_seq
        report_at = started + CATCH_UP_REPORT
        while True:
            batch = self.memory.take(self.store_seq + 1, self.sink.batch_size)
            if batch is None and (not self.fed or self.trail_seq > self.store_seq):
                batch = await asyncio.to_thread(self._read_files)
            if batch is None:
                if time.monotonic() >= started + CATCH_UP_REPORT:
                    log.info("audit store %s: caught up at seq %d", self._where(), self.store_seq)
                return shipped_any
            await self._ship(batch)
            shipped_any = True
            now = time.monotonic()
            if now >= report_at:
                report_at = now + CATCH_UP_REPORT
                self._report_catch_up(self.store_seq - first_seq, now - started)

    def _report_catch_up(self, shipped: int, seconds: float) -> None:
        head = read_head(self.audit_dir)  # the newest seq written, beyond what was read so far
        behind = max(self.backlog, (head.seq - self.store_seq) if head is not None else 0)
        rate = shipped / seconds if seconds > 0 else 0.0
        left = f"about {behind / rate:.0f}s left" if rate > 0 else "time left unknown"
        log.info(
            "audit store %s: catching up, %d events shipped, %d behind, %.0f events/s, %s",
            self._where(),
            shipped,
            behind,
            rate,
            left,
        )

    def _local_matches(self, seq: int, hashes: set[str]) -> bool:
        """Whether the store's record(s) at ``seq`` include this trail's; True when the local
        files no longer hold ``seq`` (retention removed it) and so cannot tell."""
        probe = TrailTail(self.audit_dir, seq - 1)
        try:
            lines = probe.read(1)
        except TrailGap as gap:
            return gap.found > seq  # pruned before seq: cannot tell, trust the store
        finally:
            probe.close()
        if not lines:
            return False  # the store is ahead of this trail: it holds someone else's records
        return lines[0].event.get("hash") in hashes

    async def _heartbeat(self) -> None:
        """Mark this trail alive and look for other trails shipping under our proxy_id."""
        assert self._conn is not None
        schema = quote_schema(self.sink.schema)
        await self._conn.execute(
            f"INSERT INTO {schema}.pgwarden_trails (trail_id, proxy_id, hostname)"
            " VALUES ($1, $2, $3) ON CONFLICT (trail_id) DO UPDATE"
            " SET proxy_id = excluded.proxy_id, hostname = excluded.hostname, last_seen = now()",
            self.trail_id,
            self.proxy_id,
            socket.gethostname(),
        )
        others = await self._conn.fetch(
            f"SELECT trail_id, hostname FROM {schema}.pgwarden_trails"
            " WHERE proxy_id = $1 AND trail_id <> $2"
            f" AND last_seen > now() - interval '{CONCURRENT_WINDOW}'",
            self.proxy_id,
            self.trail_id,
        )
        self._heartbeat_at = time.monotonic()
        siblings = self.siblings() if others else frozenset()
        for row in others:
            if row["trail_id"] in siblings:
                continue
            self._conflict(
                f"proxy:{row['trail_id']}",
                f"proxy_id {self.proxy_id!r} is also shipped by another trail"
                f" ({row['trail_id']} on host {row['hostname']!r}) at the same time as this one"
                f" ({self.trail_id}): both are stored in full, but readers grouping by proxy_id"
                " see them as one proxy; give each proxy its own proxy_id",
            )

    def _conflict(self, key: str, message: str) -> None:
        if key not in self.conflicts:
            log.error("audit store %s: %s", self._where(), message)
        self.conflicts[key] = message

    def _read_files(self) -> Batch | None:
        """The next events after store_seq from the files, up to where memory takes over."""
        if self.tail.last_seq != self.store_seq:
            self.tail.reset(self.store_seq)  # memory shipped past the tail's position
        limit = self.sink.batch_size
        held = self.memory.first_seq
        if held is not None:
            limit = max(1, min(limit, held - self.store_seq - 1))
        lines = self._read_lines(limit)
        if not lines:
            return None
        self.read_back += len(lines)
        return rowmod.lines_batch(lines[0].event["seq"], [(ln.event, ln.raw) for ln in lines])

    def _read_lines(self, limit: int) -> list[TrailLine]:
        while True:
            try:
                return self.tail.read(limit)
            except TrailGap as gap:
                # Events missing from the files themselves (deleted or truncated): nothing
                # can bring them back; `pgwarden verify` reports it. Ship what exists.
                self.gaps += 1
                log.error("%s; shipping continues from seq %d", gap, gap.found)
                self.tail.skip_to(gap.found)

    async def _ship(self, batch: Batch) -> None:
        started = time.perf_counter()
        shipped = batch.count
        try:
            await self._insert_batch(batch)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
            # One bad event must not hold the others back forever: find it, log it, skip it.
            texts, addrs = batch.texts.split("\n"), batch.addrs.split("\n")
            for offset, (text, addr) in enumerate(zip(texts, addrs, strict=True)):
                seq = batch.first_seq + offset
                try:
                    await self._insert_batch(Batch(seq, 1, text, addr))
                except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                    self.rejected += 1
                    shipped -= 1
                    log.error("audit store rejected event seq %d: %s", seq, exc)
        self.ship_seconds += time.perf_counter() - started
        self.batches += 1
        self.shipped += shipped
        self.store_seq = batch.last_seq
        self.trail_seq = max(self.trail_seq, self.store_seq)
        self.memory.release(self.store_seq)

    async def _insert_batch(self, batch: Batch) -> None:
        assert self._conn is not None
        await self._conn.execute(self._insert, self.trail_id, batch.texts, batch.addrs)

    async def _went_down(self, exc: BaseException) -> None:
        self.errors += 1
        self.healthy = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self._was_down:
            log.warning(
                "audit store %s unavailable (%s); events stay in the local trail and will be"
                " shipped when it is back",
                self._where(),
                self.last_error,
            )
            self._was_down = True
        await self._close_conn()

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    def _where(self) -> str:
        """The DSN without its password, for logs."""
        dsn = self.sink.dsn
        if "@" in dsn and "://" in dsn:
            scheme, rest = dsn.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
        return dsn.split("password=")[0].strip() if "password=" in dsn else dsn


class StoreShipper:
    """All ``audit.sinks`` of type postgres for one proxy (usually exactly one)."""

    def __init__(self, cfg: Any, trail: TrailLike, proxy_id: str) -> None:
        self.trail = trail
        self.proxy_id = proxy_id
        self.fail_closed = bool(cfg["audit.fail_closed"])
        configs = [SinkConfig.from_mapping(s) for s in cfg["audit.sinks"]]
        audit_dir = str(cfg["audit.dir"])
        self.trail_id = load_or_create(audit_dir)
        self.sinks = [SinkShipper(c, audit_dir, proxy_id, self.trail_id) for c in configs]
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        add_line_listener: Callable[[LineListener], None] | None = getattr(
            self.trail, "add_line_listener", None
        )
        written = getattr(self.trail, "last_seq", None)
        for sink in self.sinks:
            if isinstance(written, int):
                sink.trail_seq = written  # what the files may hold beyond the store
            sink.fed = add_line_listener is not None
        if add_line_listener is not None:
            add_line_listener(self._on_written)
        else:
            self.trail.add_listener(self._on_batch)
        for sink in self.sinks:
            self._tasks.append(asyncio.create_task(sink.run(), name="pgwarden-store-shipper"))

    async def aclose(self, grace: float = 5.0) -> None:
        """Ship what is on disk if the store answers within ``grace`` seconds, then stop.

        Whatever is left stays in the trail files and is shipped by the next start.
        """
        for sink in self.sinks:
            sink.stop()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _on_batch(self, events: list[Event]) -> None:
        seq = max((e.get("seq", 0) for e in events), default=None)
        self._to_loop(lambda sink: sink.wake(seq))

    def _on_written(self, events: list[Event], data: bytes | None) -> None:
        """The trail's line listener: hand the batch just written to every sink that can
        hold it (decoded once for all of them), and wake them."""
        if not events:
            return
        first, last = events[0].get("seq"), events[-1].get("seq")
        if not isinstance(first, int) or not isinstance(last, int):
            return
        batch = None
        if data is not None and any(s.wants(first, len(events)) for s in self.sinks):
            batch = rowmod.written_batch(events, data)
        count = len(events)
        self._to_loop(lambda sink: sink.hand_over(batch, count, last))

    def _to_loop(self, call: Callable[[SinkShipper], None]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for sink in self.sinks:
            if running is loop:
                call(sink)
            else:  # the trail called us from another thread
                loop.call_soon_threadsafe(call, sink)

    @property
    def healthy(self) -> bool:
        return all(sink.healthy for sink in self.sinks)

    @property
    def conflicts(self) -> tuple[str, ...]:
        """Identity conflicts found in any store (see :class:`SinkShipper`), as messages."""
        return tuple(sorted({m for sink in self.sinks for m in sink.conflicts.values()}))

    @property
    def backlog(self) -> int:
        """Events written to the local trail and not yet in the store (worst sink)."""
        written = 0
        last_seq, pending = getattr(self.trail, "last_seq", None), getattr(self.trail, "pending", 0)
        if isinstance(last_seq, int) and isinstance(pending, int):
            written = last_seq - pending
        return max((max(sink.backlog, written - sink.store_seq) for sink in self.sinks), default=0)

    @property
    def accepting(self) -> bool:
        """Whether a durable sink accepts records: the local trail is the durable record the
        store is fed from, so this is the trail's health; a store outage only grows the
        backlog."""
        return bool(self.trail.healthy)

    @property
    def stats(self) -> dict[str, float]:
        return {
            "shipped": float(sum(s.shipped for s in self.sinks)),
            "batches": float(sum(s.batches for s in self.sinks)),
            "errors": float(sum(s.errors for s in self.sinks)),
            "rejected": float(sum(s.rejected for s in self.sinks)),
            "gaps": float(sum(s.gaps for s in self.sinks)),
            "read_back": float(sum(s.read_back for s in self.sinks)),
            "identity_conflicts": float(len(self.conflicts)),
            "ship_seconds": sum(s.ship_seconds for s in self.sinks),
            "backlog": float(self.backlog),
            "healthy": float(self.healthy),
        }
