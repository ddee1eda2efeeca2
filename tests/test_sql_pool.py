"""proxy.sql.pool: statement analysis in worker processes, from bytes (no sockets).

Correctness is equality with the inline analysis on the whole corpus; the failure paths (memory
limit, crash, timeout, size cap, shutdown) each end in facts the policy's on_unparsable decides,
and leave the pool working.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import yaml

from proxy.errors import AnalysisWorkerError
from proxy.sql import extract, transfer
from proxy.sql.facts import ParserSettings
from proxy.sql.pool import AnalysisPool, Outcome, PoolConfig

T = TypeVar("T")
CORPUS = [
    case["sql"]
    for case in yaml.safe_load(
        (Path(__file__).parent / "data" / "sql_corpus.yaml").read_text(encoding="utf-8")
    )
]
SETTINGS = ParserSettings()
# 200 kB whose analysis takes ~0.8 s of CPU here and ~0.27 GB at its peak: long enough to
# interrupt, small enough to run in a test.
LARGE = ("SELECT " + ",".join(["1"] * 100_000)).encode()


def run(make: Callable[[AnalysisPool], Awaitable[T]], **config: Any) -> tuple[T, AnalysisPool]:
    pool = AnalysisPool(PoolConfig(**config))

    async def main() -> T:
        try:
            return await make(pool)
        finally:
            await pool.close()

    return asyncio.run(main()), pool


async def _until_busy(pool: AnalysisPool) -> None:
    for _ in range(1000):
        if pool.busy_pids():
            return
        await asyncio.sleep(0.01)  # polling interval
    raise AssertionError("no worker became busy")


def test_transfer_round_trips_the_corpus() -> None:
    for text in [*CORPUS, "", "SELECT 1; SELECT 'é'; PREPARE p AS DELETE FROM t"]:
        facts = extract.analyze(text)
        wire = orjson.loads(orjson.dumps(transfer.encode(facts, text)))
        assert transfer.decode(wire, text) == facts, text


@pytest.mark.parametrize(
    "answer",
    [
        {"class": "os.system", "fields": {}},
        {"class": "QueryFacts", "fields": {"text": "x"}},
        [1, 2],
        {"class": "Relation", "fields": {"schema": None, "name": "t", "access": "read"}},
    ],
    ids=["unknown-class", "missing-fields", "not-an-object", "wrong-class"],
)
def test_transfer_rejects_what_is_not_facts(answer: Any) -> None:
    with pytest.raises(AnalysisWorkerError):
        transfer.decode(answer, "SELECT 1")


def test_transfer_rejects_offsets_outside_the_text() -> None:
    wire = transfer.encode(extract.analyze("SELECT 1"), "SELECT 1")
    wire["fields"]["text"] = {"at": 5, "n": 100}
    with pytest.raises(AnalysisWorkerError):
        transfer.decode(wire, "SELECT 1")


def test_pool_equals_inline_analysis_on_the_corpus() -> None:
    latin1 = ParserSettings(client_encoding="LATIN1")
    off = ParserSettings(standard_conforming_strings=False)
    jobs = [(t.encode(), SETTINGS) for t in CORPUS]
    jobs += [
        ("SELECT 'caf\xe9'".encode("latin-1"), latin1),
        (b"SELECT 1", off),
        (b"\xff", SETTINGS),
    ]

    async def analyse_all(pool: AnalysisPool) -> list[Any]:
        return await asyncio.gather(*(pool.analyse(sql, s) for sql, s in jobs))

    results, pool = run(analyse_all, workers=2)
    for (sql, settings), result in zip(jobs, results, strict=True):
        assert result.outcome is Outcome.ANALYSED, sql
        assert result.facts == extract.analyze_bytes(sql, settings), sql
    assert pool.started <= 2 and pool.analysed == len(jobs) - 1  # b"\xff" needs no worker


def test_memory_limit_kills_the_worker_and_the_pool_goes_on() -> None:
    async def scenario(pool: AnalysisPool) -> tuple[Any, Any]:
        big = await pool.analyse(LARGE, SETTINGS)
        after = await pool.analyse(b"DELETE FROM t", SETTINGS)
        return big, after

    (big, after), pool = run(scenario, workers=1, worker_memory=150 * 1024**2)
    # The worker reports the limit, or (usually) dies of SIGSEGV on a failed allocation.
    assert big.outcome in (Outcome.OUT_OF_MEMORY, Outcome.CRASHED)
    assert not big.facts.parsable and "limits.analysis_worker_memory" in (
        big.facts.unparsable_reason or ""
    ), big.facts.unparsable_reason
    assert big.facts.text == LARGE.decode()
    assert after.outcome is Outcome.ANALYSED and after.facts.statements[0].command == "DELETE"
    assert pool.started == 2, "the worker that hit its limit must be replaced"


def test_crashed_worker_gives_unparsable_facts_and_is_replaced() -> None:
    async def scenario(pool: AnalysisPool) -> tuple[Any, Any]:
        task = asyncio.ensure_future(pool.analyse(LARGE, SETTINGS))
        await _until_busy(pool)
        os.kill(pool.busy_pids()[0], signal.SIGKILL)
        crashed = await task
        return crashed, await pool.analyse(b"SELECT 2", SETTINGS)

    (crashed, after), pool = run(scenario, workers=1)
    assert crashed.outcome is Outcome.CRASHED
    assert "worker died (SIGKILL)" in (crashed.facts.unparsable_reason or "")
    assert "worker_memory" not in (crashed.facts.unparsable_reason or "")
    assert after.outcome is Outcome.ANALYSED and pool.started == 2


def test_timeout_kills_the_worker() -> None:
    result, _ = run(lambda p: p.analyse(LARGE, SETTINGS), workers=1, timeout=0.02)
    assert result.outcome is Outcome.TIMED_OUT
    assert "limits.analysis_timeout" in (result.facts.unparsable_reason or "")


def test_size_cap_analyses_nothing() -> None:
    result, pool = run(lambda p: p.analyse(b"SELECT 1 -- " + b"x" * 200, SETTINGS), max_size=100)
    assert result.outcome is Outcome.TOO_LARGE and not result.facts.parsable
    assert "limits.max_analysis_size" in (result.facts.unparsable_reason or "")
    assert pool.started == 0


def test_the_loop_keeps_moving_and_later_statements_wait_their_turn() -> None:
    async def scenario(pool: AnalysisPool) -> tuple[float, float, list[Any]]:
        worst = 0.0
        started = time.monotonic()
        # one worker: the second long statement queues behind the first, the small one too
        jobs = asyncio.gather(
            pool.analyse(LARGE, SETTINGS),
            pool.analyse(LARGE, SETTINGS),
            pool.analyse(b"SELECT 3", SETTINGS),
        )
        while not jobs.done():
            tick = time.monotonic()
            await asyncio.sleep(0.005)
            worst = max(worst, time.monotonic() - tick)
        return worst, time.monotonic() - started, await jobs

    (worst, took, results), pool = run(scenario, workers=1)
    assert [r.outcome for r in results] == [Outcome.ANALYSED] * 3
    assert results[0].facts == results[1].facts == extract.analyze_bytes(LARGE)
    # Inline, one LARGE analysis holds the loop for its whole duration (seconds).
    assert worst < took / 4, f"the loop stalled {worst:.2f}s of {took:.2f}s"
    assert pool.started == 1


def test_close_answers_waiting_callers_and_stops_workers() -> None:
    async def scenario(pool: AnalysisPool) -> list[Any]:
        jobs = asyncio.gather(pool.analyse(LARGE, SETTINGS), pool.analyse(LARGE, SETTINGS))
        await _until_busy(pool)
        pid = pool.busy_pids()[0]
        await pool.close()
        results = await jobs
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        return results

    results, pool = run(scenario, workers=1)
    assert [r.outcome for r in results] == [Outcome.CLOSED, Outcome.CLOSED]
    assert pool.running == 0
