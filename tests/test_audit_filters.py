"""EventFilter: every flag, the shared argparse flags, relative times, and the raw prefilter."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit.chain import Chainer
from proxy.audit.filters import EventFilter, add_filter_arguments
from proxy.audit.timeparse import parse_time

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def q(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "type": "query",
        "ts": "2026-11-26T10:00:00.000000Z",
        "user": "alice",
        "database": "app",
        "application_name": "psql",
        "client_addr": "10.1.2.3",
        "session_id": "a1b2c3",
        "statement": "SELECT * FROM public.accounts",
        "command": "SELECT",
        "command_tag": "SELECT 3",
        "tables": ["public.accounts"],
        "duration_ms": 12.5,
        "rows": 3,
        "sqlstate": None,
        "error": None,
        "decision": {"action": "allow", "rules": []},
    }
    base.update(fields)
    return base


def parse(*argv: str) -> EventFilter:
    parser = argparse.ArgumentParser()
    add_filter_arguments(parser)
    return EventFilter.from_args(parser.parse_args(argv))


@pytest.mark.parametrize(
    ("argv", "event", "expected"),
    [
        ((), q(), True),
        (("--user", "alice"), q(), True),
        (("--user", "bob"), q(), False),
        (("--user", "bob", "--user", "alice"), q(), True),
        (("--user", "al*"), q(), True),
        (("--database", "app"), q(database="other"), False),
        (("--app", "ps?l"), q(), True),
        (("--client", "10.0.0.0/8"), q(), True),
        (("--client", "192.168.0.0/16"), q(), False),
        (("--client", "10.1.2.3"), q(), True),
        (("--client", "10.1.*"), q(), True),
        (("--client", "10.0.0.0/8"), q(client_addr=None), False),
        (("--session", "a1b2*"), q(), True),
        (("--command", "select"), q(), True),
        (("--command", "DELETE"), q(), False),
        (("--command", "ALTER*"), q(command="ALTER TABLE", command_tag="ALTER TABLE"), True),
        (("--table", "accounts"), q(), True),
        (("--table", "public.acc*"), q(), True),
        (("--table", "other.accounts"), q(), False),
        (("--action", "block"), q(decision={"action": "block", "rules": []}), True),
        (("--action", "allow"), q(decision=None), True),
        (("--action", "flag"), q(), False),
        (("--rule", "no-*"), q(decision={"action": "flag", "rules": [{"id": "no-ddl"}]}), True),
        (("--rule", "no-*"), q(), False),
        (("--errors",), q(), False),
        (("--errors",), q(sqlstate="42501", error="permission denied"), True),
        (("--sqlstate", "28"), q(type="auth_failure", sqlstate="28P01"), True),
        (("--sqlstate", "42501"), q(sqlstate="42P01"), False),
        (("--min-duration", "10"), q(), True),
        (("--min-duration", "1s"), q(), False),
        (("--grep", "FROM PUBLIC"), q(), True),
        (("--grep", "delete"), q(), False),
        (("--grep", "ÄÖ"), q(statement="select 'äö'"), True),
        (("--type", "session_start"), q(), False),
        (("--type", "query", "--type", "alert"), q(), True),
        (("--since", "2026-11-26T09:00Z"), q(), True),
        (("--since", "2026-11-26T11:00Z"), q(), False),
        (("--until", "2026-11-26T09:59:59Z"), q(), False),
        (("--until", "2026-11-26"), q(ts="2026-11-25T23:59:59.999999Z"), True),
    ],
)
def test_each_flag(argv: tuple[str, ...], event: dict[str, Any], expected: bool) -> None:
    flt = parse(*argv)
    assert flt.matches(event) is expected
    line = orjson.dumps(event, option=orjson.OPT_SORT_KEYS) + b"\n"
    if not flt.prefilter(line):
        assert not expected  # the cheap test never rejects a match


def test_relative_and_named_times() -> None:
    assert parse_time("2h", NOW) == NOW - timedelta(hours=2)
    assert parse_time("7d", NOW) == NOW - timedelta(days=7)
    assert parse_time("30m", NOW) == NOW - timedelta(minutes=30)
    assert parse_time("today", NOW) == datetime(2026, 11, 26, tzinfo=UTC)
    assert parse_time("2026-11-26T08:00:00+01:00") == datetime(2026, 11, 26, 7, tzinfo=UTC)
    with pytest.raises(ValueError, match="relative time such as"):
        parse_time("last tuesday")


def test_bad_flag_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ("--since", "yesterday-ish"),
        ("--client", "10.0.0.0/99"),
        ("--min-duration", "fast"),
    ):
        with pytest.raises(SystemExit) as exc:
            parse(*argv)
        assert exc.value.code == 2
    assert "not a time" in capsys.readouterr().err


vocab = st.sampled_from(["alice", "bob", "al*", 'we"ird', "Ünï", "app", "x"])


@settings(max_examples=300, deadline=None)
@given(
    users=st.lists(vocab, max_size=2),
    dbs=st.lists(vocab, max_size=2),
    grep=st.none() | st.sampled_from(["select", "SELECT 'x", 'a"b', "ünï", "\\n"]),
    action=st.lists(st.sampled_from(["allow", "flag", "block"]), max_size=2),
    event_user=vocab,
    event_db=vocab,
    statement=st.text(max_size=30),
    event_action=st.sampled_from(["allow", "flag", "block"]),
)
def test_prefilter_never_rejects_a_matching_line(
    users: list[str],
    dbs: list[str],
    grep: str | None,
    action: list[str],
    event_user: str,
    event_db: str,
    statement: str,
    event_action: str,
) -> None:
    flt = EventFilter(user=tuple(users), database=tuple(dbs), grep=grep, action=tuple(action))
    event = q(
        user=event_user,
        database=event_db,
        statement=statement,
        decision={"action": event_action, "rules": []},
        seq=1,
    )
    line = Chainer().seal([event])  # exactly what the writer puts in the file
    if flt.matches(orjson.loads(line)):
        assert flt.prefilter(line)
