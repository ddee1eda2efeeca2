"""Readers: trail order across rotated and gzipped files, torn lines, file skipping, follow."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy import config
from proxy.audit.jsonl import CURRENT, rotated_name, trail_files
from proxy.audit.reader import follow, iter_events, iter_lines
from proxy.audit.trail import AuditTrail


def write_events(directory: Path, first: int, last: int, **changes: Any) -> None:
    cfg = config.defaults().replace(audit__dir=str(directory), audit__fsync="none", **changes)
    trail = AuditTrail(cfg, "p1")
    trail.open()
    for n in range(first, last + 1):
        trail.submit({"type": "query", "ts": "2026-11-26T07:40:00.000000Z", "n": n})
    trail.close()


def test_reads_rotated_gzipped_and_current_files_in_order(tmp_path: Path) -> None:
    write_events(tmp_path, 1, 40, audit__rotate_size="1kB", audit__compress_rotated="true")
    names = [f.path.name for f in trail_files(tmp_path)]
    assert names[-1] == CURRENT and all(n.endswith(".gz") for n in names[:-1])
    assert [e["n"] for e in iter_events(tmp_path)] == list(range(1, 41))
    lines = list(iter_lines(tmp_path))
    assert [(line.file.path.name, line.lineno) for line in lines][:2] == [
        (names[0], 1),
        (names[0], 2),
    ]


def test_plain_and_gz_twin_during_compression_are_read_once(tmp_path: Path) -> None:
    write_events(tmp_path, 1, 20, audit__rotate_size="1kB", audit__compress_rotated="true")
    gz = trail_files(tmp_path)[0].path
    import gzip

    plain = gz.with_name(gz.name[: -len(".gz")])
    plain.write_bytes(gzip.decompress(gz.read_bytes()))  # as if gzip had not finished
    assert [e["n"] for e in iter_events(tmp_path)] == list(range(1, 21))


def test_torn_and_unreadable_lines_are_skipped(tmp_path: Path) -> None:
    write_events(tmp_path, 1, 3)
    with (tmp_path / CURRENT).open("ab") as handle:
        handle.write(b'{"seq": 4, "torn')
    assert [e["n"] for e in iter_events(tmp_path)] == [1, 2, 3]


def test_since_skips_rotated_files_by_their_name(tmp_path: Path) -> None:
    write_events(tmp_path, 1, 20, audit__rotate_size="1kB")
    first = trail_files(tmp_path)[0]
    old = tmp_path / rotated_name(datetime(2020, 1, 1, tzinfo=UTC), first.first_seq or 0)
    os.rename(first.path, old)
    count_in_old = len(old.read_bytes().splitlines())
    since = datetime(2021, 1, 1, tzinfo=UTC)
    # The events' own ts say 2026; only the file name can have made the reader skip them.
    got = [e["n"] for e in iter_events(tmp_path, since=since)]
    assert got == list(range(count_in_old + 1, 21))
    assert len(list(iter_events(tmp_path))) == 20


def test_follow_sees_new_events_across_rotations(tmp_path: Path) -> None:
    write_events(tmp_path, 1, 5)
    seen: list[int] = []
    done = threading.Event()
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            for event in follow(tmp_path, after_seq=5, poll=0.01, stop=done.is_set):
                seen.append(event["n"])
                if event["n"] == 60:
                    done.set()
        except BaseException as exc:  # surfaced in the main thread
            failure.append(exc)
            done.set()

    reader = threading.Thread(target=consume)
    reader.start()
    try:
        cfg = config.defaults().replace(
            audit__dir=str(tmp_path), audit__fsync="none", audit__rotate_size="1kB"
        )
        trail = AuditTrail(cfg, "p1")
        trail.open()
        trail.submit({"type": "query", "ts": "2026-11-26T07:40:00.000000Z", "n": 6})
        deadline = time.monotonic() + 30
        while 6 not in seen and time.monotonic() < deadline:  # the reader holds the file now
            time.sleep(0.01)
        for n in range(7, 61):
            trail.submit({"type": "query", "ts": "2026-11-26T07:40:00.000000Z", "n": n})
        trail.close()
        assert done.wait(30), f"follow saw only {seen}"
    finally:
        done.set()
        reader.join(10)
    assert not failure, failure
    assert len(trail_files(tmp_path)) > 3  # it really rotated underneath the reader
    assert seen == list(range(6, 61))  # in order, no gaps, no repeats


def test_follow_after_seq_catches_up_from_rotated_files(tmp_path: Path) -> None:
    write_events(tmp_path, 1, 30, audit__rotate_size="1kB")
    got = [e["n"] for e in follow(tmp_path, after_seq=3, poll=0.01, stop=lambda: True)]
    assert got == list(range(4, 31))


def test_rotation_while_reading_loses_and_repeats_nothing(tmp_path: Path) -> None:
    cfg = config.defaults().replace(
        audit__dir=str(tmp_path), audit__fsync="none", audit__rotate_size="1kB"
    )
    trail = AuditTrail(cfg, "p1")
    trail.open()
    for n in range(1, 4):
        trail.submit({"type": "query", "ts": "2026-11-26T07:40:00.000000Z", "n": n})
    assert len(trail_files(tmp_path)) == 1  # everything still in audit.jsonl
    events = iter_events(tmp_path)
    got = [next(events)["n"]]  # the reader has audit.jsonl open now
    for n in range(4, 30):  # ... and the writer rotates it away, several times
        trail.submit({"type": "query", "ts": "2026-11-26T07:40:00.000000Z", "n": n})
    trail.close()
    assert len(trail_files(tmp_path)) > 3
    got += [e["n"] for e in events]
    assert got == list(range(1, 30))
