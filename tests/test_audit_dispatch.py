"""audit.write_ahead in the trail: after a crash, dispatched statements without a record are
closed with chained ``outcome: unknown`` records, once, and ``verify`` accepts the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy import config
from proxy.audit.dispatch import closing_record, scan, skipped_record
from proxy.audit.jsonl import CURRENT
from proxy.audit.reader import iter_events
from proxy.audit.trail import AuditTrail
from proxy.audit.verify import verify_trail


def make_trail(directory: Path, **changes: Any) -> AuditTrail:
    changes = {"audit__fsync": "none", **changes}
    cfg = config.defaults().replace(audit__dir=str(directory), **changes)
    trail = AuditTrail(cfg, "test-proxy")
    trail.open()  # without an event loop every submit is written at once
    return trail


def dispatch(session: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "dispatch",
        "ts": "2026-12-01T10:00:00.000000Z",
        "proxy_id": "test-proxy",
        "session_id": session,
        "user": "alice",
        "database": "app",
        "statement": text,
        "protocol": "simple",
        "command": "INSERT",
        "tables": ["t"],
        "decision": {"action": "allow", "intended": "allow", "mode": "enforce", "rules": []},
        **extra,
    }


def completion(record: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "query",
        "ts": record["ts"],
        "proxy_id": "test-proxy",
        "session_id": record["session_id"],
        "statement": record["statement"],
        "dispatch": record["seq"],
        "command_tag": "INSERT 0 1",
        "sqlstate": None,
        **extra,
    }


def events(directory: Path) -> list[dict[str, Any]]:
    return list(iter_events(directory))


def test_a_crash_leaves_unfinished_dispatches_that_the_next_start_closes(tmp_path: Path) -> None:
    trail = make_trail(tmp_path, audit__write_ahead=True)
    done = dispatch("s1", "insert into t values (1)")
    trail.submit(done)
    trail.submit(completion(done))
    running = dispatch("s1", "insert into t values (2)")
    trail.submit(running)
    other = dispatch("s2", "insert into t values (3)", params=["x"])
    trail.submit(other)
    # kill -9: no close, no shutdown record
    trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.close()
    records = events(tmp_path)
    first_start, unknown_a, unknown_b, recovery = (
        records[0],
        records[-3],
        records[-2],
        records[-1],
    )
    assert first_start["type"] == "dispatch_recovery" and first_start["closed"] == []
    assert [u["dispatch"] for u in (unknown_a, unknown_b)] == [running["seq"], other["seq"]]
    assert unknown_a["type"] == "query" and unknown_a["outcome"] == "unknown"
    assert unknown_a["reason"] == "proxy_restarted"
    assert unknown_a["statement"] == "insert into t values (2)"
    assert unknown_a["ts"] == running["ts"] and unknown_a["session_id"] == "s1"
    assert unknown_b["params"] == ["x"] and unknown_b["tables"] == ["t"]
    assert recovery["type"] == "dispatch_recovery"
    assert recovery["closed"] == [running["seq"], other["seq"]]
    result = verify_trail(tmp_path)
    assert result.ok, result.problem


def test_a_second_start_closes_nothing_again(tmp_path: Path) -> None:
    trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.submit(dispatch("s1", "insert into t values (1)"))
    for _ in range(2):
        trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.close()
    unknown = [e for e in events(tmp_path) if e.get("outcome") == "unknown"]
    assert len(unknown) == 1
    assert [e["closed"] for e in events(tmp_path) if e["type"] == "dispatch_recovery"] == [
        [],
        [unknown[0]["dispatch"]],
        [],
    ]


def test_recovery_reads_back_only_to_the_newest_recovery_record(tmp_path: Path) -> None:
    trail = make_trail(tmp_path, audit__write_ahead=True)
    for n in range(50):
        record = dispatch("s1", f"insert into t values ({n})")
        trail.submit(record)
        trail.submit(completion(record))
    trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.close()
    second_start = events(tmp_path)[-1]
    assert second_start["type"] == "dispatch_recovery"
    assert second_start["records_read"] == 100  # what followed the first start's record
    assert scan(tmp_path).records_read == 0  # nothing after the second's


def test_recovery_crosses_rotated_files_and_a_run_without_write_ahead(tmp_path: Path) -> None:
    trail = make_trail(tmp_path, audit__write_ahead=True)
    open_one = dispatch("s1", "insert into t values (1)")
    trail.submit(open_one)
    trail.rotate()
    trail = make_trail(tmp_path)  # write_ahead off: nothing is closed by this start
    trail.submit(completion(dispatch("s9", "x", seq=999)) | {"dispatch": 999})
    trail.rotate()
    assert not [e for e in events(tmp_path) if e.get("outcome")]
    trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.close()
    (unknown,) = [e for e in events(tmp_path) if e.get("outcome") == "unknown"]
    assert unknown["dispatch"] == open_one["seq"]
    assert verify_trail(tmp_path).ok


def test_a_multi_statement_message_recorded_in_part_is_unknown(tmp_path: Path) -> None:
    trail = make_trail(tmp_path, audit__write_ahead=True)
    partial = dispatch("s1", "insert into t values (1); insert into t values (2)", statements=2)
    trail.submit(partial)
    trail.submit(completion(partial))
    failed = dispatch("s1", "select 1/0; insert into t values (3)", statements=2)
    trail.submit(failed)
    trail.submit(completion(failed, sqlstate="22012", command_tag=None))  # the rest never ran
    whole = dispatch("s1", "select 1; select 2", statements=2)
    trail.submit(whole)
    trail.submit(completion(whole))
    trail.submit(completion(whole))
    trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.close()
    unknown = [e for e in events(tmp_path) if e.get("outcome") == "unknown"]
    assert [u["dispatch"] for u in unknown] == [partial["seq"]]
    assert "statements" not in unknown[0]


def test_a_torn_dispatch_was_never_forwarded_and_is_not_closed(tmp_path: Path) -> None:
    trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.submit(dispatch("s1", "insert into t values (1)"))
    trail.close()
    path = tmp_path / CURRENT
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 1 + 40])  # cut mid-line
    trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.close()
    assert not [e for e in events(tmp_path) if e.get("outcome")]


def test_closing_record_keeps_what_readers_need_and_drops_the_chain_fields() -> None:
    record = dispatch("s1", "delete from t where id = 1", statement_truncated=True)
    record.update(seq=7, prev_hash="0" * 64, hash="f" * 64, chain="sha256", statements=2)
    closed = closing_record(record, "unknown", "proxy_restarted")
    assert closed["type"] == "query" and closed["dispatch"] == 7
    assert closed["statement_truncated"] is True and closed["command"] == "INSERT"
    assert not {"seq", "prev_hash", "hash", "chain", "statements"} & closed.keys()
    assert closed["sqlstate"] is None and closed["rows"] is None


def test_readers_hide_dispatch_records_unless_asked_and_show_outcomes(tmp_path: Path) -> None:
    from proxy.audit.filters import EventFilter
    from proxy.audit.render import table_row
    from proxy.store.query import build_query

    trail = make_trail(tmp_path, audit__write_ahead=True)
    record = dispatch("s1", "insert into t values (1)")
    trail.submit(record)
    trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.close()
    lines = [line for line in (tmp_path / CURRENT).read_bytes().splitlines(keepends=True)]
    every = EventFilter()
    shown = [e["type"] for e in events(tmp_path) if every.matches(e)]
    assert "dispatch" not in shown and shown.count("query") == 1
    assert [every.prefilter(raw) for raw in lines].count(False) == 1  # the dispatch line
    asked = EventFilter(types=("dispatch",))
    assert [e["seq"] for e in events(tmp_path) if asked.matches(e)] == [record["seq"]]
    unknown = EventFilter(outcome=("unknown",))
    (closed,) = [e for e in events(tmp_path) if unknown.matches(e)]
    row = table_row(closed, 200)
    assert "unknown" in row and "insert into t values (1)" in row and "proxy_restarted" in row
    recovery = events(tmp_path)[-1]
    assert "1 statement(s) closed with outcome unknown" in table_row(recovery, 200)
    text, params = build_query(EventFilter(), since=None, until=None)
    assert "<> ALL" in text and ["dispatch", "dispatch_closed"] in params


def test_report_counts_unknown_outcomes_untimed() -> None:
    from proxy.review.report import build_report
    from proxy.review.tables import summary_items

    base = dispatch("s1", "insert into t values (1)") | {"seq": 3}
    ran = completion(base) | {"duration_ms": 2.0, "duration_scope": "statement", "seq": 4}
    unknown = closing_record(base | {"seq": 5}, "unknown", "proxy_restarted")
    skipped = skipped_record(base | {"seq": 6}, base["ts"])
    report = build_report([base, ran, unknown, skipped])
    assert report.totals.statements == 2  # dispatch records are no statements
    assert report.totals.unknown_outcomes == 1
    assert report.totals.p50_ms is not None and report.totals.p50_ms >= 1.9  # not a 0 ms sample
    assert ("outcome unknown", "1 (forwarded, end never seen)") in summary_items(report)


def test_the_first_start_with_write_ahead_reads_the_whole_trail_once(tmp_path: Path) -> None:
    trail = make_trail(tmp_path)  # a trail written without write-ahead, in two files
    for n in range(4):
        trail.submit(completion(dispatch("s1", f"select {n}") | {"seq": 0}))
        if n == 1:
            trail.rotate()
    trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.close()
    recovery = events(tmp_path)[-1]
    assert recovery["type"] == "dispatch_recovery"
    assert recovery["records_read"] == 4 and recovery["closed"] == []


def test_a_skipped_dispatch_is_settled_and_hidden_unless_asked(tmp_path: Path) -> None:
    from proxy.audit.filters import EventFilter

    trail = make_trail(tmp_path, audit__write_ahead=True)
    record = dispatch("s1", "insert into t values (2)")
    trail.submit(record)
    trail.submit(skipped_record(record, record["ts"]))
    trail = make_trail(tmp_path, audit__write_ahead=True)
    trail.close()
    assert not [e for e in events(tmp_path) if e.get("outcome") == "unknown"]
    every = EventFilter()
    assert not [e for e in events(tmp_path) if every.matches(e) and "dispatch" in e]
    asked = EventFilter(outcome=("skipped",))
    (closed,) = [e for e in events(tmp_path) if asked.matches(e)]
    assert closed["type"] == "dispatch_closed" and closed["dispatch"] == record["seq"]
