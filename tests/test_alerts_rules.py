"""Alert rules: windows, cooldown, grouping, first-seen shapes, and file:line:col errors."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from proxy.alerts.engine import AlertEngine, iso
from proxy.alerts.replay import format_table, replay
from proxy.alerts.rules import Webhook, load_rules
from proxy.alerts.window import FirstSeen, SlidingWindows
from proxy.errors import AlertRulesError

T0 = 1_800_000_000.0


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def query(seq: int, *, user: str = "alice", action: str = "allow", **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "v": 1,
        "type": "query",
        "seq": seq,
        "proxy_id": "p1",
        "user": user,
        "database": "app",
        "client_addr": "127.0.0.1",
        "statement": "SELECT 1",
        "fingerprint": "fp-select-1",
        "decision": {"action": action, "rules": []},
    }
    event.update(extra)
    return event


def engine_for(tmp_path: Path, text: str) -> AlertEngine:
    return AlertEngine.from_files([write(tmp_path, text)])


BLOCKED = """\
    version: 1
    alerts:
      - id: blocked-spike
        filter: {action: block}
        threshold: "count >= 3 in 1m"
        by: user
        cooldown: 5m
        severity: high
"""


def test_threshold_fires_when_the_window_holds_enough_events(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, BLOCKED)
    assert engine.observe(query(1, action="block"), T0) == []
    assert engine.observe(query(2, action="allow"), T0 + 1) == []  # filtered out
    assert engine.observe(query(3, action="block"), T0 + 2) == []
    fired = engine.observe(query(4, action="block"), T0 + 3)
    assert len(fired) == 1
    alert = fired[0]
    assert alert["type"] == "alert" and alert["alert"] == "blocked-spike"
    assert alert["severity"] == "high"
    assert alert["events"] == [1, 3, 4]
    assert alert["group"] == "alice" and alert["window"] == "1m"
    assert alert["ts"] == iso(T0 + 3)
    assert "3 matching events in 1m for user=alice" in alert["summary"]
    assert alert["proxy_id"] == "p1" and alert["user"] == "" and alert["v"] == 1


def test_events_older_than_the_window_do_not_count(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, BLOCKED)
    engine.observe(query(1, action="block"), T0)
    engine.observe(query(2, action="block"), T0 + 30)
    assert engine.observe(query(3, action="block"), T0 + 61) == []  # seq 1 fell out
    assert len(engine.observe(query(4, action="block"), T0 + 62)) == 1


def test_cooldown_silences_a_group_then_counting_starts_afresh(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, BLOCKED)
    for seq in range(1, 4):
        engine.observe(query(seq, action="block"), T0 + seq)
    assert engine.fired["blocked-spike"] == 1
    # Inside the 5 minute cooldown nothing fires, however many events arrive.
    for seq in range(4, 20):
        assert engine.observe(query(seq, action="block"), T0 + 10 + seq) == []
    after = T0 + 3 + 300
    assert engine.observe(query(20, action="block"), after) == []
    assert engine.observe(query(21, action="block"), after + 1) == []
    assert len(engine.observe(query(22, action="block"), after + 2)) == 1
    assert engine.fired["blocked-spike"] == 2


def test_groups_count_separately(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, BLOCKED)
    fired = []
    for seq in range(1, 7):
        user = "alice" if seq % 2 else "bob"
        fired += engine.observe(query(seq, user=user, action="block"), T0 + seq)
    assert [(a["group"], a["events"]) for a in fired] == [("alice", [1, 3, 5]), ("bob", [2, 4, 6])]


def test_window_memory_is_bounded() -> None:
    windows = SlidingWindows(count=5, window=60, cooldown=0, max_groups=100)
    for i in range(10_000):
        windows.add(f"client-{i}", T0 + i * 0.001, i)
    assert len(windows) == 100
    seen = FirstSeen(max_pairs=50)
    assert all(seen.check(("u", str(i))) for i in range(1000))
    assert len(seen) == 50


def test_new_fingerprint_fires_once_per_user_and_shape(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        """\
        version: 1
        alerts:
          - id: new-shape
            filter: {type: query}
            condition: new_fingerprint
            severity: low
        """,
    )
    first = engine.observe(query(1, fingerprint="a"), T0)
    assert [a["group"] for a in first] == ["alice"] and first[0]["events"] == [1]
    assert engine.observe(query(2, fingerprint="a"), T0 + 1) == []
    assert len(engine.observe(query(3, fingerprint="b"), T0 + 2)) == 1
    assert len(engine.observe(query(4, user="bob", fingerprint="a"), T0 + 3)) == 1
    assert engine.observe({"type": "session_start", "seq": 5, "user": "eve"}, T0 + 4) == []


def test_new_fingerprint_learning_period_and_priming(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        """\
        version: 1
        alerts:
          - id: new-shape
            filter: {type: query}
            condition: new_fingerprint
            learn_for: 10m
        """,
    )
    assert engine.prime([query(1, fingerprint="known")]) == 1
    assert engine.observe(query(2, fingerprint="learned"), T0) == []  # learning
    assert engine.observe(query(3, fingerprint="learned"), T0 + 700) == []
    assert engine.observe(query(4, fingerprint="known"), T0 + 701) == []
    assert len(engine.observe(query(5, fingerprint="fresh"), T0 + 702)) == 1


def test_filter_vocabulary(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        """\
        version: 1
        alerts:
          - id: auth-burst
            filter: {type: auth_failure, sqlstate: "28", client: 10.0.0.0/8}
            threshold: "count >= 2 in 1m"
            by: client_addr
          - id: slow
            filter: {min_duration_ms: 500, table: orders, command: select}
            threshold: "count > 0 in 1m"
          - id: errors
            filter: {errors: true, rule: [r1, r2]}
            threshold: "count >= 1 in 1m"
        """,
    )
    auth = {"type": "auth_failure", "sqlstate": "28P01", "user": "x"}
    assert engine.observe({**auth, "seq": 1, "client_addr": "10.1.2.3"}, T0) == []
    assert engine.observe({**auth, "seq": 2, "client_addr": "192.168.0.1"}, T0) == []
    fired = engine.observe({**auth, "seq": 3, "client_addr": "10.1.2.3"}, T0 + 1)
    assert [(a["alert"], a["group"]) for a in fired] == [("auth-burst", "10.1.2.3")]

    slow = query(4, duration_ms=900.0, tables=["public.orders"], command="SELECT")
    assert [a["alert"] for a in engine.observe(slow, T0)] == ["slow"]
    fast = query(5, duration_ms=10.0, tables=["public.orders"], command="SELECT")
    assert engine.observe(fast, T0 + 100) == []

    failed = query(6, sqlstate="42501", error="blocked")
    failed["decision"] = {"action": "block", "rules": [{"id": "r2", "action": "block"}]}
    assert [a["alert"] for a in engine.observe(failed, T0)] == ["errors"]
    assert engine.observe(query(7), T0) == []  # no error


def test_alerts_never_feed_alerts(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        """\
        version: 1
        alerts:
          - id: anything
            threshold: "count >= 1 in 1m"
        """,
    )
    alert = engine.observe(query(1), T0)[0]
    assert engine.observe(alert, T0 + 120) == []


def test_every_problem_is_reported_with_its_position(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        alerts:
          - id: bad one
            filter: {action: block, colour: red}
            threshold: "count >= 20 per minute"
            severity: urgent
          - id: dup
            condition: new_fingerprint
            by: user
          - id: dup
            threshold: "count >= 1 in 1m"
            destinations: [email, {webhook: {url: "ftp://x", format: slack}}]
          - id: ok
        """,
    )
    with pytest.raises(AlertRulesError) as info:
        load_rules([path])
    text = [str(p) for p in info.value.problems]
    name = str(path)
    expected = [
        f"{name}:3:5: alerts[0]: id must be a short name",
        f"{name}:4:29: alerts[0].filter.colour: unknown filter key",
        f"{name}:5:5: alerts[0]: expected a threshold such as",
        f"{name}:6:5: alerts[0]: severity must be one of",
        f"{name}:9:5: alerts[1]: by applies to thresholds",
        f"{name}:10:5: alerts[2]: duplicate alert id (first defined at {name}:7)",
        f"{name}:12:20: alerts[2].destinations[0]: a destination is `log`",
        f"{name}:12:38: alerts[2].destinations[1]: url must be an http(s):// URL",
        f"{name}:13:5: alerts[3]: an alert needs a threshold or a condition",
    ]
    for want in expected:
        assert any(t.startswith(want) for t in text), (want, text)
    assert len(text) == len(expected), text


def test_directory_of_rules_and_webhook_options(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\nalerts:\n  - {id: a, threshold: 'count >= 1 in 5s'}\n", "a.yaml")
    write(
        tmp_path,
        """\
        version: 1
        alerts:
          - id: b
            condition: new_fingerprint
            destinations:
              - log
              - webhook: {url: "http://127.0.0.1:9/x", format: slack, timeout: 2s, retries: 1}
        """,
        "b.yml",
    )
    (tmp_path / "notes.txt").write_text("not rules")
    rules = load_rules([tmp_path])
    assert [r.id for r in rules] == ["a", "b"]
    assert rules[0].cooldown == 5.0  # defaults to the window
    assert rules[1].destinations == (
        "log",
        Webhook("http://127.0.0.1:9/x", "slack", 2.0, 1),
    )


def test_shipped_example_rules_load() -> None:
    rules = load_rules([Path(__file__).parent.parent / "policies" / "alerts"])
    ids = {r.id for r in rules}
    assert {"blocked-spike", "auth-failure-burst", "error-spike", "slow-statements"} <= ids
    assert any(r.condition == "new_fingerprint" for r in rules)


def test_replay_uses_event_time_and_formats_a_table(tmp_path: Path) -> None:
    rules = load_rules([write(tmp_path, BLOCKED)])
    events = [
        query(i, action="block", ts=iso(T0 + i * 10)) for i in range(1, 8)
    ]  # 7 blocks, 10 s apart: fires at the 3rd, then cooldown 5m
    alerts = list(replay(rules, events))
    assert [a["events"] for a in alerts] == [[1, 2, 3]]
    assert alerts[0]["ts"] == iso(T0 + 30)
    table = format_table(alerts).splitlines()
    assert table[0].split() == ["TIME", "(UTC)", "ALERT", "SEVERITY", "GROUP", "EVENTS", "SUMMARY"]
    assert "blocked-spike" in table[1] and "alice" in table[1] and "1,2,3" in table[1]


def test_reload_keeps_the_memory_of_unchanged_rules_and_refuses_bad_files(tmp_path: Path) -> None:
    path = write(tmp_path, BLOCKED)
    engine = AlertEngine.from_files([path])
    engine.observe(query(1, action="block"), T0)
    engine.observe(query(2, action="block"), T0 + 1)
    path.write_text("version: 1\nalerts: nope\n")
    with pytest.raises(AlertRulesError):
        engine.reload_files([path])
    extra = '  - id: extra\n    threshold: "count >= 100 in 1m"\n'
    path.write_text(textwrap.dedent(BLOCKED) + extra)
    engine.reload_files([path])
    assert [r.id for r in engine.rules] == ["blocked-spike", "extra"]
    # blocked-spike kept its window: the third block fires.
    assert [a["alert"] for a in engine.observe(query(3, action="block"), T0 + 2)] == [
        "blocked-spike"
    ]
