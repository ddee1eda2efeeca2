"""The audit trail writer: events in, hash-chained JSONL lines out, never dropped or reordered.

The session calls :meth:`AuditTrail.submit` for each event (no I/O there) and holds the
client's results until :meth:`AuditTrail.when_written` calls back. The first submit of an
event-loop turn schedules one flush with ``call_soon``; the flush seals every pending event
into the chain and writes all of them with one ``os.write`` on an ``O_APPEND`` descriptor,
then releases the callbacks in order. With ``audit.fsync=always`` the callbacks wait for an
``fsync`` (done in a thread) as well.

When a write fails (disk full, I/O error, permissions) the events stay in memory, in order,
bounded by ``audit.queue_max`` (callers wait via :meth:`wait_not_full`); one diagnostic names
the file and errno, and the write is retried with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.audit import dispatch
from proxy.audit.chain import HMAC_SHA256, Chainer, head_mac, load_hmac_key
from proxy.audit.housekeeping import compress, fsync_quietly, retire
from proxy.audit.jsonl import (
    CURRENT,
    HEAD,
    iter_raw_lines,
    read_head,
    rotated_name,
    trail_files,
)
from proxy.audit.record import Event
from proxy.audit.recovery import inspect_current, last_rotated_record, state_of
from proxy.audit.textcap import cap_statement, may_cap
from proxy.audit.timeparse import parse_ts
from proxy.audit.trailid import load_or_create
from proxy.config import Config
from proxy.errors import AuditError

log = logging.getLogger("pgwarden.audit")

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
HEAD_INTERVAL = 0.1  # seconds audit.head may lag behind the trail
_HEAD_SIZE = 256  # audit.head is rewritten in place at a fixed size: no truncation needed
_RETRY_FIRST = 0.05
_RETRY_MAX = 5.0
_ERROR_LOG_EVERY = 30.0


@dataclass(slots=True)
class TrailStats:
    """Counters for metrics and the admin API."""

    events_written: int = 0
    batches: int = 0
    bytes_written: int = 0
    write_errors: int = 0
    rotations: int = 0
    last_error: str = ""
    last_flush_seconds: float = 0.0


Listener = Callable[[list[Event]], None]
# Called with a written batch and its lines exactly as written (None when the batch reached the
# file in pieces after a failed write): the store shipper takes them from memory this way.
LineListener = Callable[[list[Event], bytes | None], None]


class AuditTrail:
    """The local JSONL audit trail of one proxy (see the module docstring)."""

    def __init__(
        self, cfg: Config, proxy_id: str, scrub: Callable[[Event], None] | None = None
    ) -> None:
        self.directory = Path(cfg["audit.dir"])
        # Redaction at the sink boundary for what the session cannot redact earlier (error
        # texts); proxy.sql.redact.scrub_event, passed in by the server (audit imports no SQL).
        self._scrub = scrub
        self.proxy_id = proxy_id
        self.rotate_size: int = cfg["audit.rotate_size"]
        self.rotate_age: float = cfg["audit.rotate_age"]
        self.compress_rotated: bool = cfg["audit.compress_rotated"]
        self.fsync_mode: str = cfg["audit.fsync"]
        self.fsync_interval: float = cfg["audit.fsync_interval"]
        self.queue_max: int = cfg["audit.queue_max"]
        self.statement_max: int = cfg["audit.statement_max"]
        self.hmac_key_file: str = cfg["audit.hmac_key_file"]
        self.trail_id = ""  # set by open(): see proxy.audit.trailid
        self.retention: float = cfg["audit.retention"]
        self.write_ahead: bool = cfg["audit.write_ahead"]
        self._key: bytes | None = None
        self._retention_due = False
        self._pruning = False  # a pruned record is on its way; its files go once it is written
        self.stats = TrailStats()
        self._chainer = Chainer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0  # last seq handed out by submit
        self._queue: list[Event] = []  # submitted, not sealed yet
        self._out: bytes = b""  # sealed lines not yet (completely) written
        self._out_events: list[Event] = []
        self._out_first_seq = 0
        self._out_last_seq = 0
        self._partial = False  # part of self._out is already in the file
        self._written_seq = 0  # every seq <= this reached the OS
        self._synced_seq = 0  # every seq <= this was fsynced
        self._sync_busy = False
        self._waiters: deque[tuple[int, Callable[[], None]]] = deque()
        self._not_full: list[asyncio.Future[None]] = []
        self._when_accepting: list[Callable[[], None]] = []
        self._listeners: list[Listener] = []
        self._line_listeners: list[LineListener] = []
        self._flush_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._fsync_timer: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_seq = -1
        self._written_hash = ""
        self._retry_delay = _RETRY_FIRST
        self._failing_since = 0.0
        self._last_error_log = 0.0
        self._last_errno = 0
        self._fd = -1
        self._head_fd = -1
        self._file_size = 0
        self._file_first_seq = 0
        self._file_started = 0.0
        self._unsynced = False
        self._healthy = True
        # Whether statements may be forwarded (a plain attribute: sessions read it for every
        # statement). False from a failed write until a write succeeds with the queue below
        # audit.queue_max; meanwhile sessions hold statements back (nothing runs unaudited).
        self.accepting = True
        # pending >= queue_max, kept as a plain attribute: sessions read it for every chunk a
        # client sends (a property is an interpreted call each time)
        self.full = False
        self._closed = False
        # One thread for fsync/close, in submission order, so a descriptor is never closed
        # under a pending fsync; another for gzip, which may take seconds.
        self._sync_pool = ThreadPoolExecutor(1, thread_name_prefix="pgwarden-audit-sync")
        self._gzip_pool = ThreadPoolExecutor(1, thread_name_prefix="pgwarden-audit-gzip")

    # --- opening and recovery ---------------------------------------------------------------

    def open(self) -> None:
        """Create the directory, load the HMAC key and resume the chain from the files."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(
                f"cannot create audit directory {str(self.directory)!r}: {exc.strerror or exc}"
            ) from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise AuditError(f"audit directory {str(self.directory)!r} is not writable")
        key = self._key = load_hmac_key(self.hmac_key_file) if self.hmac_key_file else None
        self.trail_id = load_or_create(self.directory)
        for leftover in self.directory.glob("*.gz.tmp"):
            leftover.unlink(missing_ok=True)  # a gzip interrupted by a crash
        current = inspect_current(self.directory)
        if current is not None and current.torn:
            last = current.last_record or last_rotated_record(self.directory)
            log.warning(
                "audit file %s ends with a torn line (crash while writing?); it is rotated "
                "as it is and the chain continues from seq %s",
                self.directory / CURRENT,
                last["seq"] if last else 0,
            )
            first = current.first_record or {"seq": state_of(last).last_seq + 1}
            self._rename_current(int(first["seq"]))
            current = None
        elif current is not None and current.last_record is not None:
            last = current.last_record
        else:
            last = last_rotated_record(self.directory)
        state = state_of(last)
        if key is None and last is not None and last.get("chain") == HMAC_SHA256:
            # The chain mode never goes down: continuing a keyed trail with plain SHA-256
            # would be exactly the downgrade a forger wants.
            raise AuditError(
                f"the audit trail in {str(self.directory)!r} is HMAC-keyed (seq "
                f"{state.last_seq}); set audit.hmac_key_file to its key to continue it"
            )
        self._check_head(state.last_seq)
        self._chainer = Chainer(key, state.last_seq, state.last_hash)
        self._seq = self._written_seq = self._synced_seq = state.last_seq
        self._written_hash = state.last_hash
        self._open_current()
        if current is not None and current.first_record is not None:
            self._file_size = current.size
            self._file_first_seq = int(current.first_record["seq"])
            self._file_started = _epoch(current.first_record.get("ts"))
        self._open_head()
        # A head exists from the first start on, so `verify` can treat a missing one as removed.
        self._write_head()
        self._retention_due = self.retention > 0
        if self.write_ahead:
            self._close_unfinished()
        if self.compress_rotated:
            for trail_file in trail_files(self.directory, include_current=False):
                if not trail_file.gzipped:
                    self._gzip_pool.submit(compress, trail_file.path)

    def _close_unfinished(self) -> None:
        """audit.write_ahead: close the statements a crash left dispatched but unrecorded
        (``outcome: unknown``), then mark the trail settled up to here."""
        found = dispatch.scan(self.directory)
        closed = []
        for record in found.unfinished:
            self.submit(dispatch.closing_record(record, "unknown", "proxy_restarted"))
            closed.append(int(record["seq"]))
        if closed:
            log.warning(
                "%d statement(s) were forwarded before the last stop but never seen to finish "
                "(crash?); recorded with outcome unknown (dispatch seq %s)",
                len(closed),
                ", ".join(map(str, closed[:20])) + (" …" if len(closed) > 20 else ""),
            )
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.submit(dispatch.recovery_record(self.proxy_id, now, closed, found.records_read))

    def _check_head(self, last_seq: int) -> None:
        head = read_head(self.directory)
        if head is not None and head.seq > last_seq:
            log.warning(
                "%s says seq %d was written but the trail ends at seq %d: records were lost "
                "(a crash before they reached the disk, or the files were truncated); "
                "`pgwarden verify` reports this as truncated",
                self.directory / HEAD,
                head.seq,
                last_seq,
            )

    def _open_current(self) -> None:
        path = self.directory / CURRENT
        try:
            self._fd = os.open(path, _OPEN_FLAGS, 0o640)
        except OSError as exc:
            raise AuditError(f"cannot open audit file {str(path)!r}: {exc.strerror}") from None
        self._file_size = os.fstat(self._fd).st_size
        self._file_first_seq = 0
        self._file_started = 0.0

    def _open_head(self) -> None:
        try:
            self._head_fd = os.open(self.directory / HEAD, os.O_WRONLY | os.O_CREAT, 0o640)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.directory / HEAD, exc.strerror)

    def _rename_current(self, first_seq: int) -> Path:
        target = self.directory / rotated_name(datetime.now(UTC), first_seq)
        os.rename(self.directory / CURRENT, target)
        if self.compress_rotated:
            self._gzip_pool.submit(compress, target)
        return target

    # --- the hot path -----------------------------------------------------------------------

    def submit(self, event: Event) -> None:
        """Queue ``event`` (the trail owns the dict from now on) and give it its ``seq``."""
        self._seq += 1
        event["seq"] = self._seq
        if self._seq - self._written_seq >= self.queue_max:
            self.full = True
        if event.get("type") == "session_start":
            # Which trail a session's events are in, for a reader of the merged store.
            event["trail_id"] = self.trail_id
        if self._scrub is not None and event.get("error"):
            self._scrub(event)
        text = event.get("statement")
        if text is not None and may_cap(text, self.statement_max):
            cap_statement(event, self.statement_max)
        self._queue.append(event)
        if self._flush_handle is None and self._retry_handle is None:
            loop = self._loop or asyncio._get_running_loop()
            if loop is None:  # no event loop (tools, benchmarks): write right away
                self._flush()
                return
            self._loop = loop
            self._flush_handle = loop.call_soon(self._flush)

    def when_written(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every event submitted so far reached the OS (and the disk,
        with ``audit.fsync=always``); right now if nothing is pending."""
        # (_done_seq() inline: this runs for every statement)
        done = self._synced_seq if self.fsync_mode == "always" else self._written_seq
        if done >= self._seq:
            callback()
        else:
            self._waiters.append((self._seq, callback))

    @property
    def pending(self) -> int:
        """Events submitted but not written yet."""
        return self._seq - self._written_seq

    async def wait_not_full(self) -> None:
        while self.full:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._not_full.append(future)
            await future

    def when_accepting(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (later, from a successful write) once :attr:`accepting` is
        true again."""
        self._when_accepting.append(callback)

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn`` with each batch of events right after it was written."""
        self._listeners.append(fn)

    def add_line_listener(self, fn: LineListener) -> None:
        """Call ``fn`` with each batch of events and its JSONL lines right after they were
        written (the lines are None for a batch whose write was split by a failure)."""
        self._line_listeners.append(fn)

    @property
    def healthy(self) -> bool:
        """Whether the last write succeeded."""
        return self._healthy

    @property
    def last_seq(self) -> int:
        return self._seq

    def _done_seq(self) -> int:
        return self._synced_seq if self.fsync_mode == "always" else self._written_seq

    def _flush(self) -> None:
        self._flush_handle = None
        queue = self._queue
        if queue:
            self._queue = []
            sealed = self._chainer.seal(queue)
            if self._out_events:
                self._out += sealed
                self._out_events.extend(queue)
            else:
                self._out = sealed
                self._out_events = queue
                self._out_first_seq = queue[0]["seq"]
            self._out_last_seq = queue[-1]["seq"]
        if self._out_events and self._fd >= 0:
            self._write_out()
        if self._retention_due and not self._out_events:
            self._retention_due = False
            self._apply_retention()

    def _write_out(self) -> None:
        started = time.perf_counter()
        if not self._partial:
            self._maybe_rotate(len(self._out))
            if self._fd < 0:
                return  # the new file could not be opened; a retry is scheduled
        data = self._out
        whole = not self._partial  # no part of data reached the file before this call
        total = len(data)
        done = 0
        try:
            while done < total:
                done += os.write(self._fd, data[done:] if done else data)
                self._partial = True
        except OSError as exc:
            self._out = data[done:]
            self._file_size += done
            self._write_failed(exc)
            return
        self._partial = False
        self._file_size += total
        if self._file_first_seq == 0:
            self._file_first_seq = self._out_first_seq
            self._file_started = time.time()
        events = self._out_events
        self._out = b""
        self._out_events = []
        self._written_seq = self._out_last_seq
        self.full = self._seq - self._written_seq >= self.queue_max
        self._written_hash = events[-1]["hash"]
        self._unsynced = True
        stats = self.stats
        stats.events_written += len(events)
        stats.batches += 1
        stats.bytes_written += total
        if not self._healthy:
            self._recovered()
        self._schedule_head()
        if self.fsync_mode == "always":
            self._request_sync()
        else:
            self._run_waiters(self._written_seq)
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:
                log.exception("audit listener %r failed", listener)
        for line_listener in self._line_listeners:
            try:
                line_listener(events, data if whole else None)
            except Exception:
                log.exception("audit listener %r failed", line_listener)
        if self._not_full and not self.full:
            self._wake_not_full()
        if not self.accepting and not self.full:
            self.accepting = True
            self._wake_accepting()
        if self.fsync_mode == "interval" and self._fsync_timer is None and self._loop:
            self._fsync_timer = self._loop.call_later(self.fsync_interval, self._interval_sync)
        stats.last_flush_seconds = time.perf_counter() - started

    def _run_waiters(self, done: int) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= done:
            callback = waiters.popleft()[1]
            try:
                callback()
            except Exception:
                log.exception("audit when_written callback failed")

    def _wake_not_full(self) -> None:
        futures, self._not_full = self._not_full, []
        for future in futures:
            if not future.done():
                future.set_result(None)

    def _wake_accepting(self) -> None:
        callbacks, self._when_accepting = self._when_accepting, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("audit when_accepting callback failed")

    def _schedule_head(self) -> None:
        # audit.head trails the file by at most HEAD_INTERVAL: one small write per interval
        # instead of one more syscall per flush on the hot path.
        if self._head_timer is None:
            if self._loop is None:
                self._write_head()
            else:
                self._head_timer = self._loop.call_later(HEAD_INTERVAL, self._write_head)

    def _write_head(self) -> None:
        self._head_timer = None
        if self._head_fd < 0 or self._head_seq == self._written_seq:
            return
        self._head_seq = self._written_seq
        text = f'{{"seq":{self._written_seq},"hash":"{self._written_hash}"'
        if self._key is not None:
            text += f',"mac":"{head_mac(self._key, self._written_seq, self._written_hash)}"'
        text += "}"
        # The head is an extra anchor; a failure here does not undo the trail write.
        with contextlib.suppress(OSError):
            os.pwrite(self._head_fd, text.ljust(_HEAD_SIZE - 1).encode() + b"\n", 0)

    # --- durability ---------------------------------------------------------------------------

    def _request_sync(self) -> None:
        if self._sync_busy or self._loop is None:
            if self._loop is None:  # synchronous use: fsync inline
                os.fsync(self._fd)
                self._synced_seq = self._written_seq
                self._run_waiters(self._synced_seq)
            return
        self._sync_busy = True
        target = self._written_seq
        future = self._loop.run_in_executor(self._sync_pool, os.fsync, self._fd)
        future.add_done_callback(lambda f: self._sync_done(f, target))

    def _sync_done(self, future: asyncio.Future[None], target: int) -> None:
        self._sync_busy = False
        exc = future.exception()
        if exc is not None:
            # The data reached the OS; an fsync error means the disk may not have it.
            log.error("fsync of %s failed: %s", self.directory / CURRENT, exc)
            self.stats.write_errors += 1
            self.stats.last_error = f"fsync {self.directory / CURRENT}: {exc}"
        self._synced_seq = max(self._synced_seq, target)
        self._unsynced = self._written_seq > target
        self._run_waiters(self._synced_seq)
        if self._written_seq > self._synced_seq:
            self._request_sync()

    def _interval_sync(self) -> None:
        self._fsync_timer = None
        if not self._unsynced or self._fd < 0:
            return
        self._unsynced = False
        fd = self._fd
        self._sync_pool.submit(fsync_quietly, fd)

    # --- rotation -----------------------------------------------------------------------------

    def _maybe_rotate(self, incoming: int) -> None:
        if self._file_size == 0:
            return
        too_big = self._file_size + incoming > self.rotate_size
        too_old = self._file_started and time.time() - self._file_started >= self.rotate_age
        if too_big or too_old:
            self.rotate()

    def rotate(self) -> None:
        """Close the current file under its rotated name and start a new ``audit.jsonl``."""
        if self._fd < 0 or self._file_size == 0 or self._partial:
            return
        first = self._file_first_seq or self._written_seq + 1
        try:
            target = self._rename_current(first)
        except OSError as exc:
            log.error("cannot rotate %s: %s", self.directory / CURRENT, exc.strerror)
            return
        old_fd, self._fd = self._fd, -1
        sync = self.fsync_mode != "none"
        self._sync_pool.submit(retire, old_fd, sync, str(self.directory) if sync else None)
        self.stats.rotations += 1
        self._retention_due = self.retention > 0
        log.info("audit file rotated to %s", target.name)
        try:
            self._open_current()
        except AuditError as exc:
            self._write_failed(OSError(errno.EIO, str(exc)))

    # --- retention ---------------------------------------------------------------------------

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest record written: what an external anchor publishes."""
        return self._written_seq, self._written_hash

    def _apply_retention(self) -> None:
        """Remove rotated files older than ``audit.retention``, oldest first, after a chained
        ``pruned`` event says what goes: `verify` accepts a missing start of the trail only
        when such an event accounts for exactly the removed records."""
        if self._pruning:
            return
        rotated = trail_files(self.directory, include_current=False)
        cutoff = datetime.now(UTC).timestamp() - self.retention
        doomed = []
        for trail_file in rotated:
            if trail_file.rotated_at is None or trail_file.rotated_at.timestamp() > cutoff:
                break
            doomed.append(trail_file)
        if not doomed:
            return
        after = rotated[len(doomed)] if len(doomed) < len(rotated) else None
        following = after.path if after is not None else self.directory / CURRENT
        first_kept = _first_record(following)
        if first_kept is None:
            if after is not None:  # (an empty current file just means: try after a write)
                log.error(
                    "retention: cannot read the first record of %s; nothing pruned", following
                )
            return
        event = {
            "v": 1,
            "type": "pruned",
            "proxy_id": self.proxy_id,
            "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "files": [f.path.name for f in doomed],
            "first_seq": doomed[0].first_seq,
            "last_seq": int(first_kept["seq"]) - 1,
            "last_hash": str(first_kept.get("prev_hash")),
        }
        self._pruning = True
        self.submit(event)
        self.when_written(lambda: self._remove_pruned(doomed))

    def _remove_pruned(self, doomed: list[Any]) -> None:
        self._pruning = False
        for trail_file in doomed:
            for path in (trail_file.path, trail_file.path.with_name(trail_file.path.name + ".gz")):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    log.error("retention: cannot remove %s: %s", path, exc.strerror)
        log.info("retention: pruned %d audit file(s) older than audit.retention", len(doomed))

    # --- failure and recovery -----------------------------------------------------------------

    def _write_failed(self, exc: OSError) -> None:
        now = time.monotonic()
        path = self.directory / CURRENT
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        message = f"cannot write audit file {path}: {exc.strerror or exc} ({code})"
        self.stats.write_errors += 1
        self.stats.last_error = message
        if self._healthy:
            self._failing_since = now
        self._healthy = False
        self.accepting = False
        if exc.errno != self._last_errno or now - self._last_error_log >= _ERROR_LOG_EVERY:
            log.error(
                "%s; %d audit events are held in memory (limit audit.queue_max=%d); the "
                "results of statements are held until their events are written, and new "
                "statements wait once the limit is reached; retrying",
                message,
                self.pending,
                self.queue_max,
            )
            self._last_error_log = now
            self._last_errno = exc.errno or 0
        if self._loop is None:
            raise AuditError(message)
        self._retry_handle = self._loop.call_later(self._retry_delay, self._retry)
        self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)

    def _retry(self) -> None:
        self._retry_handle = None
        if self._fd < 0:
            try:
                self._open_current()
            except AuditError as exc:
                self._write_failed(OSError(errno.EIO, str(exc)))
                return
        self._flush()

    def _recovered(self) -> None:
        log.warning(
            "audit file %s writable again after %.1fs; no events were lost",
            self.directory / CURRENT,
            time.monotonic() - self._failing_since,
        )
        self._healthy = True
        self._retry_delay = _RETRY_FIRST
        self._last_errno = 0

    # --- shutdown -----------------------------------------------------------------------------

    async def aclose(self, attempts: int = 20) -> None:
        """Write everything still pending (retrying a while), fsync and close."""
        if self._closed:
            return
        for handle in (self._flush_handle, self._fsync_timer, self._head_timer):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._fsync_timer = self._head_timer = None
        for _ in range(attempts):
            if self._retry_handle is not None:
                self._retry_handle.cancel()
                self._retry_handle = None
            self._flush()
            if not self._out_events:
                break
            await asyncio.sleep(min(self._retry_delay, 0.5))
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        if self._out_events:
            log.error(
                "%d audit events (seq %d..%d) could not be written before shutdown: %s",
                len(self._out_events),
                self._out_events[0]["seq"],
                self._out_last_seq,
                self.stats.last_error,
            )
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            await loop.run_in_executor(self._sync_pool, retire, fd, True, None)
            self._synced_seq = self._written_seq
            self._run_waiters(self._synced_seq)
        if self._head_fd >= 0:
            self._write_head()
            os.close(self._head_fd)
            self._head_fd = -1
        await loop.run_in_executor(None, self._shutdown_pools)

    def close(self) -> None:
        """Synchronous close for use without an event loop (tools, benchmarks)."""
        self._flush()
        if self._fd >= 0:
            retire(self._fd, self.fsync_mode != "none", None)
            self._fd = -1
        if self._head_fd >= 0:
            os.close(self._head_fd)
            self._head_fd = -1
        self._closed = True
        self._shutdown_pools()

    def _shutdown_pools(self) -> None:
        self._sync_pool.shutdown(wait=True)
        self._gzip_pool.shutdown(wait=True)


def _first_record(path: Path) -> dict[str, Any] | None:
    for raw in iter_raw_lines(path):
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return record if isinstance(record, dict) and "seq" in record else None
    return None


def _epoch(ts: Any) -> float:
    try:
        return parse_ts(ts).timestamp() if isinstance(ts, str) else time.time()
    except ValueError:
        return time.time()
