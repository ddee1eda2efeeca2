"""Statement analysis off the event loop: a pool of worker processes with bounded memory.

Why processes and not threads (measured, 500 KB ``SELECT 1,1,…`` on this 2-core machine,
an asyncio loop ticking every 1 ms beside a thread doing the work): libpg_query's
``parse_sql_json`` releases the GIL (worst tick 13 ms over its 0.15 s), but the analysis as a
whole does not: ``extract.analyze`` in a thread stalled the loop for 2.3 s of its 3.6 s
(decoding the parse tree's JSON and walking it hold the GIL), and ``parse_sql`` (AST objects)
for 0.17 s at a time. So a statement at least ``offload_size`` long goes to a worker process
(:mod:`proxy.sql.worker`), and the caller awaits its :class:`Analysis` while the loop serves
everyone else.

Every outcome is a :class:`Analysis`: the facts, and an :class:`Outcome` saying how they came
about. When no analysis could be made (the statement is longer than ``max_size``, the worker
reached its memory limit, crashed, took longer than ``timeout``, answered garbage, or the pool
was closed) the facts carry an ``unparsable_reason`` naming it, so the policy decides the
statement with ``defaults.on_unparsable`` (``block`` unless a policy says ``flag``), exactly as
for text PostgreSQL's grammar rejects. A worker that failed is discarded and a fresh one is
started for the next statement; the others' statements are not affected.

Memory per worker is bounded by RLIMIT_AS (``worker_memory``); at most ``workers`` analyses
run at once, later ones wait in FIFO order. An analysis that reaches the limit ends as
OUT_OF_MEMORY when the worker notices (a MemoryError, or its peak address space at the limit)
and, more often, as CRASHED with SIGSEGV (pglast/libpg_query do not all survive a failed
allocation); the reason text says which, and the decision is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import struct
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO

import orjson

from proxy.errors import AnalysisWorkerError
from proxy.sql import extract, transfer
from proxy.sql.facts import ParserSettings, QueryFacts
from proxy.sql.worker import EXIT_MEMORY

logger = logging.getLogger(__name__)

# An answer larger than this is not read: facts are small next to their text (offsets, not
# copies), so only a broken worker sends more.
MAX_ANSWER = 256 * 1024**2
_STEP = 256  # statements rebuilt between two yields to the loop


class Outcome(enum.Enum):
    """How an :class:`Analysis` came about. Every value but ANALYSED means "not analysed":
    its facts are unparsable and the policy's ``on_unparsable`` decides."""

    ANALYSED = "analysed"  # facts from PostgreSQL's grammar (possibly a parse error)
    TOO_LARGE = "too_large"  # longer than max_size: no analysis attempted
    OUT_OF_MEMORY = "out_of_memory"  # the worker reached worker_memory
    CRASHED = "crashed"  # the worker died without answering
    TIMED_OUT = "timed_out"  # no answer within timeout; the worker was killed
    BAD_ANSWER = "bad_answer"  # the answer was not facts
    CLOSED = "closed"  # the pool was shut down before the analysis finished


@dataclass(frozen=True, slots=True)
class Analysis:
    facts: QueryFacts
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class PoolConfig:
    offload_size: int = 64 * 1024  # shorter texts: analysed inline by the caller
    max_size: int = 16 * 1024**2  # longer texts: not analysed at all (TOO_LARGE)
    workers: int = 2
    worker_memory: int = 4 * 1024**3  # RLIMIT_AS of each worker, bytes (0: no limit)
    timeout: float = 60.0  # seconds one analysis may take
    # What audit records keep of a statement (audit.statement_text, audit.statement_max): the
    # worker makes a long statement's record text as well (proxy.sql.recordtext).
    text_mode: str = "none"
    statement_max: int = 0

    def offloads(self, size: int) -> bool:
        """Whether a text of ``size`` bytes goes to the pool (else: analyse it inline)."""
        return size >= self.offload_size


def _reason(outcome: Outcome, size: int, config: PoolConfig, detail: str = "") -> str:
    match outcome:
        case Outcome.TOO_LARGE:
            return f"statement of {size} bytes exceeds limits.max_analysis_size ({config.max_size})"
        case Outcome.OUT_OF_MEMORY:
            return (
                f"analysing a statement of {size} bytes needed more than "
                f"limits.analysis_worker_memory ({config.worker_memory} bytes)"
            )
        case Outcome.CRASHED:
            died = f"the analysis worker died{f' ({detail})' if detail else ''}"
            if config.worker_memory and detail in _MEMORY_DEATHS:
                # Under RLIMIT_AS, pglast/libpg_query mostly segfault on a failed allocation
                # rather than report it; the worker cannot tell us, so the reason says so.
                return (
                    f"{died} on a statement of {size} bytes, as an analysis that needs more "
                    f"than limits.analysis_worker_memory ({config.worker_memory} bytes) "
                    "usually ends"
                )
            return f"{died} on a statement of {size} bytes"
        case Outcome.TIMED_OUT:
            return (
                f"analysing a statement of {size} bytes took longer than "
                f"limits.analysis_timeout ({config.timeout:g}s)"
            )
        case Outcome.BAD_ANSWER:
            return "the analysis worker gave an answer that is not facts"
        case _:
            return "the proxy is shutting down: the statement was not analysed"


_MEMORY_DEATHS = frozenset({"SIGSEGV", "SIGBUS", "SIGABRT"})


class _Failed(Exception):
    def __init__(self, outcome: Outcome, detail: str = "") -> None:
        super().__init__(outcome.value)
        self.outcome = outcome
        self.detail = detail  # how a worker died: "SIGSEGV", "exit status 1"


def _death(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-returncode).name
    return f"exit status {returncode}"


def _spawn(memory: int) -> tuple[subprocess.Popen[bytes], BinaryIO, BinaryIO]:
    """A worker process and our ends of its stdin and stdout pipes."""
    to_worker, from_worker = os.pipe(), os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.sql.worker", str(memory)],
            stdin=to_worker[0],
            stdout=from_worker[1],
            close_fds=True,
        )
    except BaseException:
        for fd in (*to_worker, *from_worker):
            os.close(fd)
        raise
    os.close(to_worker[0])
    os.close(from_worker[1])
    return proc, os.fdopen(from_worker[0], "rb", buffering=0), os.fdopen(to_worker[1], "wb", 0)


class _Worker:
    """One worker process and the pipe pair it answers on; one request at a time.

    Started with :class:`subprocess.Popen`, not the event loop's subprocess support: under
    uvloop that forks the whole proxy on the loop (11-46 ms measured, more the more memory the
    proxy holds, a stall every session feels), where Popen uses vfork and exec (< 1 ms)."""

    __slots__ = ("proc", "reader", "writer")

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer

    @classmethod
    async def start(cls, memory: int) -> _Worker:
        loop = asyncio.get_running_loop()
        proc, read_pipe, write_pipe = _spawn(memory)
        # The transports own our ends of the pipes from here on (and close them).
        reader = asyncio.StreamReader(limit=MAX_ANSWER, loop=loop)
        try:
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), read_pipe)
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), write_pipe
            )
        except BaseException:
            proc.kill()
            read_pipe.close()
            write_pipe.close()
            await asyncio.to_thread(proc.wait)
            raise
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        return cls(proc, reader, writer)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    async def _exit_status(self) -> int:
        """Wait for the process to end (in a thread: the loop does not reap it)."""
        code = self.proc.poll()
        if code is None:
            code = await asyncio.to_thread(self.proc.wait)
        return code

    async def ask(self, header: bytes, payload: bytes) -> bytes:
        stdin, stdout = self.writer, self.reader
        try:
            stdin.write(struct.pack("!I", len(header)) + header)
            stdin.write(struct.pack("!I", len(payload)))
            stdin.write(payload)
            await stdin.drain()
            (length,) = struct.unpack("!I", await stdout.readexactly(4))
            if length > MAX_ANSWER:
                raise _Failed(Outcome.BAD_ANSWER)
            return await stdout.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
            code = await self._exit_status()
            if code == EXIT_MEMORY:
                raise _Failed(Outcome.OUT_OF_MEMORY) from None
            raise _Failed(Outcome.CRASHED, _death(code)) from None

    def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def stop(self, kill: bool = False) -> None:
        """Close its stdin (it exits at once when idle), kill it if it does not (or at once)."""
        if kill:
            self.kill()
        self.writer.close()
        try:
            await asyncio.wait_for(self._exit_status(), 2)
        except TimeoutError:
            self.kill()
            await self._exit_status()
        self.reader.feed_eof()


class AnalysisPool:
    """``await pool.analyse(sql, settings)`` -> :class:`Analysis`, never raising.

    Workers start on first use (no stall of the loop, see :class:`_Worker`) and are reused;
    ``close()`` stops them and answers waiting callers with Outcome.CLOSED.
    """

    def __init__(self, config: PoolConfig) -> None:
        if config.workers < 1:
            raise ValueError("an analysis pool needs at least one worker")
        self.config = config
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._starting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._reaping: set[asyncio.Future[None]] = set()
        # counters for metrics and tests
        self.analysed = 0
        self.failures: dict[Outcome, int] = {o: 0 for o in Outcome if o is not Outcome.ANALYSED}
        self.started = 0

    @property
    def running(self) -> int:
        """Live worker processes."""
        return len(self._idle) + len(self._busy)

    def busy_pids(self) -> list[int]:
        """Process ids of the workers analysing right now."""
        return [w.proc.pid for w in self._busy]

    async def _start(self) -> _Worker:
        """A new worker process, counted in ``started``."""
        self._starting += 1
        try:
            worker = await _Worker.start(self.config.worker_memory)
        except OSError:
            logger.exception("cannot start an analysis worker")
            raise _Failed(Outcome.CRASHED) from None
        finally:
            self._starting -= 1
        self.started += 1
        if self._closed:
            await worker.stop()
            raise _Failed(Outcome.CLOSED)
        return worker

    async def analyse(self, sql: bytes, settings: ParserSettings) -> Analysis:
        """Facts of the wire bytes ``sql`` under ``settings``, from a worker process."""
        text = extract.decode(sql, settings)
        if isinstance(text, QueryFacts):
            return Analysis(text, Outcome.ANALYSED)  # undecodable: already unparsable facts
        if len(sql) > self.config.max_size:
            return self._failed(text, len(sql), Outcome.TOO_LARGE)
        if self._closed:
            return self._failed(text, len(sql), Outcome.CLOSED)
        codec = extract.python_codec(settings.client_encoding)
        payload = sql if codec == "utf-8" else text.encode("utf-8")
        header = orjson.dumps(
            {
                "standard_conforming_strings": settings.standard_conforming_strings,
                "client_encoding": settings.client_encoding,
                "text_mode": self.config.text_mode,
                "statement_max": self.config.statement_max,
            }
        )
        try:
            worker = await self._acquire()
        except _Failed as exc:
            return self._failed(text, len(sql), exc.outcome)
        healthy = False
        try:
            async with asyncio.timeout(self.config.timeout):
                answer = await worker.ask(header, payload)
            facts = await self._facts(answer, text)
            healthy = True
            self.analysed += 1
            return Analysis(facts, Outcome.ANALYSED)
        except TimeoutError:
            return self._failed(text, len(sql), Outcome.TIMED_OUT)
        except _Failed as exc:
            outcome = Outcome.CLOSED if self._closed else exc.outcome
            return self._failed(text, len(sql), outcome, exc.detail)
        except asyncio.CancelledError:
            raise  # the caller went away: the worker may be mid-answer, so it is replaced
        finally:
            self._release(worker, healthy)

    async def _facts(self, answer: bytes, text: str) -> QueryFacts:
        try:
            data = orjson.loads(answer)
            if isinstance(data, dict) and data.get("memory") is True:
                raise _Failed(Outcome.OUT_OF_MEMORY)
            if not isinstance(data, dict) or "facts" not in data:
                raise _Failed(Outcome.BAD_ANSWER)
            for step in transfer.decode_steps(data["facts"], text, _STEP):
                if step is not None:
                    return step
                await asyncio.sleep(0)  # many statements: let other sessions run between steps
        except (orjson.JSONDecodeError, AnalysisWorkerError):
            raise _Failed(Outcome.BAD_ANSWER) from None
        raise _Failed(Outcome.BAD_ANSWER)

    def _failed(self, text: str, size: int, outcome: Outcome, detail: str = "") -> Analysis:
        self.failures[outcome] += 1
        reason = _reason(outcome, size, self.config, detail)
        if outcome is not Outcome.CLOSED:
            logger.warning("statement not analysed: %s", reason)
        return Analysis(QueryFacts(text, (), unparsable_reason=reason), outcome)

    async def _acquire(self) -> _Worker:
        while True:
            if self._closed:
                raise _Failed(Outcome.CLOSED)
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    self._busy.add(worker)
                    return worker
            if self.running + self._starting < self.config.workers:
                worker = await self._start()
                self._busy.add(worker)
                return worker
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _release(self, worker: _Worker, healthy: bool) -> None:
        self._busy.discard(worker)
        if healthy and worker.alive and not self._closed:
            self._idle.append(worker)
        else:
            # A fresh one is started when needed; this one is killed and reaped.
            reaping = asyncio.ensure_future(worker.stop(kill=True))
            self._reaping.add(reaping)
            reaping.add_done_callback(self._reaping.discard)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Stop every worker; analyses in progress and waiting end with Outcome.CLOSED."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        idle, busy = list(self._idle), list(self._busy)
        self._idle.clear()
        stops = [*(w.stop() for w in idle), *(w.stop(kill=True) for w in busy)]
        await asyncio.gather(*stops, *self._reaping, return_exceptions=True)
