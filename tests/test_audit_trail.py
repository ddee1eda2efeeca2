"""The audit trail writer: batching, durability callbacks, rotation, gzip, crash recovery and
write failures (disk full) without loss or reordering."""

from __future__ import annotations

import asyncio
import errno
import gzip
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import config
from proxy.audit import trail as trail_module
from proxy.audit.jsonl import CURRENT, parse_rotated_name, read_head, trail_files
from proxy.audit.reader import iter_events
from proxy.audit.trail import AuditTrail
from proxy.audit.verify import verify_trail
from proxy.errors import AuditError

ROOT = Path(__file__).resolve().parents[1]


def make_trail(directory: Path, **changes: Any) -> AuditTrail:
    changes = {"audit__fsync": "none", **changes}
    cfg = config.defaults().replace(audit__dir=str(directory), **changes)
    trail = AuditTrail(cfg, "test-proxy")
    trail.open()
    return trail


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "query",
        "ts": f"2026-11-26T07:40:{n % 60:02d}.000000Z",
        "proxy_id": "test-proxy",
        "user": "alice",
        "statement": f"SELECT {n}",
        **extra,
    }


def seqs(directory: Path) -> list[int]:
    return [e["seq"] for e in iter_events(directory)]


async def wait_until(predicate: Any) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 -- polling a condition from a thread
            await asyncio.sleep(0.01)


def test_one_write_per_loop_turn_and_callbacks_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        trail = make_trail(tmp_path)
        released: list[int] = []
        batches: list[list[int]] = []
        trail.add_listener(lambda evs: batches.append([e["seq"] for e in evs]))
        for n in range(1, 101):
            trail.submit(event(n))
            trail.when_written(lambda n=n: released.append(n))
        assert trail.pending == 100 and released == []  # nothing written inside the turn
        await asyncio.sleep(0)
        assert released == list(range(1, 101))
        assert batches == [list(range(1, 101))]
        assert trail.stats.batches == 1 and trail.stats.events_written == 100
        assert trail.pending == 0
        # Nothing pending: the callback runs at once, synchronously.
        now: list[bool] = []
        trail.when_written(lambda: now.append(True))
        assert now == [True]
        for n in range(101, 104):
            trail.submit(event(n))
            await asyncio.sleep(0)
        assert trail.stats.batches == 4
        await trail.aclose()

    asyncio.run(main())
    lines = (tmp_path / CURRENT).read_bytes().splitlines()
    assert [orjson.loads(line)["seq"] for line in lines] == list(range(1, 104))
    assert verify_trail(tmp_path).ok
    # audit.head names the newest record written: cutting records off the end shows.
    head = read_head(tmp_path)
    assert head is not None and (head.seq, head.hash) == (103, orjson.loads(lines[-1])["hash"])
    assert head.mac is None  # a MAC only with audit.hmac_key_file


def test_listener_failure_is_logged_and_writing_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        trail = make_trail(tmp_path)

        def broken(events: list[dict[str, Any]]) -> None:
            raise RuntimeError("listener bug")

        got: list[int] = []
        trail.add_listener(broken)
        trail.add_listener(lambda evs: got.extend(e["seq"] for e in evs))
        trail.submit(event(1))
        await asyncio.sleep(0)
        trail.submit(event(2))
        await trail.aclose()
        assert got == [1, 2]

    asyncio.run(main())
    assert "listener" in caplog.text and "listener bug" in caplog.text
    assert seqs(tmp_path) == [1, 2]


def test_rotation_by_size_names_files_by_first_seq_and_chain_continues(tmp_path: Path) -> None:
    async def main() -> None:
        trail = make_trail(tmp_path, audit__rotate_size="1kB")
        for n in range(1, 61):
            trail.submit(event(n))
            if n % 3 == 0:
                await asyncio.sleep(0)
        await trail.aclose()
        assert trail.stats.rotations >= 5

    asyncio.run(main())
    files = trail_files(tmp_path)
    assert files[-1].path.name == CURRENT
    firsts = [f.first_seq for f in files[:-1]]
    for trail_file in files[:-1]:
        assert trail_file.path.stat().st_size <= 1000 or trail_file.first_seq is not None
        first_line = orjson.loads(trail_file.path.read_bytes().splitlines()[0])
        assert first_line["seq"] == trail_file.first_seq
    assert firsts == sorted(firsts)
    assert seqs(tmp_path) == list(range(1, 61))
    result = verify_trail(tmp_path)
    assert result.ok, result.problem
    assert result.files == len(files)


def test_rotation_by_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_800_000_000.0]
    monkeypatch.setattr(trail_module.time, "time", lambda: clock[0])

    async def main() -> None:
        trail = make_trail(tmp_path, audit__rotate_age="1h")
        trail.submit(event(1))
        await asyncio.sleep(0)
        clock[0] += 1800
        trail.submit(event(2))
        await asyncio.sleep(0)
        assert trail.stats.rotations == 0
        clock[0] += 1801  # the file's first record is now older than an hour
        trail.submit(event(3))
        await asyncio.sleep(0)
        assert trail.stats.rotations == 1
        await trail.aclose()

    asyncio.run(main())
    rotated = trail_files(tmp_path)[0]
    assert rotated.first_seq == 1
    assert [orjson.loads(x)["seq"] for x in rotated.path.read_bytes().splitlines()] == [1, 2]
    assert seqs(tmp_path) == [1, 2, 3]


def test_rotated_files_are_gzipped_and_still_read_and_verified(tmp_path: Path) -> None:
    async def main() -> None:
        trail = make_trail(tmp_path, audit__rotate_size="2kB", audit__compress_rotated="true")
        for n in range(1, 41):
            trail.submit(event(n))
            await asyncio.sleep(0)
        await trail.aclose()  # waits for the gzip thread

    asyncio.run(main())
    names = sorted(os.listdir(tmp_path))
    rotated = [n for n in names if parse_rotated_name(n)]
    assert rotated and all(n.endswith(".jsonl.gz") for n in rotated)
    assert not [n for n in names if n.endswith(".tmp")]
    with gzip.open(tmp_path / rotated[0], "rb") as handle:
        assert orjson.loads(handle.readline())["seq"] == 1
    assert seqs(tmp_path) == list(range(1, 41))
    assert verify_trail(tmp_path).ok


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    async def write(first: int, last: int) -> None:
        trail = make_trail(tmp_path)
        for n in range(first, last + 1):
            trail.submit(event(n))
        await trail.aclose()

    asyncio.run(write(1, 5))
    asyncio.run(write(6, 9))
    assert seqs(tmp_path) == list(range(1, 10))
    assert verify_trail(tmp_path).ok


def test_torn_last_line_is_rotated_aside_and_chain_resumes_from_last_intact(
    tmp_path: Path,
) -> None:
    async def write(count: int) -> None:
        trail = make_trail(tmp_path)
        for n in range(count):
            trail.submit(event(n))
        await trail.aclose()

    asyncio.run(write(5))
    current = tmp_path / CURRENT
    data = current.read_bytes()
    lines = data.splitlines(keepends=True)
    # A crash in the middle of writing record 5: half a line, no newline.
    current.write_bytes(b"".join(lines[:4]) + lines[4][:40])
    asyncio.run(write(3))
    files = trail_files(tmp_path)
    assert len(files) == 2 and files[0].first_seq == 1
    assert files[0].path.read_bytes().endswith(lines[4][:40])  # kept as it was
    assert seqs(tmp_path) == [1, 2, 3, 4, 5, 6, 7]  # the torn 5 is skipped; 5 is reused
    result = verify_trail(tmp_path)
    assert result.ok, result.problem
    assert [w.kind for w in result.warnings] == ["torn"]
    assert result.warnings[0].file == files[0].path.name and result.warnings[0].line == 5


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = config.defaults().replace(audit__dir=str(blocker / "audit"))
    with pytest.raises(AuditError, match=re.escape(str(blocker / "audit"))):
        AuditTrail(cfg, "p").open()


def test_disk_full_holds_events_in_order_then_writes_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_write = os.write
    state = {"full": False, "calls": 0}

    def flaky_write(fd: int, data: Any) -> int:
        if state["full"]:
            state["calls"] += 1
            if state["calls"] == 1:
                # Half of the batch fits, then the disk is full: a partial write.
                return real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(trail_module.os, "write", flaky_write)

    async def main() -> None:
        trail = make_trail(tmp_path, audit__queue_max="10")
        released: list[int] = []
        for n in range(1, 4):
            trail.submit(event(n))
            trail.when_written(lambda n=n: released.append(n))
        await asyncio.sleep(0)
        assert released == [1, 2, 3] and trail.healthy
        state["full"] = True
        for n in range(4, 16):
            trail.submit(event(n))
            trail.when_written(lambda n=n: released.append(n))
        await asyncio.sleep(0)
        assert not trail.healthy
        assert trail.full and trail.pending == 12
        assert released == [1, 2, 3]  # results stay held while nothing is written
        assert "ENOSPC" in trail.stats.last_error and CURRENT in trail.stats.last_error
        waiter = asyncio.ensure_future(trail.wait_not_full())
        await asyncio.sleep(0.2)
        assert not waiter.done()
        state["full"] = False
        await asyncio.wait_for(waiter, 10)
        assert trail.healthy
        assert released == list(range(1, 16))
        await trail.aclose()

    asyncio.run(main())
    errors = [r for r in caplog.records if "cannot write audit file" in r.getMessage()]
    assert len(errors) == 1  # one diagnostic, not one per retry
    assert "ENOSPC" in errors[0].getMessage()
    assert seqs(tmp_path) == list(range(1, 16))
    assert verify_trail(tmp_path).ok


def test_real_file_size_limit_partial_write_then_recovery(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel cut a write short and then fail with EFBIG."""
    script = textwrap.dedent(
        f"""
        import asyncio, resource, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from proxy import config
        from proxy.audit.trail import AuditTrail
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        cfg = config.defaults().replace(audit__dir={str(tmp_path)!r}, audit__fsync="none")

        async def main():
            trail = AuditTrail(cfg, "p")
            trail.open()
            resource.setrlimit(resource.RLIMIT_FSIZE, (3000, hard))
            for n in range(1, 41):
                trail.submit({{"type": "query", "statement": "x" * 100, "n": n}})
            await asyncio.sleep(0.1)
            assert not trail.healthy and trail.pending == 40, trail.pending
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            await trail.wait_not_full()
            for _ in range(500):
                if trail.pending == 0:
                    break
                await asyncio.sleep(0.01)
            assert trail.healthy and trail.pending == 0
            await trail.aclose()
            print("errors", trail.stats.write_errors)

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "EFBIG" in proc.stderr  # the one diagnostic names the errno
    assert [e["n"] for e in iter_events(tmp_path)] == list(range(1, 41))
    assert verify_trail(tmp_path).ok


def test_fsync_always_releases_only_after_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        order.append("fsync")

    monkeypatch.setattr(trail_module.os, "fsync", recording_fsync)

    async def main() -> None:
        trail = make_trail(tmp_path, audit__fsync="always")
        trail.submit(event(1))
        trail.when_written(lambda: order.append("released"))
        await asyncio.sleep(0)
        assert trail.pending == 0  # written to the OS ...
        assert "released" not in order  # ... but not released before the fsync
        await wait_until(lambda: "released" in order)
        await trail.aclose()

    asyncio.run(main())
    assert order.index("fsync") < order.index("released")


def test_fsync_interval_syncs_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(trail_module.os, "fsync", lambda fd: (real_fsync(fd), synced.append(fd))[0])

    async def main() -> None:
        trail = make_trail(tmp_path, audit__fsync="interval", audit__fsync_interval="50ms")
        synced.clear()  # opening synced the new trail id file once
        released: list[bool] = []
        trail.submit(event(1))
        trail.when_written(lambda: released.append(True))
        await asyncio.sleep(0)
        assert released == [True] and synced == []  # released on write, synced later
        await wait_until(lambda: bool(synced))
        await trail.aclose()

    asyncio.run(main())


def test_hmac_trail_verifies_only_with_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    audit = tmp_path / "audit"

    async def main() -> None:
        trail = make_trail(audit, audit__hmac_key_file=str(key_file))
        for n in range(5):
            trail.submit(event(n))
        await trail.aclose()

    asyncio.run(main())
    assert all(e["chain"] == "hmac-sha256" for e in iter_events(audit))
    assert verify_trail(audit, b"s3cret").ok
    with pytest.raises(AuditError, match="wrong key"):
        verify_trail(audit, b"wrong")
    with pytest.raises(AuditError, match="--hmac-key-file"):
        verify_trail(audit)
    bad = config.defaults().replace(
        audit__dir=str(audit), audit__hmac_key_file=str(tmp_path / "nope")
    )
    with pytest.raises(AuditError, match="nope"):
        AuditTrail(bad, "p").open()
