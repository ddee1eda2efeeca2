"""Shipping from memory: the batches the trail just wrote go to the store without being read
back, equal to what the files hold; whatever memory does not hold (before a start, during an
outage, past its bound) comes from the files, never lost and never doubled."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import orjson
import pytest

from proxy import config, pgrun
from proxy.audit.chain import Chainer
from proxy.audit.reader import iter_events
from proxy.audit.trail import AuditTrail
from proxy.store.memory import MemoryQueue
from proxy.store.rows import COLUMNS, Batch, lines_batch, written_batch
from proxy.store.tail import TrailTail
from tests.test_store import make_events, shipping, store_dsn, wait_until  # noqa: F401

pytestmark = pytest.mark.e2e  # most tests here start PostgreSQL clusters

# --- pieces, no PostgreSQL ------------------------------------------------------------------


def sealed(events: list[dict[str, Any]], first_seq: int = 1) -> tuple[list[dict[str, Any]], bytes]:
    records = [{**e, "proxy_id": "p", "seq": first_seq + i} for i, e in enumerate(events)]
    return records, Chainer().seal(records)


def odd_events() -> list[dict[str, Any]]:
    """Events whose JSON needs care: a NUL from a binary parameter, a Unix-socket client, an
    IPv6 client, junk where an address should be, non-ASCII text, backslashes."""
    rng = random.Random(21)
    events = make_events(12, rng)
    events[1]["statement"] = "SELECT 'a\x00b'"
    events[1]["params"] = {"k\x00": ["\x00"]}
    events[2]["client_addr"] = "unix"
    events[3]["client_addr"] = "::ffff:10.0.0.1"
    events[4]["client_addr"] = "not an address"
    events[5]["client_addr"] = None
    events[6]["statement"] = "SELECT E'\\\\n', 'Ünï\tcode\n'"
    return events


def test_the_batch_handed_over_equals_the_one_read_back_from_the_file(tmp_path: Path) -> None:
    records, data = sealed(odd_events())
    (tmp_path / "audit.jsonl").write_bytes(data)
    tail = TrailTail(tmp_path)
    lines = tail.read(100)
    tail.close()
    from_file = lines_batch(1, [(ln.event, ln.raw) for ln in lines])
    from_memory = written_batch(records, data)
    assert from_memory == from_file
    assert from_memory.count == len(records) == len(from_memory.texts.split("\n"))
    # Byte for byte the written lines, except NULs, which jsonb cannot hold.
    written = data.decode().split("\n")[:-1]
    for index, text in enumerate(from_memory.texts.split("\n")):
        if index == 1:
            assert "\\u0000" in written[index] and "\\u0000" not in text
            assert orjson.loads(text)["statement"] == "SELECT 'a\ufffdb'"
        else:
            assert text == written[index]
    assert from_memory.addrs.split("\n")[2:6] == ["", "::ffff:a00:1", "", ""]


def test_a_batch_that_does_not_match_its_lines_is_not_taken() -> None:
    records, data = sealed(make_events(5, random.Random(1)))
    assert written_batch(records[:4], data) is None  # one line more than events
    assert written_batch(records[1:], data) is None  # one line fewer
    assert written_batch(records, data[:-1]) is None  # torn
    assert written_batch([records[0], records[2]], data) is None  # not consecutive


def batch(first: int, count: int) -> Batch:
    return Batch(
        first,
        count,
        "\n".join(f'{{"seq":{s}}}' for s in range(first, first + count)),
        "\n".join(f"10.0.0.{s % 250}" for s in range(first, first + count)),
    )


def seqs(found: Batch | None) -> list[int]:
    assert found is not None
    got = [orjson.loads(t)["seq"] for t in found.texts.split("\n")]
    assert got == list(range(found.first_seq, found.last_seq + 1))
    assert found.addrs.split("\n") == [f"10.0.0.{s % 250}" for s in got]
    return got


def test_the_memory_queue_holds_one_run_and_stays_bounded() -> None:
    queue = MemoryQueue(max_events=20)
    assert queue.offer(batch(5, 8)) and queue.offer(batch(13, 8))
    assert not queue.offer(batch(21, 8))  # full: the files have it
    assert not queue.offer(batch(30, 1))  # not following the held run
    assert queue.refused == 9 and queue.events == 16
    assert queue.take(4, 100) is None  # seq 4 is not held: read the files up to seq 4
    assert seqs(queue.take(5, 10)) == list(range(5, 13))  # whole batches only while they fit
    assert seqs(queue.take(7, 3)) == [7, 8, 9]  # a batch cut when it alone exceeds the limit
    assert queue.events == 14  # before seq 7 is dropped: the store has it
    queue.release(15)
    assert queue.first_seq == 16 and queue.events == 5
    assert seqs(queue.take(16, 100)) == [16, 17, 18, 19, 20]
    queue.release(20)
    assert queue.events == 0 and queue.first_seq is None
    assert queue.offer(batch(40, 3))  # empty again: takes the next batch, wherever it starts
    assert queue.take(21, 100) is None and queue.first_seq == 40


# --- against a real store -------------------------------------------------------------------


def trail_config(audit_dir: Path, dsn: str, **sink: Any) -> config.Config:
    return config.defaults().replace(
        audit__dir=str(audit_dir), audit__sinks=[{"type": "postgres", "dsn": dsn, **sink}]
    )


@asynccontextmanager
async def open_trail(cfg: config.Config, proxy_id: str) -> AsyncIterator[AuditTrail]:
    trail = AuditTrail(cfg, proxy_id)
    trail.open()
    try:
        yield trail
    finally:
        await trail.aclose()


async def write(trail: AuditTrail, events: list[dict[str, Any]], per_turn: int = 8) -> None:
    for start in range(0, len(events), per_turn):
        for event in events[start : start + per_turn]:
            trail.submit({**event, "proxy_id": trail.proxy_id})
        await asyncio.sleep(0)  # one write per turn, as sessions cause them
    done = asyncio.Event()
    trail.when_written(done.set)
    await asyncio.wait_for(done.wait(), 10)


async def rows(dsn: str, trail_id: str, schema: str = "public") -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetch(
            f"SELECT {', '.join(COLUMNS)} FROM {schema}.audit_events WHERE trail_id = $1"
            " ORDER BY seq, hash",
            trail_id,
        )
    finally:
        await conn.close()
    return [dict(r) for r in found]


def test_rows_shipped_from_memory_equal_rows_read_back_from_the_files(
    tmp_path: Path,
    store_dsn: str,  # noqa: F811
) -> None:
    """One trail shipped twice: from memory into one schema, read back from the files
    (memory_events 0) into another; every column of every row is the same."""
    proxy_id = f"mem-{uuid.uuid4().hex[:6]}"
    cfg = trail_config(tmp_path / "audit", store_dsn)
    events = make_events(300, random.Random(8)) + odd_events()

    async def main() -> None:
        async with open_trail(cfg, proxy_id) as trail:
            before = trail.last_seq  # records the trail wrote on opening, before any shipper
            async with shipping(cfg, trail) as shipper:
                await wait_until(lambda: shipper.healthy)
                await write(trail, events)
                await wait_until(lambda: shipper.stats["shipped"] == trail.last_seq)
                assert shipper.stats["read_back"] <= before
                assert shipper.stats["rejected"] == 0
            files_cfg = trail_config(
                tmp_path / "audit", store_dsn, schema="from_files", memory_events=0
            )
            async with shipping(files_cfg, trail) as reader:
                await wait_until(lambda: reader.stats["shipped"] == trail.last_seq)
                assert reader.stats["read_back"] == trail.last_seq
        from_memory = await rows(store_dsn, trail.trail_id)
        from_files = await rows(store_dsn, trail.trail_id, "from_files")
        assert from_memory == from_files
        on_disk = list(iter_events(cfg["audit.dir"]))
        assert [r["seq"] for r in from_memory] == [e["seq"] for e in on_disk]
        for row, event in zip(from_memory, on_disk, strict=True):
            if "\\u0000" in orjson.dumps(event).decode():
                continue  # NULs are U+FFFD in the store (jsonb cannot hold them)
            assert orjson.loads(row["event"]) == event
            assert row["hash"] == event["hash"] and row["user_name"] == event.get("user")

    asyncio.run(main())


def test_an_outage_past_the_memory_bound_catches_up_from_the_files(
    tmp_path: Path, store_server: pgrun.LocalCluster
) -> None:
    dsn = store_server.dsn(database="postgres")
    proxy_id = f"outage-{uuid.uuid4().hex[:6]}"
    cfg = trail_config(tmp_path / "audit", dsn, memory_events=40, batch_size=25)
    rng = random.Random(31)

    async def main() -> None:
        async with open_trail(cfg, proxy_id) as trail, shipping(cfg, trail) as shipper:
            sink = shipper.sinks[0]
            await write(trail, make_events(30, rng))
            await wait_until(lambda: shipper.backlog == 0 and shipper.healthy)
            store_server.pause()
            try:
                await write(trail, make_events(20, rng))
                await wait_until(lambda: not shipper.healthy)
                await write(trail, make_events(200, rng))  # far past the memory bound
                assert shipper.backlog >= 200
                assert sink.memory.events <= 40 and sink.memory.refused > 0
            finally:
                store_server.resume()
            await write(trail, make_events(30, rng))  # after the outage: memory again
            await wait_until(lambda: shipper.backlog == 0 and shipper.healthy, within=60)
            assert shipper.stats["read_back"] >= 160
            total = trail.last_seq
        stored = await rows(dsn, trail.trail_id)
        assert [r["seq"] for r in stored] == list(range(1, total + 1))  # each exactly once
        on_disk = list(iter_events(cfg["audit.dir"]))
        assert [orjson.loads(r["event"]) for r in stored] == on_disk

    asyncio.run(main())


def test_a_shipper_restarted_mid_stream_ships_each_event_once(
    tmp_path: Path,
    store_dsn: str,  # noqa: F811
) -> None:
    proxy_id = f"restart-{uuid.uuid4().hex[:6]}"
    cfg = trail_config(tmp_path / "audit", store_dsn, batch_size=16)
    rng = random.Random(41)

    async def main() -> None:
        async with open_trail(cfg, proxy_id) as trail:
            async with shipping(cfg, trail) as first:
                await wait_until(lambda: first.healthy)
                writer = asyncio.ensure_future(write(trail, make_events(400, rng)))
                await wait_until(lambda: first.stats["shipped"] >= 50)
            # The first shipper stopped while the trail kept writing (its memory is gone).
            await writer
            await write(trail, make_events(40, rng))
            async with shipping(cfg, trail) as second:
                await write(trail, make_events(60, rng))  # and writes go on meanwhile
                await wait_until(lambda: second.backlog == 0 and second.healthy)
                assert second.stats["read_back"] > 0  # what nobody held in memory
                assert second.stats["shipped"] < trail.last_seq  # not everything again
            total = trail.last_seq
        stored = await rows(store_dsn, trail.trail_id)
        assert [r["seq"] for r in stored] == list(range(1, total + 1))
        on_disk = list(iter_events(cfg["audit.dir"]))
        assert [r["hash"] for r in stored] == [e["hash"] for e in on_disk]

    asyncio.run(main())


@pytest.mark.parametrize("memory_events", [0, 7])
def test_overflowing_memory_falls_back_to_the_files_without_loss(
    tmp_path: Path,
    store_dsn: str,  # noqa: F811
    memory_events: int,
) -> None:
    """Batches bigger than the bound (or no memory at all) are read back from the files,
    across rotations, while smaller ones still come from memory."""
    proxy_id = f"overflow-{uuid.uuid4().hex[:6]}"
    cfg = trail_config(
        tmp_path / "audit", store_dsn, memory_events=memory_events, batch_size=10
    ).replace(audit__rotate_size="8kB")
    rng = random.Random(51)

    async def main() -> None:
        async with open_trail(cfg, proxy_id) as trail, shipping(cfg, trail) as shipper:
            await wait_until(lambda: shipper.healthy)
            for per_turn in (3, 20, 5, 50, 2):
                await write(trail, make_events(60, rng), per_turn=per_turn)
            total = trail.last_seq
            await wait_until(lambda: shipper.backlog == 0 and shipper.stats["shipped"] == total)
            assert trail.stats.rotations >= 3
            read_back = shipper.stats["read_back"]
            if memory_events:
                assert 0 < read_back < total and shipper.sinks[0].memory.refused > 0
            else:
                assert read_back == total
        stored = await rows(store_dsn, trail.trail_id)
        assert [r["seq"] for r in stored] == list(range(1, total + 1))
        assert [orjson.loads(r["event"]) for r in stored] == list(iter_events(cfg["audit.dir"]))

    asyncio.run(main())


def test_an_event_the_store_refuses_is_skipped_alone(
    tmp_path: Path,
    store_dsn: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy_id = f"refused-{uuid.uuid4().hex[:6]}"
    cfg = trail_config(tmp_path / "audit", store_dsn)
    events = make_events(40, random.Random(61))
    events[17]["ts"] = "not a time"  # the store's timestamptz refuses it

    async def main() -> None:
        async with open_trail(cfg, proxy_id) as trail, shipping(cfg, trail) as shipper:
            await wait_until(lambda: shipper.healthy)
            await write(trail, events, per_turn=40)  # one batch
            await wait_until(lambda: shipper.backlog == 0 and shipper.stats["rejected"] == 1)
            assert shipper.stats["shipped"] == trail.last_seq - 1
            bad = next(e["seq"] for e in iter_events(cfg["audit.dir"]) if e["ts"] == "not a time")
        stored = await rows(store_dsn, trail.trail_id)
        assert [r["seq"] for r in stored] == [s for s in range(1, trail.last_seq + 1) if s != bad]

    with caplog.at_level("ERROR", logger="pgwarden.store"):
        asyncio.run(main())
    assert any("rejected event seq" in r.getMessage() for r in caplog.records)
